"""Detections <-> supervision.Detections with the real package: a round trip keeps every field (tracked ids
included), supervision's annotators, zones and NMS work on zoo's output, annotations without scores convert, and
what zoo cannot hold is refused clearly."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sv = pytest.importorskip("supervision", reason="needs supervision (pip install 'zoo[supervision]')")

import zoo  # noqa: E402
from zoo.engine.predict import Detections  # noqa: E402
from zoo.extras import MissingExtraError  # noqa: E402

DEMO_IMAGE = Path(zoo.__file__).parent / "assets" / "shapes_demo.png"


@pytest.fixture(scope="module")
def detections(single_thread):
    model = zoo.create_model("rtdetr_mobilenetv3_small.shapes_demo", pretrained=True)
    det = model.predict(str(DEMO_IMAGE), score_threshold=0.3)
    assert len(det) >= 4
    return det


def _assert_equal(a: Detections, b: Detections) -> None:
    torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=0)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)
    assert a.labels.tolist() == b.labels.tolist() and a.label_names == b.label_names
    assert a.image_size == b.image_size and a.source == b.source
    assert (a.track_ids is None) == (b.track_ids is None)
    if a.track_ids is not None:
        assert a.track_ids.tolist() == b.track_ids.tolist()


def test_round_trip(detections):
    converted = detections.to_supervision()
    assert isinstance(converted, sv.Detections) and len(converted) == len(detections)
    np.testing.assert_array_equal(converted.xyxy, detections.boxes.numpy())
    np.testing.assert_array_equal(converted.confidence, detections.scores.numpy())
    assert converted.class_id.tolist() == detections.labels.tolist() and converted.tracker_id is None
    assert converted["class_name"].tolist() == detections.label_names
    back = Detections.from_supervision(converted, detections.image_size, source=detections.source)
    _assert_equal(back, detections)


def test_tracked_round_trip(detections):
    tracked = Detections(**{**detections.__dict__, "track_ids": torch.arange(len(detections)) + 7})
    converted = tracked.to_supervision()
    assert converted.tracker_id.tolist() == list(range(7, 7 + len(detections)))
    _assert_equal(Detections.from_supervision(converted, tracked.image_size, source=tracked.source), tracked)
    assert Detections.from_supervision(converted, tracked.image_size).to_dict()["track_ids"] == \
        converted.tracker_id.tolist()


def test_supervision_tools_work_on_zoo_output(detections):
    image = np.asarray(zoo.draw(str(DEMO_IMAGE), detections.subset([])))  # the image itself, nothing drawn
    converted = detections.to_supervision()
    annotated = sv.LabelAnnotator().annotate(sv.BoxAnnotator().annotate(image.copy(), converted), converted)
    assert (annotated != image).any(axis=-1).sum() > 100  # boxes and labels were drawn
    height, width = detections.image_size
    left_half = np.array([[0, 0], [width // 2, 0], [width // 2, height], [0, height]])
    zone = sv.PolygonZone(left_half)
    inside = zone.trigger(converted)
    anchor_x = (detections.boxes[:, 0] + detections.boxes[:, 2]) / 2  # the zone tests the bottom centre
    assert inside.tolist() == (anchor_x < width // 2).tolist()
    merged = converted.with_nms(threshold=0.5, class_agnostic=True)
    assert 0 < len(merged) <= len(converted)
    Detections.from_supervision(merged, detections.image_size)  # supervision's results convert back


def test_annotations_and_names():
    annotations = sv.Detections(xyxy=np.array([[0, 0, 10, 10], [5, 5, 20, 30]], np.float32),
                                class_id=np.array([2, 0]))
    det = Detections.from_supervision(annotations, (40, 30), label_names=["circle", "square", "triangle"])
    assert det.scores.tolist() == [1.0, 1.0] and det.label_names == ["triangle", "circle"]
    assert Detections.from_supervision(annotations, (40, 30)).label_names == ["class_2", "class_0"]
    scored = sv.Detections(xyxy=annotations.xyxy, class_id=annotations.class_id, confidence=np.array([0.2, 0.9]))
    det = Detections.from_supervision(scored, (40, 30), label_names=["circle", "square", "triangle"])
    assert det.scores.tolist() == pytest.approx([0.9, 0.2]) and det.label_names == ["circle", "triangle"]
    assert det.boxes.tolist() == [[5, 5, 20, 30], [0, 0, 10, 10]]  # sorted by score, as predict returns them
    empty = Detections.from_supervision(sv.Detections.empty(), (40, 30))
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


def test_errors(detections, monkeypatch):
    with pytest.raises(TypeError, match="expected a supervision.Detections"):
        Detections.from_supervision(detections, (10, 10))
    with pytest.raises(ValueError, match="no class_id"):
        Detections.from_supervision(sv.Detections(xyxy=np.zeros((1, 4), np.float32)), (10, 10))
    with pytest.raises(ValueError, match=r"image_size must be \(height, width\)"):
        Detections.from_supervision(detections.to_supervision(), (0, 10))
    monkeypatch.setitem(sys.modules, "supervision", None)
    with pytest.raises(MissingExtraError, match=r"zoo\[supervision\]"):
        detections.to_supervision()
