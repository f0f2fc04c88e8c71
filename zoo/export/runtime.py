"""Run exported detectors with onnxruntime: sessions, a cache of exports, and a module that ``predict``,
``evaluate`` and ``benchmark`` use like the eager model (``--backend onnxruntime``)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from zoo.export.onnx import decode_metadata, export, resolve_detector
from zoo.export.openvino import export_openvino
from zoo.export.session import open_session
from zoo.models.base import Detector, detections_to_pixels

__all__ = ["onnxruntime_session", "OnnxRuntimeDetector", "OpenVinoDetector", "cached_export", "onnx_path",
           "export_cache_dir",
           "model_fingerprint"]


def export_cache_dir() -> Path:
    """Where exports made for the onnxruntime backend are kept: ``$ZOO_CACHE/onnx``, else
    ``$XDG_CACHE_HOME/zoo/onnx``, else ``~/.cache/zoo/onnx``."""
    root = os.environ.get("ZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "zoo")
    return Path(root) / "onnx"


def model_fingerprint(model: nn.Module, options: dict[str, Any]) -> str:
    """sha256 of the config, preprocessing, every tensor of the state dict, the export options and the versions
    of zoo and torch: one cache entry per (model, weights, options)."""
    from zoo.version import __version__

    digest = hashlib.sha256(json.dumps({"config": model.config, "pretrained_cfg": model.pretrained_cfg,
                                        "options": options, "zoo": __version__, "torch": torch.__version__},
                                       sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cached_export(model: Any, cache_dir: str | os.PathLike | None = None, dynamic_batch: bool = True,
                  dynamic_size: bool = True, postprocess: bool = False, half: bool = False,
                  opset: int | None = None, format: str = "onnx") -> Path:
    """Export ``model`` (a detector or a model name) once and return the file, keyed by
    :func:`model_fingerprint`; later calls with the same weights and options reuse it. Exports are verified.
    ``format="openvino"``: an IR folder under ``openvino/`` beside the ONNX cache; returns its ``model.xml``."""
    model = resolve_detector(model)
    options = dict(dynamic_batch=dynamic_batch, dynamic_size=dynamic_size, postprocess=postprocess, half=half,
                   opset=opset)
    folder = Path(cache_dir) if cache_dir is not None else export_cache_dir()
    name = f"{model.config['architecture']}-{model_fingerprint(model, options)[:16]}"
    if format == "openvino":
        path = folder.parent / "openvino" / name / "model.xml"
        if not path.is_file():
            path.parent.parent.mkdir(parents=True, exist_ok=True)
            export_openvino(model, path.parent, **options, verify=True)  # moved in place when verified
        return path
    path = folder / f"{name}.onnx"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        export(model, path, **options, verify=True)  # written under a temporary name, then moved in place
    return path


def onnx_path(source: Any, **export_options: Any) -> Path:
    """``source`` itself when it is a file (a path object, an existing file or a name ending in ``.onnx``), else
    the cached export of a detector or model name."""
    if isinstance(source, os.PathLike) or (isinstance(source, str) and (source.endswith(".onnx")
                                                                        or os.path.isfile(source))):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        return path
    return cached_export(source, **export_options)


def onnxruntime_session(model: Any, providers: Sequence[Any] | None = None, threads: int | None = None,
                        device: torch.device | str | None = None, **export_options: Any) -> Any:
    """An ``onnxruntime.InferenceSession`` for an exported file, or for a detector / model name (exported once
    to the cache by :func:`cached_export` with ``export_options``).

    ``providers`` default to the CPU, or CUDA for ``device="cuda"``; ``threads`` (intra-op) defaults to
    ``torch.get_num_threads()``, so torch and onnxruntime are timed on the same number of cores.
    """
    return open_session(onnx_path(model, **export_options), providers, threads, device)


class OnnxRuntimeDetector(nn.Module):
    """A zoo export run by onnxruntime, with the eager model's inference interface (``forward`` returning
    ``pred_logits`` / ``pred_boxes``, ``postprocess``, ``pretrained_cfg``, ``num_classes``), so ``predict``,
    ``evaluate`` and ``benchmark`` take it as they take the model. Postprocessing is the family's own code.

    ``source``: an ``.onnx`` file written by :func:`zoo.export` (without ``postprocess``), or a detector or a
    model name, exported once to the cache with a dynamic batch and size.
    """

    #: what the error messages call the runtime
    runtime = "onnxruntime"

    def __init__(self, source: Any, device: torch.device | str | None = None, threads: int | None = None):
        super().__init__()
        self.path = onnx_path(source)
        self.session = onnxruntime_session(self.path, device=device, threads=threads)
        self._configure(decode_metadata(self.session.get_modelmeta().custom_metadata_map, self.path))

    def _configure(self, meta: dict[str, Any]) -> None:
        """Settings from the export's metadata and its input's type and shape."""
        if meta["postprocess"]:
            raise ValueError(f"{self.path} was exported with postprocess=True (outputs labels/boxes/scores); the "
                             f"{self.runtime} backend needs the raw graph (pred_logits, pred_boxes): export without it")
        self.family_class = _family_class(meta["family"])
        self.config, self.size_divisor = meta["config"], meta["size_divisor"]
        self.pretrained_cfg = dict(meta["pretrained_cfg"])
        pixel_values = self.session.get_inputs()[0]
        self.input_dtype = torch.float16 if pixel_values.type == "tensor(float16)" else torch.float32
        self.fixed_batch = pixel_values.shape[0] if isinstance(pixel_values.shape[0], int) else None
        height, width = pixel_values.shape[2:]
        self.fixed_size = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        if self.fixed_size:
            self._fix_size(height, width)

    def _fix_size(self, height: int, width: int) -> None:
        """A fixed-size export: preprocess to that size (stretch models), refuse aspect-keeping models."""
        if self.pretrained_cfg.get("resize_mode", "stretch") != "stretch":
            raise ValueError(f"{self.path} was exported for {height}x{width} inputs only, but "
                             f"{self.config['architecture']} keeps each image's aspect ratio; export it with "
                             "dynamic_size=True (zoo export --dynamic-size)")
        self.pretrained_cfg["input_size"] = (3, height, width)

    @property
    def num_classes(self) -> int:
        return int(self.config["model_args"]["num_classes"])

    predict = Detector.predict  # model.predict(images, ...) as for the eager model
    #: exports are made from the fused model: inference runs this object as it is (no fused copy of it)
    deployed = True

    def deploy(self, channels_last: bool = False) -> "OnnxRuntimeDetector":
        """Nothing to do: exports are made from the fused model. Returns self in eval mode."""
        return self.eval()

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.fixed_size and tuple(pixel_values.shape[2:]) != self.fixed_size:
            raise ValueError(f"{self.path} takes {self.fixed_size[0]}x{self.fixed_size[1]} inputs only, got "
                             f"{pixel_values.shape[2]}x{pixel_values.shape[3]}; export it with dynamic_size=True")
        if self.fixed_batch is not None and pixel_values.shape[0] != self.fixed_batch:
            if self.fixed_batch != 1:
                raise ValueError(f"{self.path} takes batches of exactly {self.fixed_batch}, got "
                                 f"{pixel_values.shape[0]}; export it with dynamic_batch=True")
            outs = [self.forward(x[None]) for x in pixel_values]
            return {key: torch.cat([o[key] for o in outs]) for key in outs[0]}
        feed = pixel_values.detach().to("cpu", self.input_dtype).contiguous().numpy()
        logits, boxes = self.session.run(["pred_logits", "pred_boxes"], {"pixel_values": feed})
        return {"pred_logits": torch.from_numpy(logits).to(pixel_values.device),
                "pred_boxes": torch.from_numpy(boxes).to(pixel_values.device)}

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, torch.Tensor], target_sizes: torch.Tensor, score_threshold: float = 0.0,
                    top_k: int | None = 300) -> list[dict[str, torch.Tensor]]:
        """The family's postprocessing (its class's ``select_detections``, as ``postprocess`` runs it)."""
        selected = self.family_class.select_detections({k: v.float() for k, v in outputs.items()}, top_k)
        return detections_to_pixels(*selected, target_sizes, score_threshold)

    def extra_repr(self) -> str:
        return f"path={self.path}, providers={self.session.get_providers()}"


class OpenVinoDetector(OnnxRuntimeDetector):
    """An OpenVINO IR written by ``zoo.export(..., format="openvino")`` (a folder or its ``model.xml``), or a
    detector or a model name (exported once to the cache), with the eager model's inference interface, as
    :class:`OnnxRuntimeDetector`. Runs on OpenVINO's CPU plugin at float32."""

    runtime = "openvino"

    def __init__(self, source: Any, device: torch.device | str | None = None, threads: int | None = None):
        from zoo.export.openvino import OpenVinoSession, openvino_xml

        nn.Module.__init__(self)
        is_file = isinstance(source, os.PathLike) or (isinstance(source, str) and (
            source.lower().endswith(".xml") or os.path.exists(source)))
        self.path = openvino_xml(source) if is_file else cached_export(source, format="openvino")
        self.session = OpenVinoSession(self.path, threads=threads, device=device)
        self._configure(self.session.metadata)


def _family_class(family: str) -> type:
    """The detector class registered for ``family`` (zoo.registry.register_family), whose postprocessing runs on
    the exported graph's outputs."""
    from zoo.registry import family_class

    try:
        return family_class(family)
    except KeyError as exc:
        raise ValueError(f"the export's metadata names model family {family!r}, which this zoo does not have "
                         f"({exc.args[0]}); export it again with this version of zoo") from None
