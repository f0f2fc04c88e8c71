"""Tracking (zoo.engine.track on Roboflow's trackers, metrics by trackeval): the metrics score true tracks perfectly
and count swapped ids; the bundled demo detector + ByteTrack keep their identities on a generated clip of moving
shapes (crossings and a pole that hides them) above a floor; model.track streams; ``zoo predict --track`` records
the ids per frame; ids are drawn in a stable colour per object with a trail; clear errors."""
import json
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

pytest.importorskip("trackers", reason="tracking needs the trackers package (pip install 'zoo[track]')")
pytest.importorskip("trackeval", reason="tracking metrics need trackeval (pip install 'zoo[track]')")
pytest.importorskip("av", reason="videos need PyAV (pip install 'zoo[video]')")

import zoo  # noqa: E402
from zoo.cli import main  # noqa: E402
from zoo.data.synthetic import render_tracking_clip  # noqa: E402
from zoo.data.video import VideoWriter  # noqa: E402
from zoo.engine.draw import class_color  # noqa: E402
from zoo.engine.predict import Detections  # noqa: E402
from zoo.engine.track import Tracker, tracking_metrics  # noqa: E402
from zoo.extras import MissingExtraError  # noqa: E402

DEMO = "rtdetr_mobilenetv3_small.shapes_demo"
NUM_FRAMES = 60


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames, truth = render_tracking_clip(0, NUM_FRAMES)
    path = tmp_path_factory.mktemp("track") / "shapes.mp4"
    with VideoWriter(path, Fraction(30), 96, 96) as writer:
        for frame in frames:
            writer.write(frame)
    return path, frames, truth


@pytest.fixture(scope="module")
def model(single_thread):
    return zoo.create_model(DEMO, pretrained=True).eval()


