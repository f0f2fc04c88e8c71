"""model.predict / zoo.draw: image conversion (every error path), preprocessing against transformers' image
processors, and end-to-end detections against transformers' RT-DETR with the same weights."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.data.coco_names import COCO80_NAMES, COCO91_NAMES, COCO_CATEGORY_IDS
from zoo.data.images import Preprocess, load_image
from zoo.engine.device import resolve_device
from zoo.engine.predict import Detections, label_names_for

from hf_rtdetr import hf_rtdetr  # noqa: E402

COCO = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco_tiny"
# two real photographs of different shapes (640x426 and 640x480)
IMAGES = [COCO / "val2017" / "000000532481.jpg", COCO / "val2017" / "000000184321.jpg"]
SIZE = 256  # input size for the comparison with transformers (the model's own 640 is 6x slower)
SMALL = 160  # input size for API tests (the smallest giving RT-DETR's 300 queries 525 anchors to pick from)
SCORE_TOL, BOX_TOL_PX = 1e-4, 1e-2  # float32 model noise; boxes in pixels of 640-wide images


pytestmark = pytest.mark.usefixtures("single_thread")


def _need_coco():
    if not all(p.is_file() for p in IMAGES):
        pytest.skip(f"real COCO images not found under {COCO} (../shared/data/coco_tiny)")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(transformers RT-DETR R18 with random weights, zoo rtdetr_r18vd loaded from its save_pretrained files)."""
    hf = hf_rtdetr("rtdetr_r18vd")
    folder = tmp_path_factory.mktemp("hf_rtdetr_r18vd")
    hf.save_pretrained(folder)
    return hf, zoo.create_model("rtdetr_r18vd", checkpoint_path=folder / "model.safetensors").eval()


# --------------------------------------------------------------------------------------------------
# conversion of every supported input
# --------------------------------------------------------------------------------------------------

def _rgb(seed=0, h=12, w=16):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_inputs_agree_across_types(tmp_path):
    array = _rgb()
    expected = torch.from_numpy(array).permute(2, 0, 1)
    Image.fromarray(array).save(tmp_path / "x.png")
    for image in (array, Image.fromarray(array), expected, expected.float() / 255, array.astype(np.float32) / 255,
                  tmp_path / "x.png", str(tmp_path / "x.png")):
        out = load_image(image)
        assert out.dtype == torch.uint8 and out.shape == (3, 12, 16)
        assert torch.equal(out, expected), type(image)


def test_grayscale_palette_cmyk_are_converted():
    gray = _rgb()[..., 0]
    for image in (gray, Image.fromarray(gray), torch.from_numpy(gray), torch.from_numpy(gray)[None]):
        out = load_image(image)
        assert out.shape == (3, 12, 16) and all(torch.equal(out[c], torch.from_numpy(gray)) for c in range(3))
    rgb = Image.fromarray(_rgb())
    palette = rgb.quantize(16)
    assert torch.equal(load_image(palette), torch.from_numpy(np.array(palette.convert("RGB"))).permute(2, 0, 1))
    cmyk = rgb.convert("CMYK")
    assert torch.equal(load_image(cmyk), torch.from_numpy(np.array(cmyk.convert("RGB"))).permute(2, 0, 1))


def _on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255
    return rgb * a + 255 * (1 - a)


def test_transparency_is_composited_on_white():
    rgb, alpha = _rgb(1), np.random.default_rng(2).integers(0, 256, (12, 16), dtype=np.uint8)
    alpha[0, 0], alpha[0, 1] = 0, 255
    rgba = np.dstack([rgb, alpha])
    expected = torch.from_numpy(_on_white(rgb, alpha)).permute(2, 0, 1)
    for image in (Image.fromarray(rgba, "RGBA"), rgba, torch.from_numpy(rgba).permute(2, 0, 1)):
        out = load_image(image)
        assert (out.double() - expected).abs().max() <= 1.0  # PIL's alpha_composite rounds its own way
        assert out[:, 0, 0].tolist() == [255, 255, 255] and out[:, 0, 1].tolist() == rgb[0, 1].tolist()
    palette = Image.fromarray(rgb).quantize(8)
    palette.info["transparency"] = 0  # palette entry 0 is transparent
    out = load_image(palette)
    transparent = np.asarray(palette) == 0
    assert transparent.any() and (out.permute(1, 2, 0).numpy()[transparent] == 255).all()


