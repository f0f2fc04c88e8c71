"""Export detectors to OpenVINO IR (``model.xml`` + ``model.bin``) and run them with OpenVINO.

The IR is converted with ``openvino.convert_model`` from the ONNX export (verified with onnxruntime first), then
verified itself against the eager model in the same units of float rounding (compare.py). zoo's metadata (config,
pretrained_cfg, family, ...) is kept in the IR's ``rt_info`` under ``zoo``. Inference runs on OpenVINO's CPU
plugin at float32 (``INFERENCE_PRECISION_HINT=f32``: on CPUs with bf16 or AMX units it would otherwise pick
bf16) with ``torch.get_num_threads()`` threads unless told otherwise.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["export_openvino", "OpenVinoSession", "read_openvino_metadata", "openvino_xml"]

IR_NAME = "model.xml"


def _require_openvino() -> Any:
    from zoo.extras import require

    return require("openvino", "openvino", "OpenVINO export and inference")


def openvino_xml(path: str | os.PathLike) -> Path:
    """``path`` itself when it names an ``.xml`` file, else ``path/model.xml`` (a folder written by zoo export)."""
    path = Path(path)
    return path if path.suffix.lower() == ".xml" else path / IR_NAME


def export_openvino(model: Any, path: str | os.PathLike, input_size: int | Sequence[int] | None = None,
                    dynamic_batch: bool = False, dynamic_size: bool = False, postprocess: bool = False,
                    half: bool = False, opset: int | None = None, verify: bool = True) -> Path:
    """Write ``path/model.xml`` and ``model.bin`` (``path`` a folder, created when its parent exists, or an
    ``.xml`` file path); returns the ``.xml`` path. Options as for ONNX (:func:`zoo.export.onnx.export`)."""
    from zoo.export.onnx import ExportError, export, read_metadata, resolve_detector, verify_export

    ov = _require_openvino()
    model = resolve_detector(model)
    xml = openvino_xml(path)
    if not xml.parent.parent.is_dir():
        raise FileNotFoundError(f"output folder {xml.parent.parent} does not exist; create it first")
    xml.parent.mkdir(exist_ok=True)
    architecture = model.config["architecture"]
    with tempfile.TemporaryDirectory(prefix=".zoo-openvino-", dir=xml.parent) as tmp:
        onnx_file = export(model, Path(tmp) / "model.onnx", input_size=input_size, dynamic_batch=dynamic_batch,
                           dynamic_size=dynamic_size, postprocess=postprocess, half=half, opset=opset, verify=verify)
        metadata = read_metadata(onnx_file)
        ir = ov.convert_model(os.fspath(onnx_file))
        for key, value in _encoded(metadata).items():
            ir.set_rt_info(value, ["zoo", key])
        staged = Path(tmp) / IR_NAME
        ov.save_model(ir, os.fspath(staged), compress_to_fp16=False)  # half: the ONNX graph is float16 already
        if verify:
            reference = copy.deepcopy(model).float().cpu().eval()
            for agreement, shape in verify_export(reference, staged, postprocess, half, tuple(metadata["export_size"]),
                                                  dynamic_batch, dynamic_size, session=OpenVinoSession(staged)):
                print(f"openvino vs eager {architecture} at {'x'.join(map(str, shape))}: {agreement}")
                if not agreement.ok:
                    raise ExportError(f"OpenVINO disagrees with the eager model at input {list(shape)}: "
                                      f"{agreement}; nothing was written (verify=False keeps it for inspection)")
        for name in (IR_NAME, "model.bin"):
            shutil.move(os.fspath(Path(tmp) / Path(name).name), os.fspath(xml.with_suffix(Path(name).suffix)))
    return xml


def _encoded(metadata: dict[str, Any]) -> dict[str, str]:
    import json

    return {key: json.dumps(value) for key, value in metadata.items()}


def read_openvino_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The zoo metadata kept in an IR's rt_info (config, pretrained_cfg, family, ...), JSON values decoded."""
    ov = _require_openvino()
    xml = openvino_xml(path)
    if not xml.is_file():
        raise FileNotFoundError(f"OpenVINO IR not found: {xml}")
    return _metadata(ov.Core().read_model(os.fspath(xml)), xml)


def _metadata(ir: Any, source: Any) -> dict[str, Any]:
    from zoo.export.onnx import decode_metadata

    info = ir.get_rt_info()
    zoo_info = info["zoo"] if "zoo" in info else {}
    return decode_metadata({f"zoo_{key}": value.astype(str) for key, value in zoo_info.items()}, source)


@dataclass
class _Port:
    """What onnxruntime's ``NodeArg`` says of an input: its name, shape (None for a free dimension) and type."""
    name: str
    shape: list
    type: str


class OpenVinoSession:
    """A compiled OpenVINO model with the parts of ``onnxruntime.InferenceSession``'s interface that zoo uses
    (``get_inputs``, ``run``, ``metadata``), on the CPU plugin at float32."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, device: torch.device | str | None = None):
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"the openvino backend runs on the cpu here, not {device}")
        ov = _require_openvino()
        self.path = openvino_xml(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"OpenVINO IR not found: {self.path}")
        core = ov.Core()
        ir = core.read_model(os.fspath(self.path))
        self.metadata = _metadata(ir, self.path)
        self.compiled = core.compile_model(ir, "CPU", {
            ov.properties.inference_num_threads: threads or torch.get_num_threads(),
            ov.properties.hint.inference_precision: ov.Type.f32})
        self.request = self.compiled.create_infer_request()

    def get_inputs(self) -> list[_Port]:
        ports = []
        for port in self.compiled.inputs:
            shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
            kind = "tensor(float16)" if port.get_element_type().get_type_name() == "f16" else "tensor(other)"
            ports.append(_Port(port.get_any_name(), shape, kind))
        return ports

    def run(self, names: Sequence[str] | None, feed: dict[str, Any]) -> list[Any]:
        result = self.request.infer(feed)
        outputs = {port.get_any_name(): result[port] for port in self.compiled.outputs}
        return [outputs[name].copy() for name in (names or list(outputs))]

    def get_providers(self) -> list[str]:
        return ["openvino CPU"]
