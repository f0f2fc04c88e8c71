"""Box geometry after every training transform, on real COCO images from ../shared/data/coco_tiny.

Each geometric transform is checked against an independent computation: flips and resizes by their formulas,
zoom-out and IoU crop by locating the original pixels in the output (the boxes must move with them).
Labels are replaced by box ids so that every surviving box can be traced back to its source box.
"""
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_convert
from torchvision.transforms import v2

from zoo.data.coco import CocoDetection
from zoo.data.collate import collate_detection
from zoo.data.transforms import (default_scales, eval_transforms, multiscale_resize, to_model_target,
                                 train_transforms)

COCO_TINY = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco_tiny"


@pytest.fixture(scope="module")
def dataset():
    ann = COCO_TINY / "annotations" / "instances_val2017.json"
    if not ann.is_file():
        pytest.skip(f"{COCO_TINY} not found")
    return CocoDetection(COCO_TINY / "val2017", ann)


def _samples(dataset, n=3):
    """The first n images with at least 2 boxes, labels replaced by box ids."""
    out = []
    for i in range(len(dataset)):
        image, target = dataset.load(i)
        if len(target["labels"]) >= 2:
            out.append((image, {**target, "labels": torch.arange(len(target["labels"]))}))
        if len(out) == n:
            return out
    pytest.skip("coco_tiny has too few images with boxes")


def test_coco_labels_and_boxes_match_pycocotools(dataset):
    coco = dataset.coco
    assert dataset.num_classes == len(coco.getCatIds())
    for label, cat in dataset.label_to_category.items():
        assert dataset.category_to_label[cat] == label
        assert dataset.class_names[label] == coco.cats[cat]["name"]
    assert sorted(dataset.label_to_category.values()) == sorted(coco.getCatIds())
    image_id = dataset.ids[0]
    image, target = dataset.load(0)
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)) if a["bbox"][2] > 0]
    expected = box_convert(torch.tensor([a["bbox"] for a in anns], dtype=torch.float32), "xywh", "xyxy")
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), expected)
    assert [dataset.label_to_category[int(l)] for l in target["labels"]] == [a["category_id"] for a in anns]
    assert tuple(image.shape[-2:]) == (coco.imgs[image_id]["height"], coco.imgs[image_id]["width"])


def test_horizontal_flip(dataset):
    for image, target in _samples(dataset):
        w = image.shape[-1]
        out_img, out = v2.RandomHorizontalFlip(p=1.0)(image, target)
        b = target["boxes"].as_subclass(torch.Tensor)
        expected = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
        torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), expected)
        assert torch.equal(out_img, image.flip(-1))


def test_resize(dataset):
    for image, target in _samples(dataset):
        h, w = image.shape[-2:]
        out_img, out = v2.Resize((320, 256))(image, target)
        assert out_img.shape[-2:] == (320, 256) and out["boxes"].canvas_size == (320, 256)
        scale = torch.tensor([256 / w, 320 / h, 256 / w, 320 / h])
        torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), target["boxes"] * scale, rtol=1e-5, atol=1e-3)


def test_zoom_out_moves_boxes_with_pixels(dataset):
    torch.manual_seed(0)
    for image, target in _samples(dataset):
        out_img, out = v2.RandomZoomOut(fill=0, side_range=(1.5, 3.0), p=1.0)(image, target)
        shift = out["boxes"].as_subclass(torch.Tensor) - target["boxes"].as_subclass(torch.Tensor)
        left, top = int(shift[0, 0]), int(shift[0, 1])
        torch.testing.assert_close(shift, torch.tensor([left, top, left, top]).float().expand_as(shift))
        h, w = image.shape[-2:]
        assert torch.equal(out_img[:, top:top + h, left:left + w], image)  # the pixels moved by the same offset


def test_iou_crop_keeps_boxes_on_their_pixels(dataset):
    torch.manual_seed(0)
    checked = 0
    for image, target in _samples(dataset):
        out_img, out = v2.Compose([v2.RandomIoUCrop(), v2.SanitizeBoundingBoxes(min_size=1)])(image, target)
        if out_img.shape == image.shape:
            continue  # the "no crop" option was drawn
        h, w = out_img.shape[-2:]
        # locate the crop in the source image by exact pixel search
        src = image.as_subclass(torch.Tensor)
        cand = [(t, l) for t in range(src.shape[1] - h + 1) for l in range(src.shape[2] - w + 1)
                if torch.equal(src[:, t, l], out_img[:, 0, 0]) and torch.equal(src[:, t + h - 1, l + w - 1],
                                                                                out_img[:, -1, -1])]
        offsets = [(t, l) for t, l in cand if torch.equal(src[:, t:t + h, l:l + w], out_img)]
        assert offsets, "output is not a crop of the input"
        top, left = offsets[0]
        src_boxes = target["boxes"].as_subclass(torch.Tensor)[out["labels"]]
        expected = src_boxes - torch.tensor([left, top, left, top], dtype=torch.float32)
        expected[:, 0::2] = expected[:, 0::2].clamp(0, w)
        expected[:, 1::2] = expected[:, 1::2].clamp(0, h)
        torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), expected)
        # every kept box keeps its centre inside the crop
        c = box_convert(src_boxes, "xyxy", "cxcywh")[:, :2] - torch.tensor([left, top])
        assert ((c >= 0) & (c <= torch.tensor([w, h]))).all()
        checked += 1
    if not checked:
        pytest.skip("every draw was 'no crop'")


