"""``zoo.export(model, path, format=...)``: one entry point for every export format."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from zoo.export.onnx import _check_format
from zoo.export.onnx import export as export_onnx
from zoo.export.openvino import export_openvino

__all__ = ["export"]


def export(model: Any, path: str | os.PathLike, format: str = "onnx", input_size: int | Sequence[int] | None = None,
           dynamic_batch: bool = False, dynamic_size: bool = False, postprocess: bool = False, half: bool = False,
           opset: int | None = None, verify: bool = True) -> Path:
    """``format="onnx"``: :func:`zoo.export.onnx.export` (a verified ``.onnx`` file); ``format="openvino"``:
    :func:`zoo.export.openvino.export_openvino` (``path`` a folder receiving ``model.xml`` and ``model.bin``;
    returns the ``.xml`` path). The options are the same for both."""
    _check_format(format)
    write = export_openvino if format == "openvino" else export_onnx
    return write(model, path, input_size=input_size, dynamic_batch=dynamic_batch, dynamic_size=dynamic_size,
                 postprocess=postprocess, half=half, opset=opset, verify=verify)
