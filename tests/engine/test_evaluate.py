"""zoo.evaluate on real COCO images and annotations (../shared/data/coco_tiny), against pycocotools itself."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import zoo
from zoo.engine.evaluate import COCO_METRIC_NAMES, TOP_K, evaluate_detections, label_to_category_ids

COCO = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco_tiny"
ANN = COCO / "annotations" / "instances_val2017.json"
IMAGE_DIR = COCO / "val2017"


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def dataset():
    if not ANN.is_file() or not IMAGE_DIR.is_dir():
        pytest.skip(f"real COCO images and annotations not found under {COCO} (../shared/data/coco_tiny)")
    with open(ANN) as f:
        return json.load(f)


def _pycocotools(ann_file, detections_file) -> list[float]:
    """The reference: pycocotools called directly, exactly as its README shows."""
    from pycocotools.coco import COCO as Coco
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = Coco(str(ann_file))
        evaluator = COCOeval(gt, gt.loadRes(str(detections_file)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def _perturbed(annotations: list[dict], category_ids: list[int], seed: int = 0) -> list[dict]:
    """Ground truth with seeded noise: jittered boxes, random scores, 10% dropped, 10% relabelled, plus
    false positives, so that every COCO number lands strictly between 0 and 1."""
    rng = np.random.default_rng(seed)
    detections = []
    for ann in annotations:
        if rng.random() < 0.1:
            continue
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
        category = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(category_ids))
        box = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
        detections.append({"image_id": ann["image_id"], "category_id": category,
                           "bbox": [round(float(v), 2) for v in box], "score": round(float(rng.random()), 4)})
        if rng.random() < 0.3:  # a false positive next to it
            detections.append({"image_id": ann["image_id"], "category_id": int(rng.choice(category_ids)),
                               "bbox": [round(float(v), 2) for v in (x + w, y + h, w / 2 + 1, h / 2 + 1)],
                               "score": round(float(rng.random()) * 0.5, 4)})
    return detections


def test_ground_truth_as_detections_scores_one(dataset):
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                  for a in dataset["annotations"]]
    metrics = evaluate_detections(ANN, detections, verbose=False)
    assert list(metrics) == list(COCO_METRIC_NAMES)
    for name in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100"):
        assert metrics[name] == 1.0, name
    assert "segmentation" not in detections[0], "the caller's detections must not be modified"


def test_perturbed_detections_match_pycocotools(dataset, tmp_path):
    detections = _perturbed(dataset["annotations"], [c["id"] for c in dataset["categories"]])
    path = tmp_path / "detections.json"
    path.write_text(json.dumps(detections))
    reference = _pycocotools(ANN, path)
    ours = evaluate_detections(ANN, path, verbose=False)
    assert list(ours.values()) == reference  # exact: the same library on the same numbers
    assert evaluate_detections(ANN, detections, verbose=False) == ours
    assert 0.2 < ours["AP"] < 0.9 and 0.2 < ours["AP50"] < 1.0, ours  # the file is neither empty nor perfect


def test_prints_the_12_numbers(capsys):
    if not ANN.is_file():
        pytest.skip(f"COCO annotations not found under {COCO}")
    metrics = evaluate_detections(ANN, [], verbose=True)
    printed = capsys.readouterr().out
    assert printed.count("Average Precision") == 6 and printed.count("Average Recall") == 6
    assert all(v == 0.0 for v in metrics.values())  # no detections: zeros, not a pycocotools crash


def test_label_to_category_ids():
    coco_ids = [1, 2, 3, 5, 90]
    assert label_to_category_ids(5, [90, 3, 1, 5, 2]) == coco_ids  # contiguous -> sorted dataset ids
    assert label_to_category_ids(91, coco_ids) is None  # DETR: labels already are the ids
    assert label_to_category_ids(3, coco_ids, label_map={0: 5, 2: 1}) == [5, -1, 1]
    with pytest.raises(ValueError, match="label_map"):
        label_to_category_ids(20, coco_ids)


def _subset(dataset: dict, tmp_path: Path, count: int, **image_changes) -> Path:
    images = [dict(im, **image_changes) for im in sorted(dataset["images"], key=lambda im: im["id"])[:count]]
    keep = {im["id"] for im in images}
    subset = dict(dataset, images=images, annotations=[a for a in dataset["annotations"] if a["image_id"] in keep])
    path = tmp_path / f"subset_{count}.json"
    path.write_text(json.dumps(subset))
    return path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return zoo.create_model("rtdetr_r18vd").eval()


def test_model_end_to_end(dataset, model, tmp_path):
    """rtdetr_r18vd (random weights, input 160 to stay fast) on 4 real images, loaded by a DataLoader worker."""
    ann = _subset(dataset, tmp_path, 4)
    result = zoo.evaluate(model, ann, IMAGE_DIR, batch_size=3, num_workers=1, input_size=160, progress=False,
                          verbose=False)
    assert list(result.metrics) == list(COCO_METRIC_NAMES)
    assert all(v == -1.0 or 0.0 <= v <= 1.0 for v in result.metrics.values())
    subset = json.loads(ann.read_text())
    ids = {im["id"] for im in subset["images"]}
    category_ids = sorted(c["id"] for c in subset["categories"])
    assert len(result.detections) == TOP_K * len(ids)  # top-300 per image, no score threshold
    assert {d["image_id"] for d in result.detections} == ids
    assert {d["category_id"] for d in result.detections} <= set(category_ids)
    assert all(set(d) == {"image_id", "category_id", "bbox", "score"} for d in result.detections)
    # the same numbers as predict gives for that image, with labels mapped to the dataset's category ids
    first = min(ids)
    info = next(im for im in subset["images"] if im["id"] == first)
    det = model.predict(str(IMAGE_DIR / info["file_name"]), score_threshold=0.0, top_k=TOP_K, input_size=160)
    ours = [d for d in result.detections if d["image_id"] == first]
    scores = torch.tensor([d["score"] for d in ours])
    torch.testing.assert_close(scores, det.scores, atol=1e-5, rtol=0)
    xyxy = torch.tensor([d["bbox"] for d in ours])
    xyxy[:, 2:] += xyxy[:, :2]
    # batch 3 here, batch 1 in predict: rounding may order (near-)equal scores of random weights differently, so
    # each detection of predict must have its own counterpart (same category, score and box) in any order
    categories = torch.tensor([d["category_id"] for d in ours])
    unused = torch.ones(len(ours), dtype=torch.bool)
    for box, score, label in zip(det.boxes, det.scores, det.labels.tolist()):
        same = ((xyxy - box).abs().max(1).values <= 1e-2) & ((scores - score).abs() <= 1e-5) & \
            (categories == category_ids[label]) & unused
        assert same.any(), (box, score, label)
        unused[same.nonzero()[0]] = False
    # and pycocotools agrees on the detections it returned
    path = tmp_path / "model_detections.json"
    path.write_text(json.dumps(result.detections))
    assert list(result.metrics.values()) == _pycocotools(ann, path)


def test_input_errors(dataset, model, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        zoo.evaluate(model, tmp_path / "missing.json", IMAGE_DIR, verbose=False)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        zoo.evaluate(model, ANN, tmp_path / "nowhere", verbose=False)
    for text in ("[1, 2]", "{not json", '{"images": []}'):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ValueError, match="bad.json is not a COCO"):
            zoo.evaluate(model, tmp_path / "bad.json", IMAGE_DIR, verbose=False)
    with pytest.raises(ValueError, match="num_workers"):
        zoo.evaluate(model, ANN, IMAGE_DIR, num_workers=-1, verbose=False)
    wrong = _subset(dataset, tmp_path, 1, height=7)  # the annotation disagrees with the image on disk
    with pytest.raises(ValueError, match="annotations say 7x"):
        zoo.evaluate(model, wrong, IMAGE_DIR, num_workers=0, input_size=160, progress=False, verbose=False)
    twenty_classes = SimpleNamespace(num_classes=20, pretrained_cfg=model.pretrained_cfg)
    with pytest.raises(ValueError, match="20 classes but the annotations have 80 categories"):
        zoo.evaluate(twenty_classes, ANN, IMAGE_DIR, verbose=False)


def test_per_class_metrics_equal_pycocotools_one_class_at_a_time(dataset):
    """per_class_metrics reads COCOeval's precision array; the reference evaluates each class on its own."""
    from pycocotools.coco import COCO as Coco
    from pycocotools.cocoeval import COCOeval

    from zoo.engine.evaluate import format_per_class, per_class_metrics

    detections = _perturbed(dataset["annotations"], [c["id"] for c in dataset["categories"]])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = Coco(str(ANN))
        dt = gt.loadRes(detections)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    per_class = per_class_metrics(evaluator)
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    assert list(per_class) == [names[c] for c in sorted(names)]
    counts = {}
    for ann in dataset["annotations"]:
        if not ann["iscrowd"]:
            counts[ann["category_id"]] = counts.get(ann["category_id"], 0) + 1
    checked = 0
    for cat_id in sorted(names):
        row = per_class[names[cat_id]]
        assert row["instances"] == counts.get(cat_id, 0)
        if cat_id not in counts:
            assert row["AP"] == row["AP50"] == -1.0
            continue
        if checked < 8:  # the reference costs a full COCOeval per class
            with contextlib.redirect_stdout(io.StringIO()):
                one = COCOeval(gt, dt, "bbox")
                one.params.catIds = [cat_id]
                one.evaluate()
                one.accumulate()
                one.summarize()
            assert (row["AP"], row["AP50"]) == pytest.approx((one.stats[0], one.stats[1]), abs=1e-12), names[cat_id]
            checked += 1
    assert checked == 8 and any(0 < row["AP"] < 1 for row in per_class.values())
    table = format_per_class(per_class).splitlines()
    assert table[0].split() == ["class", "AP", "AP50", "instances"] and len(table) == 1 + len(names)


