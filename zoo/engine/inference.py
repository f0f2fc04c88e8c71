"""How a detector runs for inference: fused (``deploy()``), in a chosen precision, optionally compiled.

``model.predict`` runs :func:`inference_model`: a fused copy of the model, made once and remade when its weights,
dtype or device change, so that the fast path needs no extra call and the model itself stays trainable. The
command line owns its model and prepares it in place with :func:`prepare_for_inference`.
"""
from __future__ import annotations

import copy
import ctypes
import os
import sys
import warnings
import weakref
from typing import Any

import torch
from torch import nn

__all__ = ["DTYPES", "parse_dtype", "model_dtype", "cpu_has_fast", "tune_cpu_allocator", "inference_model",
           "prepare_for_inference"]

#: names accepted by ``--dtype`` and :func:`parse_dtype`
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

_fused_copies: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]]" = weakref.WeakKeyDictionary()


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"fp32"``/``"bf16"``/``"fp16"`` (or a floating torch.dtype among them) -> torch.dtype."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point weights (what its inputs must be), float32 when it has none."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def cpu_has_fast(dtype: torch.dtype) -> bool:
    """Whether oneDNN has native kernels for ``dtype`` on this CPU (float32 always; bf16/fp16 need AVX512 or AMX)."""
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return True


#: glibc ``mallopt`` settings of :func:`tune_cpu_allocator`: (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD) in bytes
ALLOCATOR_SETTINGS = {-3: 64 << 20, -1: 256 << 20}
#: the environment variable that turns :func:`tune_cpu_allocator` off
ALLOCATOR_OPT_OUT = "ZOO_CPU_ALLOCATOR"
_allocator_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Make glibc's ``malloc`` keep freed activations for the next forward pass; returns whether it is in effect.

    A forward pass on the CPU allocates and frees the same large activations on every call. glibc serves large
    blocks from fresh ``mmap`` pages (above a threshold that starts at 128 KiB) and hands freed memory at the top
    of its heap back to the kernel, so each call pays the page faults again: on small models that is a quarter of
    the time (DEIMv2 Pico at 640: 92 -> 68 ms on 2 threads). Raising ``M_MMAP_THRESHOLD`` to 64 MiB and
    ``M_TRIM_THRESHOLD`` to 256 MiB keeps them in the heap for reuse, as jemalloc and tcmalloc do by design; the
    process may then hold up to 256 MiB of freed memory.

    Done once per process by ``deploy()``, so ``predict``, ``evaluate`` and the command line run with it. A no-op
    off glibc (macOS, Windows, musl); ``ZOO_CPU_ALLOCATOR=default`` leaves ``malloc`` as it is. The process-wide
    setting is also what other libraries running in the same process get."""
    global _allocator_tuned
    if _allocator_tuned is None:
        _allocator_tuned = False
        if os.environ.get(ALLOCATOR_OPT_OUT, "").lower() != "default" and sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL("libc.so.6").mallopt
            except (OSError, AttributeError):  # not glibc
                return False
            _allocator_tuned = all(mallopt(option, value) == 1 for option, value in ALLOCATOR_SETTINGS.items())
    return _allocator_tuned


def _weights_state(model: nn.Module) -> tuple:
    """Changes whenever a weight is replaced, moved, cast or modified in place (optimizer steps, load_state_dict)."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in (*model.parameters(), *model.buffers()))


def inference_model(model: nn.Module) -> nn.Module:
    """The module that runs ``model``'s inference: ``model`` itself when it is deployed (or has no ``deploy``),
    else a fused copy (``deploy()``, outputs equal up to float rounding), cached while the weights stay the same.

    The copy costs the model's memory once more; call ``model.deploy()`` yourself to run in place instead.
    """
    if getattr(model, "deployed", False) or not hasattr(model, "deploy"):
        return model
    state = _weights_state(model)
    cached = _fused_copies.get(model)
    if cached is not None and cached[0] == state:
        return cached[1]
    fused = copy.deepcopy(model).deploy()
    _fused_copies[model] = (state, fused)
    return fused


def prepare_for_inference(model: nn.Module, dtype: str | torch.dtype = "fp32", compile: bool = False,
                          deploy: bool = True, channels_last: bool = True, **compile_kwargs: Any) -> nn.Module:
    """In place: eval mode, ``deploy()`` (fused, channels-last memory) unless ``deploy`` is False, cast to
    ``dtype``, and with ``compile`` ``torch.compile`` its forward (``compile_kwargs`` go to torch.compile).
    Returns the model."""
    dtype = parse_dtype(dtype)
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "cpu" and not cpu_has_fast(dtype):
        warnings.warn(f"this CPU has no native {dtype} kernels (AVX512-BF16/AMX/AVX512-FP16): convolutions and "
                      f"matrix products fall back to slow reference code, expect {dtype} to be slower than "
                      "float32 here", stacklevel=2)
    model.eval()
    if deploy and hasattr(model, "deploy"):
        model.deploy(channels_last=channels_last)
    model.to(dtype)
    if compile:
        model.compile(**compile_kwargs)
    return model
