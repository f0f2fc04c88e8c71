"""Multi-object tracking: identities for the detections of consecutive frames, with Roboflow's ``trackers`` package
(ByteTrack, SORT, OC-SORT; the ``track`` extra), and the tracking metrics (HOTA, IDF1, MOTA, ID switches) of
``trackeval``.

:class:`Tracker` gives each frame's :class:`~zoo.engine.predict.Detections` a ``track_ids`` tensor and draws them
with one colour per id and a short trail; :func:`track` runs a detector and a tracker over a video, a stream or a
list of frames (``model.track``, ``zoo predict --track``). The trackers are class-agnostic: a detector that proposes
two classes for one object (DETR-style models have no NMS) would start two tracks, so each frame's detections go
through a class-agnostic NMS first (``nms_iou``) and only the kept ones are returned.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from zoo.data.images import ImageInput
from zoo.engine.predict import Detections

__all__ = ["TRACKERS", "Tracker", "track", "tracking_metrics"]

#: the ``--track`` names and the ``trackers`` classes they build
TRACKERS = {"bytetrack": "ByteTrackTracker", "sort": "SORTTracker", "ocsort": "OCSORTTracker"}


def _require(module: str) -> Any:
    from zoo.extras import require

    return require(module, "track", "tracking objects over frames" if module == "trackers" else
                   "measuring tracking (HOTA, IDF1)")


class Tracker:
    """Track ids for the detections of consecutive frames of one video, and their drawing.

    ``name`` is one of :data:`TRACKERS`; ``frame_rate`` the video's (the trackers count their lost-track buffer in
    frames at 30 fps); ``tracker_args`` go to the ``trackers`` class (e.g. ``lost_track_buffer``,
    ``track_activation_threshold``). ``nms_iou`` merges duplicate boxes before tracking (1 disables it);
    ``trail_length`` is the number of past centres drawn behind each tracked object.
    """

    def __init__(self, name: str = "bytetrack", frame_rate: float = 30.0, nms_iou: float = 0.7,
                 trail_length: int = 20, **tracker_args: Any):
        if name not in TRACKERS:
            raise ValueError(f"unknown tracker {name!r}: choose one of {', '.join(TRACKERS)}")
        if not 0 < nms_iou <= 1:
            raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou!r}")
        if not float(frame_rate) > 0:
            raise ValueError(f"frame_rate must be positive, got {frame_rate!r}")
        tracker_class = getattr(_require("trackers"), TRACKERS[name])
        try:
            self.tracker = tracker_class(frame_rate=float(frame_rate), **tracker_args)
        except TypeError as exc:
            raise ValueError(f"{name}: {exc} (tracker_args go to trackers.{TRACKERS[name]})") from exc
        self.name, self.nms_iou, self.trail_length = name, float(nms_iou), int(trail_length)
        self.frame = 0
        self.trails: dict[int, deque] = {}  # id -> (frame, cx, cy) of its last positions

    def reset(self) -> None:
        """Forget every track (the next frame starts a new video)."""
        self.tracker.reset()
        self.frame, self.trails = 0, {}

    def update(self, detections: Detections, time: float | None = None) -> Detections:
        """The detections of the next frame (after the class-agnostic NMS), with ``track_ids``: an id per tracked
        object, -1 for a detection that no confirmed track holds. ``time`` (seconds, e.g. the frame's presentation
        time) lets the motion model follow a variable frame rate; None steps one frame."""
        from torchvision.ops import nms

        if detections.track_ids is not None:
            raise ValueError("these detections are already tracked; pass each frame's detections once")
        if self.nms_iou < 1 and len(detections):
            detections = detections.subset(nms(detections.boxes.float(), detections.scores.float(), self.nms_iou))
        converted = detections.to_supervision()
        converted.data["zoo_index"] = np.arange(len(detections))
        tracked = self.tracker.update(converted, timestamp=time)
        ids = np.full(len(detections), -1, dtype=np.int64)
        if len(tracked):
            ids[tracked.data["zoo_index"]] = tracked.tracker_id
        result = dataclasses.replace(detections, track_ids=torch.from_numpy(ids))
        self._record_trails(result)
        return result

    def _record_trails(self, detections: Detections) -> None:
        self.frame += 1
        centres = ((detections.boxes[:, :2] + detections.boxes[:, 2:]) / 2).tolist()
        for track_id, (cx, cy) in zip(detections.track_ids.tolist(), centres):
            if track_id >= 0:
                self.trails.setdefault(track_id, deque(maxlen=self.trail_length)).append((self.frame, cx, cy))
        for track_id in [t for t, trail in self.trails.items() if self.frame - trail[-1][0] >= self.trail_length]:
            del self.trails[track_id]

    def draw(self, image: ImageInput, detections: Detections, **kwargs: Any) -> Image.Image:
        """``zoo.draw`` of the tracked detections (colour and ``#id`` caption per track) with each visible track's
        trail of recent centres. ``kwargs`` go to :func:`zoo.engine.draw.draw`."""
        from zoo.engine.draw import class_color, draw

        canvas = draw(image, detections, **kwargs)
        painter = ImageDraw.Draw(canvas)
        width = 2 * max(1, round(max(canvas.size) / 320))  # twice the box lines: the trail reads as a path
        for track_id in set((detections.track_ids if detections.track_ids is not None else torch.empty(0)).tolist()):
            trail = self.trails.get(track_id)
            if track_id >= 0 and trail and len(trail) > 1:
                painter.line([(x, y) for _, x, y in trail], fill=class_color(track_id), width=width, joint="curve")
        return canvas


def track(model: torch.nn.Module, source: Any, tracker: str | Tracker = "bytetrack",
          tracker_args: dict[str, Any] | None = None, score_threshold: float = 0.3, top_k: int = 100,
          batch_size: int = 8, device: str | torch.device | None = None,
          input_size: int | tuple[int, int] | None = None, progress: bool = False) -> Iterator[Detections]:
    """Detect and track objects in a video file, webcam index or stream URL (``FrameDetections`` per frame, read
    ``batch_size`` frames at a time; needs the ``video`` extra) or in a sequence of frames (images in order, any
    input ``model.predict`` takes). Yields each frame's detections with ``track_ids``, in order.

    ``tracker`` is a name of :data:`TRACKERS` (built with ``tracker_args`` at the video's frame rate) or a
    :class:`Tracker`. The default ``score_threshold`` is lower than ``predict``'s: ByteTrack uses the low-scored
    detections to keep tracks alive through occlusions, and starts tracks only from high-scored ones.
    """
    from zoo.data.video import VideoReader, is_video_source
    from zoo.engine.video import predict_stream
    from zoo.engine.predict import predict

    options = dict(score_threshold=score_threshold, top_k=top_k, device=device, input_size=input_size)
    if is_video_source(source):
        with VideoReader(source) as reader:  # opened once here for the frame rate, so a bad source fails now
            frame_rate = float(reader.fps)
        frames: Iterator[Detections] = predict_stream(model, source, batch_size=batch_size, progress=progress,
                                                      **options)
    elif isinstance(source, (list, tuple)) or (isinstance(source, (torch.Tensor, np.ndarray)) and source.ndim == 4):
        frame_rate = 30.0
        frames = (det for start in range(0, len(source), batch_size)
                  for det in predict(model, list(source[start:start + batch_size]), batch_size=batch_size, **options))
    else:
        raise ValueError("tracking needs a video file, a webcam index, a stream URL or a list of frames (images in "
                         f"order); got {type(source).__name__} {source!r:.80}")
    if isinstance(tracker, str):
        tracker = Tracker(tracker, frame_rate=frame_rate, **(tracker_args or {}))
    elif tracker_args:
        raise ValueError("tracker_args apply when tracker is a name; this Tracker is already built")
    return (tracker.update(det, getattr(det, "time", None)) for det in frames)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes ``a`` [N, 4] against ``b`` [M, 4]."""
    from torchvision.ops import box_iou

    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return box_iou(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)).numpy()


def tracking_metrics(truth: Sequence[Sequence[dict[str, Any]]], predicted: Sequence[Detections],
                     iou_threshold: float = 0.5, min_visibility: float = 0.5) -> dict[str, float]:
    """HOTA, DetA, AssA (averaged over IoU thresholds 0.05..0.95), IDF1, MOTA and ID switches (at
    ``iou_threshold``) of tracked detections against the true tracks, computed by ``trackeval``.

    ``truth`` holds, per frame, objects ``{"track_id", "bbox": [x, y, w, h], "visibility"?}`` (as
    :func:`zoo.data.synthetic.render_tracking_clip` gives); ``predicted`` each frame's tracked Detections, of which
    only the detections with a track id count. As in the MOT Challenge, objects less visible than
    ``min_visibility`` are not required: they are left out, and so are the predictions that match them.
    """
    trackeval = _require("trackeval")
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} frames of truth but {len(predicted)} frames of predictions")
    gt_ids, tr_ids, similarities, gt_names, tr_names = [], [], [], {}, {}
    for objects, det in zip(truth, predicted):
        if det.track_ids is None:
            raise ValueError("the predictions are not tracked (no track_ids): run them through a Tracker")
        boxes = np.array([o["bbox"] for o in objects], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        required = np.array([o.get("visibility", 1.0) >= min_visibility for o in objects], dtype=bool)
        keep = (det.track_ids >= 0).numpy()
        pred_boxes, pred_ids = det.boxes.double().numpy()[keep], det.track_ids.numpy()[keep]
        iou = _iou_matrix(boxes, pred_boxes)
        if (~required).any() and len(pred_boxes):  # predictions of objects not required are not counted
            from scipy.optimize import linear_sum_assignment

            rows, cols = linear_sum_assignment(-iou[~required])
            matched = cols[iou[~required][rows, cols] >= iou_threshold]
            drop = np.zeros(len(pred_boxes), bool)
            drop[matched] = True
            pred_ids, iou = pred_ids[~drop], iou[:, ~drop]
        gt_ids.append(np.array([gt_names.setdefault(o["track_id"], len(gt_names))
                                for o, r in zip(objects, required) if r], dtype=int))
        tr_ids.append(np.array([tr_names.setdefault(int(t), len(tr_names)) for t in pred_ids], dtype=int))
        similarities.append(iou[required])
    data = {"num_timesteps": len(truth), "num_gt_ids": len(gt_names), "num_tracker_ids": len(tr_names),
            "num_gt_dets": sum(len(g) for g in gt_ids), "num_tracker_dets": sum(len(t) for t in tr_ids),
            "gt_ids": gt_ids, "tracker_ids": tr_ids, "similarity_scores": similarities}
    config = {"THRESHOLD": iou_threshold, "PRINT_CONFIG": False}
    hota = trackeval.metrics.HOTA().eval_sequence(data)
    identity = trackeval.metrics.Identity(config).eval_sequence(data)
    clear = trackeval.metrics.CLEAR(config).eval_sequence(data)
    return {"HOTA": float(np.mean(hota["HOTA"])), "DetA": float(np.mean(hota["DetA"])),
            "AssA": float(np.mean(hota["AssA"])), "IDF1": float(identity["IDF1"]), "MOTA": float(clear["MOTA"]),
            "IDSW": int(clear["IDSW"]), "true_tracks": len(gt_names), "predicted_tracks": len(tr_names)}
