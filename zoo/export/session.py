"""onnxruntime sessions: providers for a device, intra-op threads matched to torch's."""
from __future__ import annotations

import os
from typing import Any, Sequence

import torch

__all__ = ["open_session"]


def _providers(device: torch.device | str | None) -> list[str]:
    import onnxruntime as ort

    if device is None or torch.device(device).type == "cpu":
        return ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(f"device {device} asked for, but this onnxruntime has no CUDA provider "
                             f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu "
                             "or use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"the onnxruntime backend runs on cpu or cuda, not {device}")


def open_session(path: str | os.PathLike, providers: Sequence[Any] | None = None, threads: int | None = None,
                 device: torch.device | str | None = None) -> Any:
    """``onnxruntime.InferenceSession`` for ``path``: ``providers`` default to the CPU, or CUDA for
    ``device="cuda"``; ``threads`` (intra-op) defaults to ``torch.get_num_threads()``."""
    from zoo.extras import require

    ort = require("onnxruntime", "export", "running exports")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only: float16 graphs log a warning per node it cannot constant-fold
    # no busy-waiting between runs: onnxruntime's threads otherwise spin after each run and take the cores from the
    # torch work that follows (pre/postprocessing, or another model: transformers deimv2_n 124 ms alone, 153 ms
    # right after a spinning session, 126 ms after one that does not spin; the session itself 76 vs 73 ms)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(os.fspath(path), options, providers=list(providers or _providers(device)))