def test_full_train_pipeline_gives_valid_normalised_targets(dataset):
    torch.manual_seed(0)
    tf = train_transforms(320, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    batch = []
    for image, target in _samples(dataset):
        for _ in range(4):
            img, t = tf(image, target)
            b = t["boxes"]
            assert img.shape == (3, 320, 320) and img.dtype == torch.float32
            assert b.canvas_size == (320, 320)
            xyxy = b.as_subclass(torch.Tensor)
            assert ((xyxy >= 0) & (xyxy <= 320)).all()
            assert ((xyxy[:, 2:] - xyxy[:, :2]) >= 1).all()  # sanitised: no degenerate boxes
            assert len(t["labels"]) == len(b) and t["labels"].max() < len(target["labels"])
            m = to_model_target(t)
            torch.testing.assert_close(box_convert(m["boxes"], "cxcywh", "xyxy") * 320, xyxy, atol=1e-3, rtol=0)
            batch.append((img, m))
    images, targets = collate_detection(batch)
    assert images.shape == (len(batch), 3, 320, 320) and len(targets) == len(batch)
    resized = multiscale_resize(images, 256)
    assert resized.shape[-2:] == (256, 256)


def test_eval_transforms_and_dataset_item(dataset):
    dataset.transforms = eval_transforms(224)
    try:
        image, target = dataset[0]
    finally:
        dataset.transforms = None
    raw_image, raw = dataset.load(0)
    h, w = raw_image.shape[-2:]
    assert image.shape == (3, 224, 224) and 0 <= image.min() and image.max() <= 1
    expected = box_convert(raw["boxes"].as_subclass(torch.Tensor), "xyxy", "cxcywh") / torch.tensor([w, h, w, h])
    torch.testing.assert_close(target["boxes"], expected, atol=1e-5, rtol=0)


def test_default_scales_and_collate():
    assert default_scales(640)[:11] == list(range(480, 801, 32))
    assert all(s % 32 == 0 for s in default_scales(160))
    same, targets = collate_detection([(torch.ones(3, 32, 32), {}), (torch.ones(3, 32, 32), {})])
    assert same.shape == (2, 3, 32, 32) and all("size" not in t for t in targets)
    # shortest-edge models: images of different sizes are zero-padded at the bottom/right, sizes recorded
    padded, targets = collate_detection([(torch.ones(3, 32, 48), {}), (torch.ones(3, 64, 32), {})])
    assert padded.shape == (2, 3, 64, 48)
    assert padded[0, :, :32, :48].eq(1).all() and padded[0, :, 32:].eq(0).all()
    assert padded[1, :, :, :32].eq(1).all() and padded[1, :, :, 32:].eq(0).all()
    assert [t["size"].tolist() for t in targets] == [[32, 48], [64, 32]]
    with pytest.raises(ValueError, match="empty batch"):
        collate_detection([])
    with pytest.raises(FileNotFoundError):
        CocoDetection("/nonexistent", "/nonexistent.json")


def test_training_resizes_by_the_models_own_rule():
    """One resize contract: the training transforms size images as Preprocess (predict, evaluate) does."""
    from torchvision import tv_tensors

    from zoo.data.images import Preprocess
    from zoo.data.transforms import ModelResize

    detr = Preprocess("shortest_edge", (80, 133))
    image = tv_tensors.Image(torch.zeros(3, 60, 200, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[10.0, 10.0, 50.0, 40.0]]), format="XYXY", canvas_size=(60, 200))
    out_image, out_boxes = eval_transforms(detr)(image, boxes)
    assert tuple(out_image.shape[-2:]) == detr.output_size(60, 200) == (40, 133)  # the longest edge limits
    assert out_boxes.canvas_size == (40, 133)
    stretch = eval_transforms(64)(image)
    assert tuple(stretch.shape[-2:]) == Preprocess("stretch", (64, 64)).output_size(60, 200) == (64, 64)
    # training scales: the shortest edge is drawn per image and the longest-edge limit scales with it
    drawn = {tuple(ModelResize(detr, scales=[40, 80])(tv_tensors.Image(torch.zeros(3, 100, 100))).shape[-2:])
             for _ in range(20)}
    assert drawn == {(40, 40), (80, 80)}