def test_16_bit_and_float_modes_are_rescaled(tmp_path):
    data = np.random.default_rng(3).integers(0, 65536, (12, 16), dtype=np.uint16)
    data[0, 0], data[0, 1] = 65535, 0
    Image.fromarray(data).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    expected = torch.from_numpy(np.round(data / 257.0).astype(np.uint8))
    for image in (tmp_path / "g16.png", Image.fromarray(data.astype(np.int32), "I"), data, torch.from_numpy(data)):
        out = load_image(image)
        assert torch.equal(out[0], expected) and torch.equal(out[2], expected), type(image)
    floats = np.linspace(-10, 300, 12 * 16, dtype=np.float32).reshape(12, 16)
    out = load_image(Image.fromarray(floats, "F"))  # PIL's float mode is on the 0..255 scale
    assert torch.equal(out[0], torch.from_numpy(np.round(np.clip(floats, 0, 255)).astype(np.uint8)))


def test_exif_orientation_is_applied_to_files_unless_disabled(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(_rgb(h=10, w=20)).save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").shape == (3, 20, 10)
    assert load_image(tmp_path / "rot.jpg", exif_transpose=False).shape == (3, 10, 20)


# --------------------------------------------------------------------------------------------------
# error paths: each names the input
# --------------------------------------------------------------------------------------------------

def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "noise.jpg").write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(ValueError, match=r"noise\.jpg.*corrupt"):
        load_image(tmp_path / "noise.jpg")
    Image.fromarray(_rgb(h=64, w=64)).save(tmp_path / "whole.jpg")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:400])
    with pytest.raises(ValueError, match=r"truncated\.jpg"):
        load_image(tmp_path / "truncated.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.png"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ValueError, match="directory"):
        load_image(tmp_path)


