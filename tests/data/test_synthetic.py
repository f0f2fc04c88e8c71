"""zoo.data.synthetic: seeded, index-addressable, tight boxes, valid COCO json (read back with pycocotools)."""
import json

import numpy as np
import pytest

from zoo.data.coco import CocoDetection
from zoo.data.synthetic import SHAPE_CLASSES, _background, make_synthetic_coco, render_image


def test_seeded_and_index_addressable(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", "val", 4, seed=5, image_size=96)
    b = make_synthetic_coco(tmp_path / "b", "val", 6, seed=5, image_size=96)
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ja["annotations"] == [x for x in jb["annotations"] if x["image_id"] <= 4]
    for i in range(4):
        assert (tmp_path / "a" / "val" / f"{i:06d}.png").read_bytes() == (tmp_path / "b" / "val" / f"{i:06d}.png").read_bytes()
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
