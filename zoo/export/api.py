"""``zoo.export(model, path, format=...)``: one entry point for every export format."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from zoo.export.onnx import _check_format
from zoo.export.onnx import export as export_onnx
from zoo.export.openvino import export_openvino
from zoo.export.quantize import check_int8_options, export_int8

__all__ = ["export"]


def export(model: Any, path: str | os.PathLike, format: str = "onnx", input_size: int | Sequence[int] | None = None,
           dynamic_batch: bool = False, dynamic_size: bool = False, postprocess: bool = False, half: bool = False,
           opset: int | None = None, verify: bool = True, int8: bool = False,
           calibration: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
           calibration_count: int | None = None) -> Path:
    """``format="onnx"``: :func:`zoo.export.onnx.export` (a verified ``.onnx`` file); ``format="openvino"``:
    :func:`zoo.export.openvino.export_openvino` (``path`` a folder receiving ``model.xml`` and ``model.bin``;
    returns the ``.xml`` path). The options are the same for both, but for ``int8``: static int8 quantization of
    the verified float32 ONNX graph, calibrated on ``calibration`` (a folder of images or a list of files; the first
    ``calibration_count``, default 64), see :func:`zoo.export.quantize.export_int8` (ONNX only)."""
    _check_format(format)
    if format == "openvino":
        if int8 or calibration is not None or calibration_count is not None:
            raise ValueError("int8 quantization is for format='onnx' (onnxruntime); export OpenVINO in float32")
        return export_openvino(model, path, input_size=input_size, dynamic_batch=dynamic_batch,
                               dynamic_size=dynamic_size, postprocess=postprocess, half=half, opset=opset,
                               verify=verify)
    files = check_int8_options(int8, calibration, calibration_count, half, postprocess)
    if int8:
        return export_int8(model, path, files, input_size=input_size, dynamic_batch=dynamic_batch,
                           dynamic_size=dynamic_size, opset=opset, verify=verify)
    return export_onnx(model, path, input_size=input_size, dynamic_batch=dynamic_batch, dynamic_size=dynamic_size,
                       postprocess=postprocess, half=half, opset=opset, verify=verify)
