"""Whether the model is being traced or exported rather than run eagerly.

Shape-dependent constants (anchors, position embeddings) are cached per input size in eager mode; while tracing
they must instead be computed from the input's shape inside the graph, so that an exported graph serves every
input size (and no traced placeholder tensor leaks into a cache).
"""
from __future__ import annotations

import torch

__all__ = ["is_tracing"]


def is_tracing() -> bool:
    """True under ``torch.jit.trace`` / ``torch.onnx.export`` (either exporter) and ``torch.compile``."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