def test_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    Image.fromarray(_rgb(h=64, w=64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)  # PIL refuses > 2x this
    with pytest.raises(ValueError, match=r"big\.png.*MAX_IMAGE_PIXELS"):
        load_image(tmp_path / "big.png")


@pytest.mark.parametrize("image, error, message", [
    (np.zeros((0, 10, 3), np.uint8), ValueError, "zero size"),
    (torch.zeros(3, 10, 0, dtype=torch.uint8), ValueError, "zero size"),
    (Image.new("RGB", (0, 5)), ValueError, "zero size"),
    (torch.zeros(5, 10, 10, dtype=torch.uint8), ValueError, r"expected \[C, H, W\]"),
    (torch.zeros(10, 10, 3, dtype=torch.uint8), ValueError, r"permute\(2, 0, 1\)"),
    (torch.zeros(1, 1, 3, 10, 10, dtype=torch.uint8), ValueError, "shape"),
    (np.zeros((10, 10, 2), np.uint8), ValueError, r"expected \[H, W, C\]"),
    (np.zeros(10, np.uint8), ValueError, "shape"),
    (torch.zeros(3, 10, 10, dtype=torch.int64), TypeError, "unsupported dtype"),
    (torch.zeros(3, 10, 10, dtype=torch.bool), TypeError, "unsupported dtype"),
    (np.zeros((10, 10, 3), bool), TypeError, "unsupported dtype"),
    (np.empty((10, 10, 3), object), TypeError, "unsupported dtype"),
    (torch.full((3, 10, 10), 2.0), ValueError, r"\[0, 1\]"),
    (np.full((10, 10, 3), -0.5, np.float32), ValueError, r"\[0, 1\]"),
    (torch.full((3, 10, 10), float("nan")), ValueError, r"\[0, 1\]"),
    (b"\xff\xd8", TypeError, "unsupported image type"),
    (42, TypeError, "unsupported image type"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_inputs_name_the_input(image, error, message):
    with pytest.raises(error, match=message) as info:
        load_image(image, name="images[3]")
    assert "images[3]" in str(info.value)


def test_predict_names_the_bad_list_item_and_checks_arguments(models):
    _, model = models
    with pytest.raises(TypeError, match=r"images\[1\]"):
        model.predict([_rgb(), torch.zeros(3, 8, 8, dtype=torch.int64)])
    with pytest.raises(ValueError, match="top_k"):
        model.predict(_rgb(), top_k=0)
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(_rgb(), batch_size=0)
    with pytest.raises(TypeError, match="score_threshold"):
        model.predict(_rgb(), score_threshold="high")
    for bad in (-1, 2.0, float("nan")):  # scores are probabilities: the API checks what the CLI checks
        with pytest.raises(ValueError, match=r"score_threshold must be in \[0, 1\]"):
            model.predict(_rgb(), score_threshold=bad)
        with pytest.raises(ValueError, match=r"score_threshold must be in \[0, 1\]"):
            zoo.draw(_rgb(), model.predict(_rgb()), score_threshold=bad)
    with pytest.raises(ValueError, match="input_size"):
        model.predict(_rgb(), input_size=0)
    with pytest.raises(ValueError, match="invalid device"):
        model.predict(_rgb(), device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


# --------------------------------------------------------------------------------------------------
# preprocessing against transformers' image processors
# --------------------------------------------------------------------------------------------------

def test_stretch_preprocessing_matches_transformers(models):
    _need_coco()
    from transformers import RTDetrImageProcessorPil

    _, model = models
    pil = [Image.open(p).convert("RGB") for p in IMAGES]
    ref = RTDetrImageProcessorPil(size={"height": SIZE, "width": SIZE})(images=pil, return_tensors="pt")
    pre = Preprocess.from_model(model, SIZE)
    pixel_values, mask = pre.collate([pre.resize(load_image(p)) for p in IMAGES])
    assert pixel_values.shape == (2, 3, SIZE, SIZE) and bool(mask.all())
    torch.testing.assert_close(pixel_values, ref["pixel_values"], atol=1e-6, rtol=0)


def test_shortest_edge_preprocessing_matches_transformers():
    _need_coco()
    from transformers import DetrImageProcessorPil

    model = SimpleNamespace(pretrained_cfg=dict(input_size=(3, 800, 1333), resize_mode="shortest_edge",
                                                shortest_edge=800, longest_edge=1333, interpolation="bilinear",
                                                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
                            forward=lambda pixel_values, pixel_mask=None: None)
    pil = [Image.open(IMAGES[0]).convert("RGB"), Image.open(IMAGES[1]).convert("RGB").crop((0, 0, 300, 400))]
    ref = DetrImageProcessorPil(size={"shortest_edge": 256, "longest_edge": 427})(images=pil, return_tensors="pt")
    pre = Preprocess.from_model(model, 256)
    assert pre.size == (256, 427) and pre.use_mask
    pixel_values, mask = pre.collate([pre.resize(load_image(im)) for im in pil])
    assert pixel_values.shape == ref["pixel_values"].shape == (2, 3, 341, 384)
    assert torch.equal(mask, ref["pixel_mask"])
    torch.testing.assert_close(pixel_values, ref["pixel_values"], atol=1e-5, rtol=0)


def test_shortest_edge_sizes_follow_detr():
    from transformers.models.detr.image_processing_detr import get_size_with_aspect_ratio

    pre = Preprocess("shortest_edge", (800, 1333))
    for h, w in [(480, 640), (640, 480), (800, 1200), (427, 640), (1000, 1001), (3000, 4000), (20, 30)]:
        assert pre.output_size(h, w) == get_size_with_aspect_ratio((h, w), 800, 1333), (h, w)
    # longer than 1333/800 allows: DETR's own rule rounds the short side first (transformers keeps the raw
    # float), so the long side is int(133 * 10) = 1330 here, not 1333
    assert pre.output_size(100, 1000) == (133, 1330)
    assert pre.output_size(1, 100000)[0] == 1  # extreme shapes stay non-empty


def test_very_large_images_are_resized_not_rejected(models):
    _, model = models
    big = np.zeros((3000, 4000, 3), np.uint8)  # 12 MP
    big[1500:, 2000:] = 255
    pre = Preprocess.from_model(model)
    out = pre.resize(load_image(big))
    assert out.shape == (3, 640, 640) and out[:, 400:, 400:].float().mean() > 250 and out[:, :200].max() == 0


def _exif_rotated_jpeg(path: Path, pixels: np.ndarray, orientation: int = 6) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=92, exif=exif)
    return path


@pytest.mark.parametrize("resize_mode", ["stretch", "shortest_edge"])
def test_load_reads_ordinary_files_exactly_as_load_image(tmp_path, resize_mode):
    """Preprocess.load (one image at a time, resized as a PIL image) gives the pixels of resize(load_image(...))."""
    pre = Preprocess(resize_mode, (64, 64) if resize_mode == "stretch" else (48, 80))
    rgba = np.concatenate([_rgb(1, 90, 120), np.full((90, 120, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(_rgb(2, 90, 120)).save(tmp_path / "small.jpg", quality=90)  # under the draft size
    Image.fromarray(_rgb(3, 90, 120)).convert("L").save(tmp_path / "gray.png")
    _exif_rotated_jpeg(tmp_path / "turned.jpg", _rgb(4, 90, 120))
    for name in ("rgba.png", "small.jpg", "gray.png", "turned.jpg"):
        expected = load_image(tmp_path / name)
        got, size = pre.load(tmp_path / name)
        assert size == tuple(expected.shape[1:]), name
        assert torch.equal(got, pre.resize(expected)), name
    assert pre.load(tmp_path / "turned.jpg")[1] == (120, 90)  # the EXIF orientation turns it
    with pytest.raises(ValueError, match="cannot read image"):
        (tmp_path / "bad.png").write_bytes(b"not an image")
        pre.load(tmp_path / "bad.png")


def test_a_large_jpeg_is_decoded_at_reduced_scale(tmp_path, monkeypatch):
    """Issue 21 item 14: a JPEG at least twice the model's input on both sides is decoded by PIL's draft at 1/2, 1/4
    or 1/8 scale (never below twice the input); its boxes still come in pixels of the full image."""
    from PIL import ImageFile

    pixels = np.full((2000, 1600, 3), 255, np.uint8)
    pixels[500:1500, 400:1200] = (200, 30, 30)
    _exif_rotated_jpeg(tmp_path / "big.jpg", pixels)
    decoded, original_load = [], ImageFile.ImageFile.load

    def load(image):
        result = original_load(image)
        decoded.append(image.size)
        return result

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    pre = Preprocess("stretch", (160, 160))
    got, size = pre.load(tmp_path / "big.jpg")
    assert size == (1600, 2000)  # turned by its EXIF orientation, at full size
    assert set(decoded) == {(400, 500)}  # stored 1600x2000 (w x h) at 1/4 scale: each side at least 2 x 160
    decoded.clear()
    full = pre.resize(load_image(tmp_path / "big.jpg"))
    assert set(decoded) == {(1600, 2000)}
    assert (got.float() - full.float()).abs().mean() < 2  # the same picture, up to the rounding of two downscalings
    det = zoo.create_model("rtdetr_mobilenetv3_small.shapes_demo").predict(str(tmp_path / "big.jpg"),
                                                                          score_threshold=0.0, top_k=1)
    assert det.image_size == (1600, 2000) and det.boxes[0, 2] > 1000  # boxes in pixels of the full image


# --------------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------------

def test_predict_matches_transformers_pipeline(models):
    """zoo: files -> model.predict. transformers: PIL -> RTDetrImageProcessorPil -> model -> post-processing."""
    _need_coco()
    from transformers import RTDetrImageProcessorPil

    hf, model = models
    processor = RTDetrImageProcessorPil(size={"height": SIZE, "width": SIZE})
    pil = [Image.open(p).convert("RGB") for p in IMAGES]
    with torch.no_grad():
        outputs = hf(**processor(images=pil, return_tensors="pt"))
    refs = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[im.size[::-1] for im in pil])
    dets = model.predict([str(p) for p in IMAGES], score_threshold=0.0, top_k=300, input_size=SIZE)
    for det, ref, path in zip(dets, refs, IMAGES):
        assert det.source == str(path) and det.image_size == (Image.open(path).height, Image.open(path).width)
        assert len(det) == 300
        torch.testing.assert_close(det.scores, ref["scores"], atol=SCORE_TOL, rtol=0)
        top = slice(0, 50)  # near-equal scores further down may swap places
        assert torch.equal(det.labels[top], ref["labels"][top])
        torch.testing.assert_close(det.boxes[top], ref["boxes"][top], atol=BOX_TOL_PX, rtol=0)
        assert det.label_names[:3] == [COCO80_NAMES[i] for i in det.labels[:3].tolist()]


def test_predict_api(models):
    _need_coco()
    _, model = models
    model.train()
    array = np.asarray(Image.open(IMAGES[0]).convert("RGB"))  # read-only, as np.asarray(PIL) gives
    batch = model.predict([str(IMAGES[0]), array, torch.from_numpy(array.copy()).permute(2, 0, 1)],
                          score_threshold=0.0, top_k=20, batch_size=2, input_size=SMALL)
    assert model.training, "predict must restore the training flag"
    assert [d.source for d in batch] == [str(IMAGES[0]), None, None]
    for det in batch[1:]:  # the same pixels in three forms give the same detections
        torch.testing.assert_close(det.boxes, batch[0].boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(det.scores, batch[0].scores, atol=1e-5, rtol=0)
    single = model.predict(array, score_threshold=0.0, top_k=20, input_size=SMALL)
    assert isinstance(single, Detections)
    torch.testing.assert_close(single.scores, batch[0].scores, atol=1e-5, rtol=0)
    cut = float(single.scores[9])
    kept = model.predict(array, score_threshold=cut, top_k=20, input_size=SMALL)
    assert len(kept) == int((single.scores >= cut).sum()) >= 10 and bool((kept.scores >= cut).all())
    stacked = model.predict(torch.zeros(2, 3, 50, 60), top_k=5, score_threshold=0.0, input_size=SMALL)
    assert isinstance(stacked, list) and [len(d) for d in stacked] == [5, 5] and stacked[1].image_size == (50, 60)
    assert model.predict([], input_size=SMALL) == []
    d = batch[0].to_dict()
    assert set(d) == {"source", "image_size", "boxes", "scores", "labels", "label_names"}
    assert len(d["boxes"]) == 20 and isinstance(d["boxes"][0][0], float) and isinstance(d["labels"][0], int)
    assert json.loads(batch[0].to_json()) == d
    model.eval()


def test_padded_batches_with_pixel_mask():
    """A model taking pixel_mask (DETR) gets padded batches; with padding aligned to its stride (32) a batched
    image gives what it gives alone, and its boxes stay in its own pixels (not the padded canvas)."""
    _need_coco()
    if not zoo.is_model("detr_resnet50"):
        pytest.skip("DETR is not registered in this checkout")
    torch.manual_seed(0)
    detr = zoo.create_model("detr_resnet50", backbone={"model_name": "resnet18"}, num_encoder_layers=1,
                            num_decoder_layers=2).eval()
    assert Preprocess.from_model(detr).use_mask
    wide = Image.open(IMAGES[0]).convert("RGB").crop((0, 0, 400, 200))  # -> 128x256, padded to 256x256
    tall = Image.open(IMAGES[1]).convert("RGB").crop((0, 0, 200, 400))  # -> 256x128, padded to 256x256
    batched = detr.predict([wide, tall], score_threshold=0.0, top_k=10, input_size=128)
    for det, image in zip(batched, (wide, tall)):
        alone = detr.predict(image, score_threshold=0.0, top_k=10, input_size=128)
        assert det.image_size == (image.height, image.width)
        torch.testing.assert_close(det.scores, alone.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(det.boxes, alone.boxes, atol=1e-2, rtol=0)
    assert set(batched[0].label_names) <= set(COCO91_NAMES)  # 91 classes: COCO ids and their names


def test_label_names():
    cfg = {"label_names": ["cat", "dog"]}
    assert label_names_for(SimpleNamespace(num_classes=2, pretrained_cfg=cfg)) == ["cat", "dog"]
    assert label_names_for(SimpleNamespace(num_classes=80, pretrained_cfg={}))[:2] == ["person", "bicycle"]
    names91 = label_names_for(SimpleNamespace(num_classes=91, pretrained_cfg={}))
    assert names91[1] == "person" and names91[12] == "N/A" and names91[90] == "toothbrush"
    assert label_names_for(SimpleNamespace(num_classes=3, pretrained_cfg={})) == ["class_0", "class_1", "class_2"]
    assert len(COCO80_NAMES) == 80 and len(COCO91_NAMES) == 91
    assert [COCO91_NAMES[i] for i in COCO_CATEGORY_IDS] == list(COCO80_NAMES)


# --------------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------------

def test_draw():
    from zoo.engine.draw import class_color

    image = np.full((100, 120, 3), 128, np.uint8)
    det = Detections(boxes=torch.tensor([[10.0, 40.0, 60.0, 90.0], [70.0, 5.0, 110.0, 50.0]]),
                     scores=torch.tensor([0.9, 0.4]), labels=torch.tensor([0, 17]), label_names=["person", "dog"],
                     image_size=(100, 120))
    out = zoo.draw(image, det)
    assert isinstance(out, Image.Image) and out.size == (120, 100) and out.mode == "RGB"
    pixels = np.asarray(out)
    assert tuple(pixels[90, 35]) == class_color(0)  # bottom edge of box 0
    assert tuple(pixels[30, 110]) == class_color(17)  # right edge of box 1
    assert (pixels[60:85, 15:55] == 128).all()  # the inside of a box is untouched
    assert class_color(0) != class_color(17)
    hidden = np.asarray(zoo.draw(image, det, score_threshold=0.5))
    assert (hidden[30, 110] == 128).all()
    with pytest.raises(ValueError, match="100x120"):
        zoo.draw(np.zeros((50, 50, 3), np.uint8), det)
    with pytest.raises(TypeError, match="Detections"):
        zoo.draw(image, {"boxes": []})
