"""Choosing the device a model runs on."""
from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None = None, model: torch.nn.Module | None = None) -> torch.device:
    """``device`` as a torch.device, checked to exist; None means the model's device (or CUDA when available)."""
    if device is None:
        param = next(model.parameters(), None) if model is not None else None
        if param is not None:
            return param.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}; use e.g. 'cpu', 'cuda' or 'cuda:1'") from exc
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) "
                         "are available; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available; use --device cpu")
    return dev