def _truth_as_detections(objects, ids=None) -> Detections:
    boxes = torch.tensor([o["bbox"] for o in objects], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return Detections(boxes=boxes, scores=torch.ones(len(objects)), labels=torch.zeros(len(objects), dtype=torch.long),
                      label_names=["shape"] * len(objects), image_size=(96, 96),
                      track_ids=torch.tensor(ids if ids is not None else [o["track_id"] for o in objects]))


def test_clip_has_crossings_and_occlusions(clip):
    _, _, truth = clip
    hidden = [o for objects in truth for o in objects if o["visibility"] < 0.5]
    assert len(hidden) >= 5  # objects partly hidden behind the pole or another shape
    assert {o["track_id"] for objects in truth for o in objects} == {1, 2, 3}


def test_metrics_perfect_tracks_and_swaps(clip):
    _, _, truth = clip
    perfect = tracking_metrics(truth, [_truth_as_detections(objects) for objects in truth])
    assert perfect["HOTA"] > 0.99 and perfect["IDF1"] == 1.0 and perfect["IDSW"] == 0 and perfect["MOTA"] == 1.0
    swapped = []  # ids 1 and 2 exchanged from frame 30 on
    for t, objects in enumerate(truth):
        ids = [{1: 2, 2: 1}.get(o["track_id"], o["track_id"]) if t >= 30 else o["track_id"] for o in objects]
        swapped.append(_truth_as_detections(objects, ids))
    result = tracking_metrics(truth, swapped)
    assert result["IDSW"] >= 2 and result["IDF1"] < 0.8 and result["HOTA"] < perfect["HOTA"]


def test_demo_detector_with_bytetrack_keeps_identities(clip, model):
    """Measured on this clip (benchmarks/bench_tracking.py): HOTA 0.53, IDF1 0.82, 1 ID switch."""
    path, _, truth = clip
    frames = model.track(str(path), tracker="bytetrack", batch_size=16)
    assert len(frames) == NUM_FRAMES and [f.frame for f in frames] == list(range(NUM_FRAMES))
    assert all(f.track_ids is not None and len(f.track_ids) == len(f) for f in frames)
    metrics = tracking_metrics(truth, frames)
    assert metrics["HOTA"] >= 0.45 and metrics["IDF1"] >= 0.7 and metrics["IDSW"] <= 3, metrics


def test_track_stream_and_frame_lists(clip, model):
    _, frames, _ = clip
    listed = model.track(frames[:12], tracker="sort")
    streamed = model.track(frames[:12], tracker="sort", stream=True)
    assert not isinstance(streamed, list)
    for a, b in zip(listed, streamed, strict=True):
        assert a.track_ids.tolist() == b.track_ids.tolist()
        torch.testing.assert_close(a.boxes, b.boxes)
    assert any((f.track_ids >= 0).any() for f in listed)  # SORT confirms tracks after 3 frames


def test_tracker_nms_ids_and_drawing():
    tracker = Tracker("bytetrack", minimum_consecutive_frames=1)
    drawn = []
    for t in range(4):  # one object moving right, with a same-box duplicate of another class
        box = [10.0 + 8 * t, 20.0, 40.0 + 8 * t, 50.0]
        det = Detections(boxes=torch.tensor([box, box]), scores=torch.tensor([0.9, 0.8]), labels=torch.tensor([0, 1]),
                         label_names=["circle", "square"], image_size=(96, 96))
        tracked = tracker.update(det)
        assert len(tracked) == 1 and tracked.label_names == ["circle"]  # the duplicate is merged by the NMS
        drawn.append((tracked, np.asarray(tracker.draw(np.zeros((96, 96, 3), np.uint8), tracked))))
    assert drawn[0][0].track_ids.tolist() == [-1]  # a new track is confirmed by its second detection
    track_id = int(drawn[-1][0].track_ids[0])
    assert track_id >= 0 and all(int(d.track_ids[0]) == track_id for d, _ in drawn[1:])
    colour = class_color(track_id)
    for det, pixels in drawn[1:]:
        x1, y1, x2, y2 = (int(v) for v in det.boxes[0].tolist())
        assert tuple(pixels[(y1 + y2) // 2, x1]) == colour  # the box's left edge, in the id's colour
    # the trail joins the centres since the track was confirmed: (33, 35) on frame 2 to (49, 35) on frame 4
    assert tuple(drawn[-1][1][35, 33]) == colour and tuple(drawn[-1][1][35, 40]) == colour
    assert not drawn[1][1][35, 33].any()  # one centre: no trail yet


def test_cli_track_writes_ids_per_frame(clip, model, tmp_path, capsys):
    path, _, _ = clip
    code = main(["predict", DEMO, str(path), "--track", "--out", str(tmp_path), "--batch-size", "16"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (tmp_path / "shapes.jsonl").read_text().splitlines()]
    assert len(records) == NUM_FRAMES
    assert all(len(r["track_ids"]) == len(r["boxes"]) for r in records)
    assert len({i for r in records for i in r["track_ids"] if i >= 0}) >= 3
    import av

    with av.open(str(tmp_path / "shapes.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == NUM_FRAMES


def test_errors(clip, model, tmp_path, capsys, monkeypatch):
    with pytest.raises(ValueError, match="unknown tracker 'deepsort'"):
        Tracker("deepsort")
    with pytest.raises(ValueError, match="tracker_args go to trackers.SORTTracker"):
        Tracker("sort", no_such_option=1)
    with pytest.raises(ValueError, match="list of frames"):
        model.track(clip[1][0])  # one image is not a sequence
    tracked = Tracker("sort").update(Detections(boxes=torch.zeros(0, 4), scores=torch.zeros(0),
                                                labels=torch.zeros(0, dtype=torch.long), label_names=[],
                                                image_size=(96, 96)))
    assert tracked.track_ids.tolist() == []
    with pytest.raises(ValueError, match="already tracked"):
        Tracker("sort").update(tracked)
    image = tmp_path / "frame.png"
    from PIL import Image

    Image.fromarray(clip[1][0]).save(image)
    assert main(["predict", DEMO, str(image), "--track", "--out", str(tmp_path / "o")]) == 1
    assert "--track follows objects over the frames of a video" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "trackers", None)
    with pytest.raises(MissingExtraError, match=r"zoo\[track\]"):
        Tracker("bytetrack")
