"""Sliced inference (zoo.engine.slicing): tiles cover the image with the requested overlap; on a generated large
image of many small shapes the bundled demo detector finds almost none whole-image and most of them tile by tile,
without duplicates; large objects come from the whole-image pass; model.predict(slice=...) and ``zoo predict
--slice`` use it; clear errors."""
import json

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou

import zoo
from zoo.cli import main
from zoo.data.synthetic import render_crowded_image, render_image
from zoo.engine.slicing import _containment, predict_sliced, tile_windows

DEMO = "rtdetr_mobilenetv3_small.shapes_demo"


@pytest.fixture(scope="module")
def model(single_thread):
    return zoo.create_model(DEMO, pretrained=True).eval()


@pytest.fixture(scope="module")
def crowded():
    image, objects = render_crowded_image(0, 256, num_objects=20)
    assert len(objects) == 20
    return image, torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objects)])


def _recall(truth: torch.Tensor, det) -> float:
    iou = box_iou(truth, det.boxes).numpy() if len(det) else np.zeros((len(truth), 1))
    rows, cols = linear_sum_assignment(-iou)  # one detection per object
    return float((iou[rows, cols] >= 0.5).sum()) / len(truth)


def _contained_pairs(det) -> int:
    """Pairs of same-class boxes of which one lies (80 %) inside the other: a duplicate that IoU does not see."""
    inside = _containment(det.boxes, det.boxes) > 0.8
    inside &= det.labels[:, None] == det.labels[None, :]
    return int(inside.triu(1).sum())


@pytest.mark.parametrize("height, width, tile, overlap", [(256, 256, (96, 96), 0.2), (100, 300, (64, 128), 0.5),
                                                          (97, 50, (96, 96), 0.0), (40, 30, (96, 96), 0.2)])
def test_tiles_cover_the_image_with_overlap(height, width, tile, overlap):
    windows = tile_windows(height, width, tile, overlap)
    covered = torch.zeros(height, width, dtype=torch.int32)
    for x1, y1, x2, y2 in windows:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert (y2 - y1, x2 - x1) == (min(tile[0], height), min(tile[1], width))
        covered[y1:y2, x1:x2] += 1
    assert (covered > 0).all()
    for axis, (side, length) in enumerate(zip(tile, (height, width))):
        starts = sorted({w[1 - axis] for w in windows})
        assert starts[0] == 0 and starts[-1] + min(side, length) == length  # the last tile ends at the border
        assert all(b - a <= side * (1 - overlap) for a, b in zip(starts, starts[1:]))
    if height <= tile[0] and width <= tile[1]:
        assert windows == [(0, 0, width, height)]


def test_slicing_finds_small_objects(model, crowded):
    """Measured (benchmarks/bench_slicing.py): recall 0.10 whole-image, 0.95 with 96 px tiles."""
    image, truth = crowded
    plain = model.predict(image, score_threshold=0.3)
    sliced = model.predict(image, score_threshold=0.3, slice=(96, 96), overlap=0.2)
    assert _recall(truth, plain) <= 0.3 and _recall(truth, sliced) >= 0.85
    assert _contained_pairs(sliced) == 0
    assert sliced.scores.tolist() == sorted(sliced.scores.tolist(), reverse=True)
    assert sliced.image_size == (256, 256) and len(sliced.label_names) == len(sliced)


def test_whole_image_pass_finds_large_objects(model):
    image, objects = render_image(0, 1, 192, max_objects=1, size_range=(0.4, 0.45))
    (x, y, w, h), = [o["bbox"] for o in objects]
    assert min(w, h) > 60  # larger than the tiles' overlap: cut in every tile that holds part of it
    truth = torch.tensor([[x, y, x + w, y + h]])
    assert _recall(truth, predict_sliced(model, image, (96, 96), score_threshold=0.3)) == 1.0
    assert _recall(truth, predict_sliced(model, image, (96, 96), score_threshold=0.3, whole_image=False)) == 0.0


def test_lists_and_single_images(model, crowded, tmp_path):
    image, _ = crowded
    path = tmp_path / "crowded.png"
    image.save(path)
    both = model.predict([str(path), np.asarray(image)], slice=(128, 128), overlap=0.25, batch_size=4)
    one = predict_sliced(model, str(path), (128, 128), overlap=0.25, batch_size=3)
    assert isinstance(both, list) and len(both) == 2 and both[0].source == str(path) and both[1].source is None
    for det in both:
        torch.testing.assert_close(det.boxes, one.boxes, atol=1e-3, rtol=0)
        assert det.label_names == one.label_names


def test_cli_slice(model, crowded, tmp_path, capsys):
    image, truth = crowded
    path = tmp_path / "crowded.png"
    image.save(path)
    out = tmp_path / "out"
    assert main(["predict", DEMO, str(path), "--slice", "96", "96", "--threshold", "0.3", "--out", str(out)]) == 0
    result = json.loads((out / "detections.json").read_text())
    assert result["slice"] == {"tile": [96, 96], "overlap": 0.2}
    (record,) = result["images"]
    assert len(record["boxes"]) >= 19 and (out / "crowded.jpg").is_file()
    capsys.readouterr()
    # a run without slicing never mixes with the sliced one: the sliced results are set aside, not overwritten
    assert main(["predict", DEMO, str(path), "--threshold", "0.3", "--out", str(out)]) == 0
    assert "other settings (slice" in capsys.readouterr().err
    assert json.loads((out / "detections.json").read_text())["slice"] is None
    earlier = json.loads((out / "earlier-run-1" / "detections.json").read_text())
    assert earlier["slice"] == {"tile": [96, 96], "overlap": 0.2} and earlier["images"][0]["boxes"] == record["boxes"]
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", DEMO, str(path), "--slice", "96", "96", "--overlap", "1"])
    assert exit_info.value.code == 2


def test_errors(model, crowded):
    image, _ = crowded
    for bad in [(0, 96), 96, (96.0, 96), (96, 96, 3)]:
        with pytest.raises(ValueError, match="slice must be"):
            model.predict(image, slice=bad)
    with pytest.raises(ValueError, match="overlap must be"):
        model.predict(image, slice=(96, 96), overlap=1.0)
    with pytest.raises(ValueError, match="slice applies to images"):
        model.predict("clip.mp4", slice=(96, 96))