def test_confusion_matrix_counts():
    """Matched at IoU 0.5 regardless of class, highest score first; duplicates and misses go to background;
    detections on crowd boxes and under the threshold are not counted."""
    from pycocotools.coco import COCO as Coco

    from zoo.engine.eval_plots import confusion_matrix

    gt = Coco()
    gt.dataset = {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
                  "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
                  "annotations": [
                      {"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
                      {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
                      {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0, 60, 30, 30], "area": 900, "iscrowd": 1},
                      {"id": 4, "image_id": 2, "category_id": 7, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    dets = [{"image_id": 1, "category_id": 3, "bbox": [1, 1, 20, 20], "score": 0.9},     # a on a
            {"image_id": 1, "category_id": 7, "bbox": [0, 0, 20, 21], "score": 0.8},     # duplicate: background
            {"image_id": 1, "category_id": 3, "bbox": [51, 50, 20, 20], "score": 0.7},   # a on b
            {"image_id": 1, "category_id": 7, "bbox": [0, 60, 30, 30], "score": 0.95},   # on the crowd: ignored
            {"image_id": 1, "category_id": 7, "bbox": [80, 0, 10, 10], "score": 0.6},    # nothing there
            {"image_id": 2, "category_id": 7, "bbox": [10, 10, 20, 20], "score": 0.3}]   # under the threshold
    matrix, names = confusion_matrix(gt, dets, score_threshold=0.5)
    assert names == ["a", "b"]
    np.testing.assert_array_equal(matrix, [[1, 0, 0],     # true a: predicted a
                                           [1, 0, 1],     # true b: predicted a once, missed once (image 2)
                                           [0, 2, 0]])    # background: two b detections on nothing
    matrix, _ = confusion_matrix(gt, dets, score_threshold=0.2)
    assert matrix[1].tolist() == [1, 1, 0]  # image 2's b is found now
