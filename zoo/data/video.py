"""Videos and live streams (files, webcam indices, RTSP/HTTP URLs) through PyAV, the ``video`` extra: which
sources are videos, decoding them frame by frame (:class:`VideoReader`) and writing H.264 (:class:`VideoWriter`).
Detecting objects in them is zoo.engine.video's.
"""
from __future__ import annotations

import os
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image

__all__ = ["VIDEO_SUFFIXES", "VideoReader", "VideoWriter", "is_video_source", "webcam_index"]

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
DEFAULT_FPS = Fraction(30)  # for live sources that do not report a frame rate
DEFAULT_TIMEOUT = 30.0  # seconds a stream or camera may take to answer (open) and between packets (read)


def webcam_index(source: Any) -> int | None:
    """The webcam index of ``source`` (``0`` or ``"0"`` when no such file exists), else None."""
    if isinstance(source, int) and not isinstance(source, bool):
        return source
    if isinstance(source, str) and source.isdigit() and not os.path.exists(source):
        return int(source)
    return None


def is_video_source(source: Any) -> bool:
    """A video file (by suffix), a webcam index (``0`` or ``"0"``) or a stream URL (rtsp://, http://, ...)."""
    if webcam_index(source) is not None:
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
    index = webcam_index(source)
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
