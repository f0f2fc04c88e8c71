"""Export detectors for deployment (ONNX, OpenVINO IR) and run the exports (onnxruntime, OpenVINO).

``zoo.export`` is this module and is also callable: ``zoo.export(model, "model.onnx", ...)`` is
:func:`zoo.export.api.export`, while ``zoo.export.onnxruntime_session`` and the rest stay reachable.
"""
from __future__ import annotations

import sys
import types
from typing import Any

from zoo.export.compare import Agreement, compare_queries
from zoo.export.api import export
from zoo.export.onnx import EXPORT_FORMATS, ExportError, read_metadata
from zoo.export.runtime import (OnnxRuntimeDetector, OpenVinoDetector, cached_export, export_cache_dir,
                                onnxruntime_session)

__all__ = ["export", "ExportError", "EXPORT_FORMATS", "read_metadata", "onnxruntime_session", "OnnxRuntimeDetector",
           "OpenVinoDetector",
           "cached_export", "export_cache_dir", "Agreement", "compare_queries"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
