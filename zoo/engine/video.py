"""Detection on videos and live streams (files, webcam indices, RTSP/HTTP URLs; zoo.data.video decodes them).

:func:`predict_stream` decodes frames in batches of ``batch_size``, runs the detector on each batch and yields one
:class:`FrameDetections` per frame, so memory stays constant however long the video is.
:func:`annotate_video` writes the frames with their detections drawn (same frame count and frame rate, H.264) and
the detections as JSON lines, one record per frame with a ``frame`` field.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from zoo.data.video import DEFAULT_TIMEOUT, VideoReader, VideoWriter, webcam_index
from zoo.engine.draw import draw
from zoo.engine.predict import Detections, predict

__all__ = ["FrameDetections", "predict_stream", "annotate_video"]


@dataclass
class FrameDetections(Detections):
    """:class:`Detections` of one video frame: its index (from 0) and presentation time in seconds."""

    frame: int = 0
    time: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"frame": self.frame, "time": self.time, **super().to_dict()}


def _detect_frames(model: torch.nn.Module, reader: VideoReader, batch_size: int, progress: bool, **kwargs: Any
                   ) -> Iterator[tuple[torch.Tensor, FrameDetections]]:
    """(frame, its detections) for every frame of ``reader``, detected ``batch_size`` frames at a time."""
    from tqdm.auto import tqdm

    def flush(batch: list[tuple[int, float | None, torch.Tensor]]):
        results = predict(model, [frame for _, _, frame in batch], batch_size=len(batch), **kwargs)
        for (index, time, frame), det in zip(batch, results):
            yield frame, FrameDetections(**{**det.__dict__, "source": reader.name}, frame=index, time=time)

    with tqdm(total=reader.num_frames or None, disable=not progress, unit="frame", desc="predict",
              dynamic_ncols=True) as bar:  # the rate column reads frame/s
        batch: list[tuple[int, float | None, torch.Tensor]] = []
        for item in reader:
            batch.append(item)
            if len(batch) == batch_size:
                yield from flush(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            yield from flush(batch)
            bar.update(len(batch))


def predict_stream(model: torch.nn.Module, source: Any, score_threshold: float = 0.5, top_k: int = 100,
                   batch_size: int = 8, device: str | torch.device | None = None,
                   input_size: int | tuple[int, int] | None = None, progress: bool = False,
                   timeout: float = DEFAULT_TIMEOUT) -> Iterator[FrameDetections]:
    """Yield :class:`FrameDetections` for each frame of a video file, webcam index or stream URL, in constant
    memory (``batch_size`` frames decoded at a time). The source is opened now, so a bad one fails here (one that
    does not answer within ``timeout`` seconds: :class:`TimeoutError`); stop iterating to stop reading a live
    stream."""
    reader = VideoReader(source, timeout)

    def frames() -> Iterator[FrameDetections]:
        with reader:
            for _, detections in _detect_frames(model, reader, batch_size, progress, score_threshold=score_threshold,
                                                top_k=top_k, device=device, input_size=input_size):
                yield detections
    return frames()


def _output_stem(source: Any) -> str:
    index = webcam_index(source)
    if index is not None:
        return f"webcam{index}"
    return Path(os.fspath(source).split("?")[0].rstrip("/")).stem or "stream"


def annotate_video(model: torch.nn.Module, source: Any, out_dir: str | os.PathLike, draw_boxes: bool = True,
                   progress: bool = False, make_tracker: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Detect objects in every frame of ``source``; write ``out_dir/<stem>.mp4`` (the frames with their
    detections drawn, same frame count and frame rate; skipped when ``draw_boxes`` is False) and
    ``out_dir/<stem>.jsonl`` (one JSON record per frame). ``kwargs`` go to :func:`predict_stream`'s options
    (``timeout`` included). ``make_tracker(frame_rate)`` builds a tracker (:class:`zoo.engine.track.Tracker`) that gives every frame's
    detections track ids, recorded in the JSON lines and drawn with a trail per object. Ctrl-C ends a live stream cleanly: what was read so far is written. Returns a summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = _output_stem(source)
    video_path, lines_path = out / f"{stem}.mp4", out / f"{stem}.jsonl"
    if webcam_index(source) is None and "://" not in os.fspath(source) and \
            video_path.resolve() == Path(os.fspath(source)).resolve():
        raise ValueError(f"the annotated video would overwrite its input {source}; choose another --out folder")
    counts: Counter[str] = Counter()
    frames, writer, interrupted = 0, None, False
    batch_size = kwargs.pop("batch_size", 8)
    with VideoReader(source, kwargs.pop("timeout", DEFAULT_TIMEOUT)) as reader, open(lines_path, "w") as lines:
        tracker = make_tracker(float(reader.fps)) if make_tracker is not None else None
        try:
            for frame, det in _detect_frames(model, reader, batch_size, progress, **kwargs):
                if tracker is not None:
                    det = tracker.update(det, det.time)
                lines.write(json.dumps(det.to_dict()) + "\n")
                counts.update(det.label_names)
                if draw_boxes:
                    if writer is None:
                        writer = VideoWriter(video_path, reader.fps, int(frame.shape[2]), int(frame.shape[1]))
                    writer.write(draw(frame, det) if tracker is None else tracker.draw(frame, det))
                frames += 1
        except KeyboardInterrupt:  # a live stream stopped by the user: keep what was written
            interrupted = True
        finally:
            if writer is not None:
                writer.close()
    return {"source": reader.name, "frames": frames, "fps": float(reader.fps), "detections": dict(counts),
            "video": str(video_path) if writer is not None else None, "jsonl": str(lines_path),
            "interrupted": interrupted}

