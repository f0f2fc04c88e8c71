"""Videos and live streams (files, webcam indices, RTSP/HTTP URLs) through PyAV, the ``video`` extra.

:func:`predict_stream` decodes frames in batches of ``batch_size``, runs the detector on each batch and yields one
:class:`FrameDetections` per frame, so memory stays constant however long the video is.
:func:`annotate_video` writes the frames with their detections drawn (same frame count and frame rate, H.264) and
the detections as JSON lines, one record per frame with a ``frame`` field.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

from zoo.engine.predict import Detections

__all__ = ["VIDEO_SUFFIXES", "FrameDetections", "VideoReader", "VideoWriter", "is_video_source", "predict_stream",
           "annotate_video"]

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
DEFAULT_FPS = Fraction(30)  # for live sources that do not report a frame rate
DEFAULT_TIMEOUT = 30.0  # seconds a stream or camera may take to answer (open) and between packets (read)


@dataclass
class FrameDetections(Detections):
    """:class:`Detections` of one video frame: its index (from 0) and presentation time in seconds."""

    frame: int = 0
    time: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"frame": self.frame, "time": self.time, **super().to_dict()}


def _webcam_index(source: Any) -> int | None:
    if isinstance(source, int) and not isinstance(source, bool):
        return source
    if isinstance(source, str) and source.isdigit() and not os.path.exists(source):
        return int(source)
    return None


def is_video_source(source: Any) -> bool:
    """A video file (by suffix), a webcam index (``0`` or ``"0"``) or a stream URL (rtsp://, http://, ...)."""
    if _webcam_index(source) is not None:
        return True
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = os.fspath(source)
    if text.lower().startswith(STREAM_SCHEMES):
        return True
    return Path(text).suffix.lower() in VIDEO_SUFFIXES


def _av():
    from zoo.extras import require

    return require("av", "video", "reading and writing videos and streams", package="av (PyAV)")


def _open_input(source: Any, timeout: float = DEFAULT_TIMEOUT):
    """``av.open`` for a file, a webcam index (v4l2 on Linux, avfoundation on macOS) or a URL; a source that does
    not answer within ``timeout`` seconds is a :class:`TimeoutError` that says so (FFmpeg reports only what it
    made of the silence, e.g. "Invalid data found")."""
    av = _av()
    index = _webcam_index(source)
    if index is not None:
        if sys.platform.startswith("linux"):
            name, kwargs = f"/dev/video{index}", {"format": "v4l2"}
        elif sys.platform == "darwin":
            name, kwargs = str(index), {"format": "avfoundation"}
        else:
            raise ValueError(f"webcam {index}: indices work on Linux (v4l2) and macOS (avfoundation); elsewhere "
                             "pass the camera's URL or device name as FFmpeg spells it")
        what = f"webcam {index} ({name})"
    else:
        name, what = os.fspath(source), os.fspath(source)
        kwargs = {"options": {"rtsp_transport": "tcp"}} if name.lower().startswith("rtsp") else {}
        if "://" not in name and not os.path.isfile(name):
            raise FileNotFoundError(f"video not found: {name}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    start = time.monotonic()
    try:
        return av.open(name, mode="r", timeout=float(timeout), **kwargs), what
    except av.FFmpegError as exc:
        if time.monotonic() - start >= 0.9 * timeout:  # FFmpeg's interrupt callback ended the wait
            raise TimeoutError(f"cannot open {what}: no answer within {timeout:g} s (FFmpeg: {exc}). Check the "
                               "address and that the source is streaming, or wait longer (zoo predict --timeout, "
                               "timeout= in Python)") from None
        raise ValueError(f"cannot open video {what}: {exc}. Check that it exists and that FFmpeg (PyAV) can "
                         "decode it") from exc


class VideoReader:
    """Decoded RGB frames of a video or stream, one at a time: ``for index, time, frame in reader``, with
    ``frame`` a uint8 tensor ``[3, H, W]``. ``fps`` is the average frame rate; ``num_frames`` is 0 when unknown
    (live streams). ``timeout``: seconds the source may take to answer, and to send each packet."""

    def __init__(self, source: Any, timeout: float = DEFAULT_TIMEOUT):
        self.container, self.name = _open_input(source, timeout)
        if not self.container.streams.video:
            self.container.close()
            raise ValueError(f"{self.name} has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame- and slice-threaded decoding
        self.fps = Fraction(self.stream.average_rate or self.stream.guessed_rate or DEFAULT_FPS)
        self.num_frames = int(self.stream.frames or 0)

    def __iter__(self) -> Iterator[tuple[int, float | None, torch.Tensor]]:
        index = 0
        try:
            for index, frame in enumerate(self.container.decode(self.stream)):
                pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                yield index, (float(frame.time) if frame.time is not None else None), pixels
        except _av().FFmpegError as exc:
            raise ValueError(f"{self.name}: decoding failed after frame {index} ({exc}); the file is damaged or "
                             "the stream broke off") from exc

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class VideoWriter:
    """H.264 video at a constant ``fps`` from RGB frames (PIL images or uint8 ``[H, W, 3]`` arrays); 4:2:0, or
    4:4:4 for odd sizes, which 4:2:0 cannot hold."""

    def __init__(self, path: str | os.PathLike, fps: Fraction, width: int, height: int):
        av = _av()
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.container = av.open(os.fspath(path), mode="w")
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p" if codec == "mpeg4" or (width % 2 == 0 and height % 2 == 0) else "yuv444p"
        if codec == "libx264":
            self.stream.options = {"crf": "18"}  # visually lossless: thin box lines and small captions stay sharp
        self.count, self._av = 0, av

    def write(self, image: Image.Image | np.ndarray) -> None:
        video_frame = self._av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
        video_frame.pts = self.count
        self.container.mux(self.stream.encode(video_frame))
        self.count += 1

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))  # flush the encoder's delayed frames
        self.container.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _detect_frames(model: torch.nn.Module, reader: VideoReader, batch_size: int, progress: bool, **kwargs: Any
                   ) -> Iterator[tuple[torch.Tensor, FrameDetections]]:
    """(frame, its detections) for every frame of ``reader``, detected ``batch_size`` frames at a time."""
    from tqdm.auto import tqdm

    from zoo.engine.predict import predict

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
    index = _webcam_index(source)
    if index is not None:
        return f"webcam{index}"
    return Path(os.fspath(source).split("?")[0].rstrip("/")).stem or "stream"


def annotate_video(model: torch.nn.Module, source: Any, out_dir: str | os.PathLike, draw_boxes: bool = True,
                   progress: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Detect objects in every frame of ``source``; write ``out_dir/<stem>.mp4`` (the frames with their
    detections drawn, same frame count and frame rate; skipped when ``draw_boxes`` is False) and
    ``out_dir/<stem>.jsonl`` (one JSON record per frame). ``kwargs`` are :func:`predict_stream`'s options
    (``timeout`` included).
    Ctrl-C ends a live stream cleanly: what was read so far is written. Returns a summary."""
    from zoo.engine.draw import draw

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = _output_stem(source)
    video_path, lines_path = out / f"{stem}.mp4", out / f"{stem}.jsonl"
    if _webcam_index(source) is None and "://" not in os.fspath(source) and \
            video_path.resolve() == Path(os.fspath(source)).resolve():
        raise ValueError(f"the annotated video would overwrite its input {source}; choose another --out folder")
    counts: Counter[str] = Counter()
    frames, writer, interrupted = 0, None, False
    batch_size = kwargs.pop("batch_size", 8)
    with VideoReader(source, kwargs.pop("timeout", DEFAULT_TIMEOUT)) as reader, open(lines_path, "w") as lines:
        try:
            for frame, det in _detect_frames(model, reader, batch_size, progress, **kwargs):
                lines.write(json.dumps(det.to_dict()) + "\n")
                counts.update(det.label_names)
                if draw_boxes:
                    if writer is None:
                        writer = VideoWriter(video_path, reader.fps, int(frame.shape[2]), int(frame.shape[1]))
                    writer.write(draw(frame, det))
                frames += 1
        except KeyboardInterrupt:  # a live stream stopped by the user: keep what was written
            interrupted = True
        finally:
            if writer is not None:
                writer.close()
    return {"source": reader.name, "frames": frames, "fps": float(reader.fps), "detections": dict(counts),
            "video": str(video_path) if writer is not None else None, "jsonl": str(lines_path),
            "interrupted": interrupted}

