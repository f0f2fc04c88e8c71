"""zoo.data.synthetic: seeded, index-addressable, tight boxes, valid COCO json (read back with pycocotools)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data.coco import CocoDetection
from zoo.data.synthetic import SHAPE_CLASSES, _background, make_synthetic_coco, render_image


def test_seeded_and_index_addressable(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", "val", 4, seed=5, image_size=96)
    b = make_synthetic_coco(tmp_path / "b", "val", 6, seed=5, image_size=96)
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ja["annotations"] == [x for x in jb["annotations"] if x["image_id"] <= 4]
    for i in range(4):
        name = f"{i:06d}.png"
        assert (tmp_path / "a" / "val" / name).read_bytes() == (tmp_path / "b" / "val" / name).read_bytes()
    other, _ = render_image(6, 0, 96)
    assert not np.array_equal(np.asarray(other), np.asarray(render_image(5, 0, 96)[0]))


def test_boxes_are_tight():
    """With one shape, the pixels that differ from the (re-rendered) background span exactly its box."""
    checked = 0
    for index in range(12):
        image, objects = render_image(3, index, 96, max_objects=1)
        if len(objects) != 1:
            continue
        background = _background(np.random.default_rng([3, index]), 96)
        diff = np.abs(np.asarray(image, np.int32) - np.asarray(background, np.int32)).sum(-1) > 0
        ys, xs = np.nonzero(diff)
        x, y, w, h = objects[0]["bbox"]
        # polygon rasterisation covers pixel centres: allow one pixel
        assert abs(xs.min() - x) <= 1.0 and abs(ys.min() - y) <= 1.0
        assert abs(xs.max() + 1 - (x + w)) <= 1.0 and abs(ys.max() + 1 - (y + h)) <= 1.0
        checked += 1
    assert checked >= 10


def test_coco_format_reads_back(tmp_path):
    ann = make_synthetic_coco(tmp_path, "train", 10, seed=0, image_size=96, max_objects=4)
    ds = CocoDetection(tmp_path / "train", ann)
    assert ds.class_names == list(SHAPE_CLASSES) and ds.label_to_category == {0: 1, 1: 2, 2: 3}
    counts = []
    for i in range(len(ds)):
        image, target = ds[i]
        assert tuple(image.shape) == (3, 96, 96)
        b = target["boxes"]
        assert ((b[:, :2] - b[:, 2:] / 2 >= 0) & (b[:, :2] + b[:, 2:] / 2 <= 1 + 1e-6)).all()
        counts.append(len(b))
    assert 1 <= min(counts) and max(counts) <= 4 and sum(counts) > 10


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_images"):
        make_synthetic_coco(tmp_path, "val", 0)


# ----------------------------------------------------------------------------------------------------------
# The bundled demo weights (zoo/assets/shapes_demo) and demo image, trained on this dataset (docs/training.md)
# ----------------------------------------------------------------------------------------------------------
import zoo  # noqa: E402

ASSETS = Path(zoo.__file__).parent / "assets"
DEMO_WEIGHTS, DEMO_IMAGE = ASSETS / "shapes_demo", ASSETS / "shapes_demo.png"
#: the held-out split: stream seed 1 (training used seed 0), 96x96, the first 50 images
HELD_OUT = dict(split="val", num_images=50, seed=1, image_size=96)
#: the demo image is image 114 of stream seed 2 (never trained on), upscaled 3x
DEMO_SOURCE, DEMO_SCALE = (2, 114, 96), 3
DEMO_NAME = "rtdetr_mobilenetv3_small.shapes_demo"  # its manifest entry (zoo/weights_manifest.json)


@pytest.fixture(scope="module")
def demo_model():
    if not (DEMO_WEIGHTS / "model.safetensors").is_file():
        pytest.skip("demo weights not bundled")
    with pytest.MonkeyPatch.context() as mp:  # no Hub, no cache: the weights are inside the package
        mp.delenv("ZOO_WEIGHTS_MANIFEST", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        return zoo.create_model(DEMO_NAME, pretrained=True).eval()


def test_demo_weights_are_small_fp16_and_registered(demo_model):
    from safetensors import safe_open

    from zoo.weights.manifest import load_manifest

    path = DEMO_WEIGHTS / "model.safetensors"
    assert path.stat().st_size <= 12 * 2 ** 20
    with safe_open(str(path), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} <= {torch.float16, torch.int64}
    assert demo_model.config["architecture"] == "rtdetr_mobilenetv3_small"
    assert tuple(demo_model.pretrained_cfg["input_size"]) == (3, 96, 96)
    assert demo_model.pretrained_cfg["label_names"] == list(SHAPE_CLASSES)
    assert demo_model.load_report.weights == DEMO_NAME  # hashed (the report says so), nothing adapted
    assert demo_model.load_report.notes == [
        "zoo/assets/shapes_demo/model.safetensors (in the package): sha256 verified against the manifest"]
    # the save_pretrained folder beside the file (config.json, model card) describes the same model
    from_folder = zoo.create_model(f"local-dir:{DEMO_WEIGHTS}")
    assert from_folder.config == demo_model.config
    assert all(torch.equal(v, demo_model.state_dict()[k]) for k, v in from_folder.state_dict().items())
    entry = load_manifest().entries[DEMO_NAME]
    config = json.loads((DEMO_WEIGHTS / "config.json").read_text())
    assert config["files"]["model.safetensors"] == {"sha256": entry.sha256, "size": entry.package.size}
    params = sum(p.numel() for p in demo_model.parameters()) / 1e6
    assert params == pytest.approx(entry.complexity["params_m"], abs=5e-4)


def test_demo_weights_ap_on_regenerated_held_out_split(demo_model, tmp_path):
    """The box AP recorded in the manifest (measured when the weights were made) holds on the regenerated split."""
    from zoo.engine.evaluate import evaluate
    from zoo.weights.manifest import load_manifest

    ann = make_synthetic_coco(tmp_path, **HELD_OUT)
    metrics = evaluate(demo_model, ann, tmp_path / "val", num_workers=0, progress=False, verbose=False).metrics
    entry = load_manifest().entries[DEMO_NAME]
    assert metrics["AP"] * 100 == pytest.approx(entry.metric("box_ap"), abs=1.0)
    assert metrics["AP50"] * 100 == pytest.approx(entry.metric("box_ap50"), abs=1.0)


def test_demo_image_is_the_documented_render():
    image, _ = render_image(*DEMO_SOURCE)
    expected = image.resize((image.width * DEMO_SCALE, image.height * DEMO_SCALE), Image.LANCZOS)
    assert np.array_equal(np.asarray(Image.open(DEMO_IMAGE).convert("RGB")), np.asarray(expected))


def test_zoo_predict_finds_the_shapes_in_the_demo_image(demo_model, tmp_path, capsys):
    """The README's main command (threshold 0.7): every shape found with the right class (IoU >= 0.5), and
    nothing else."""
    from torchvision.ops import box_iou

    from zoo.cli import main

    assert main(["predict", DEMO_NAME, str(DEMO_IMAGE), "--threshold", "0.7", "--out", str(tmp_path)]) == 0
    assert "4 detections (2 circle, 1 triangle, 1 square)" in capsys.readouterr().out
    record = json.loads((tmp_path / "detections.json").read_text())["images"][0]
    assert (tmp_path / "shapes_demo.jpg").is_file()
    _, objects = render_image(*DEMO_SOURCE)
    gt = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objects)]) * DEMO_SCALE
    gt_names = [SHAPE_CLASSES[o["category_id"] - 1] for o in objects]
    pred = torch.tensor(record["boxes"]).reshape(-1, 4)
    assert len(pred) == len(gt), (record["label_names"], gt_names)
    iou = box_iou(gt, pred)
    for i, name in enumerate(gt_names):
        j = int(iou[i].argmax())
        assert iou[i, j] >= 0.5 and record["label_names"][j] == name, (name, record)
