"""Export zoo detectors to ONNX, optionally with the postprocessing inside the graph, and check the file with
onnxruntime.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. The ``torch.export``-based exporter
(``dynamo=True``) was tried on the same models: it took 150 to 220 s for a tiny RT-DETR on a shared 2-core CPU
(vs 3 to 10 s) and specialised the batch dimension to the example's 1. The TorchScript exporter traces
``aten::size``, so the anchors, valid masks and sin-cos position embeddings, which the models compute from their
input's shape while tracing (:func:`zoo.layers.tracing.is_tracing`), stay functions of the input size in the
graph; ``verify`` checks this at a second size.
"""
from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from zoo.export.compare import Agreement, compare_queries

__all__ = ["export", "ExportError", "EXPORT_FORMATS", "DEFAULT_OPSET", "POSTPROCESS_TOP_K", "read_metadata"]

EXPORT_FORMATS = ("onnx", "openvino")
#: opset 17 has LayerNormalization and GridSample (16); TensorRT >= 8.6 and every recent onnxruntime read it
DEFAULT_OPSET = 17
MIN_OPSET = 16
#: detections an exported postprocess graph returns per image (the official RT-DETR deploy graphs keep 300)
POSTPROCESS_TOP_K = 300

RAW_NAMES = (["pixel_values"], ["pred_logits", "pred_boxes"])
POSTPROCESS_NAMES = (["images", "orig_target_sizes"], ["labels", "boxes", "scores"])


class ExportError(RuntimeError):
    """The model could not be exported, or onnxruntime disagrees with the eager model."""


class RawOutputs(nn.Module):
    """``pixel_values`` -> ``(pred_logits, pred_boxes)``: exactly what ``model(pixel_values)`` returns."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values)
        return out["pred_logits"], out["pred_boxes"]


class WithPostprocess(nn.Module):
    """The official deploy graph: ``(images [B, 3, H, W] RGB in [0, 1], orig_target_sizes [B, 2] int64 (w, h))``
    -> ``(labels [B, K] int64, boxes [B, K, 4] xyxy pixels, scores [B, K])``.

    The model's mean/std normalisation runs in the graph (the official scripts feed ``ToTensor()`` output), then
    the family's own :meth:`select_detections` and the scaling to the original image, as ``model.predict`` does.
    """

    def __init__(self, model: nn.Module, top_k: int = POSTPROCESS_TOP_K):
        super().__init__()
        if not callable(getattr(model, "select_detections", None)):
            raise TypeError(f"postprocess=True needs {type(model).__name__}.select_detections(outputs, top_k), the "
                            "batched part of its postprocess; export without postprocess")
        self.model, self.top_k = model, top_k
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean"), cfg.get("std")
        self.normalize = mean is not None and std is not None
        self.register_buffer("mean", torch.tensor(mean or (0.0,) * 3).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std or (1.0,) * 3).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, orig_target_sizes: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from zoo.models.base import boxes_to_pixels

        x = (images - self.mean) / self.std if self.normalize else images
        boxes, scores, labels = self.model.select_detections(self.model(x), self.top_k)
        # one (w, h) per image: zeros of length B + 1 and B_sizes + 1 (both >= 2, so neither broadcasts) are
        # added, which fails in the runtime when the batches differ, instead of pairing one size with every
        # image or one image with every size (onnxruntime turns gathers that would check it into slices)
        check = (torch.zeros(images.shape[0] + 1, 1, device=images.device)
                 + torch.zeros(orig_target_sizes.shape[0] + 1, 1, device=images.device))[1:]
        sizes = orig_target_sizes.flip(-1).to(boxes.dtype) + check.to(boxes.dtype)  # (w, h) as the official scripts
        # a size <= 0 has no pixels: that image's boxes are NaN rather than plausible numbers (docs/deploy.md)
        sizes = torch.where((sizes > 0).all(-1, keepdim=True), sizes, torch.tensor(float("nan"), dtype=boxes.dtype))
        return labels.to(torch.int64), boxes_to_pixels(boxes, sizes), scores


# --------------------------------------------------------------------------------------------------
# Checking the arguments
# --------------------------------------------------------------------------------------------------

def _check_format(format: str) -> None:
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; supported: {', '.join(EXPORT_FORMATS)}")


def resolve_detector(model: Any) -> nn.Module:
    """``model`` itself when it is a zoo detector, ``create_model(model)`` for a name; TypeError otherwise."""
    from zoo.models.base import Detector

    if isinstance(model, (str, os.PathLike)):
        from zoo.factory import create_model

        model = create_model(os.fspath(model))
    if not isinstance(model, Detector):
        raise TypeError(f"cannot export {type(model).__name__}: zoo.export takes a zoo detector "
                        "(zoo.create_model(...)) or a model name")
    return model


def _input_size(model: nn.Module, input_size: int | Sequence[int] | None) -> tuple[int, int]:
    if input_size is None:
        input_size = tuple((model.pretrained_cfg or {}).get("input_size", (3, 640, 640))[-2:])
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise ValueError(f"input_size must be a positive int or (height, width), got {input_size!r}")
    stride = int(getattr(model, "size_divisor", 1) or 1)
    if size[0] % stride or size[1] % stride:
        raise ValueError(f"input_size {size[0]}x{size[1]} is not a multiple of {model.config['architecture']}'s "
                         f"stride {stride}; use e.g. {_round_up(size[0], stride)}x{_round_up(size[1], stride)}")
    return size  # type: ignore[return-value]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _output_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output {path} is a folder; pass a file path such as {path / 'model.onnx'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist; create it first")
    return path


def _check_opset(opset: int | None) -> int:
    opset = DEFAULT_OPSET if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an int >= {MIN_OPSET} (GridSample), got {opset!r}")
    return opset


def _import_onnx() -> None:
    """ONNX export needs onnx (to write the file) and onnxruntime (to verify it): a clear error when missing."""
    from zoo.extras import require

    require("onnx", "export", "ONNX export")
    require("onnxruntime", "export", "ONNX export")


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------

def _example_inputs(model: nn.Module, postprocess: bool, batch: int, size: tuple[int, int], seed: int
                    ) -> tuple[torch.Tensor, ...]:
    """Seeded images in [0, 1] (normalised for the raw graph), and non-square original sizes (w, h)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, *size, generator=generator)
    if postprocess:
        sizes = torch.tensor([[int(size[1] * 1.5) + i, size[0] + 7 * i] for i in range(batch)], dtype=torch.int64)
        return images, sizes
    cfg = model.pretrained_cfg or {}
    if cfg.get("mean") is not None and cfg.get("std") is not None:
        images = (images - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (images,)


def _graph_module(model: nn.Module, postprocess: bool) -> nn.Module:
    return (WithPostprocess(model) if postprocess else RawOutputs(model)).eval()


def _metadata(model: nn.Module, postprocess: bool, half: bool, size: tuple[int, int]) -> dict[str, str]:
    from zoo.version import __version__

    values = {"version": __version__, "family": model.family, "config": model.config,
              "pretrained_cfg": model.pretrained_cfg, "size_divisor": int(getattr(model, "size_divisor", 1) or 1),
              "postprocess": postprocess, "postprocess_top_k": POSTPROCESS_TOP_K,
              "dtype": "float16" if half else "float32", "export_size": list(size)}
    return {f"zoo_{key}": json.dumps(value) for key, value in values.items()}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The zoo metadata stored in an exported file (config, pretrained_cfg, family, ...), JSON values decoded."""
    import onnx

    props = {p.key: p.value for p in onnx.load(os.fspath(path), load_external_data=False).metadata_props}
    return decode_metadata(props, path)


def decode_metadata(props: dict[str, str], source: Any) -> dict[str, Any]:
    """``zoo_*`` metadata properties (as onnx or ``session.get_modelmeta()`` give them) -> decoded values."""
    if "zoo_config" not in props:
        raise ValueError(f"{source} was not exported by zoo (no zoo metadata); export it with zoo.export")
    return {key[4:]: json.loads(value) for key, value in props.items() if key.startswith("zoo_")}


def _torch_export(graph: nn.Module, inputs: tuple[torch.Tensor, ...], postprocess: bool, dynamic_batch: bool,
                  dynamic_size: bool, opset: int, architecture: str) -> bytes:
    """The serialised ONNX model (in memory: zoo's largest detectors are far below protobuf's 2 GB limit)."""
    input_names, output_names = POSTPROCESS_NAMES if postprocess else RAW_NAMES
    axes: dict[int, str] = {}
    if dynamic_batch:
        axes[0] = "batch"
    if dynamic_size:
        axes.update({2: "height", 3: "width"})
    dynamic_axes = {input_names[0]: axes} if axes else None
    if dynamic_batch:
        dynamic_axes.update({name: {0: "batch"} for name in [*input_names[1:], *output_names]})
    with warnings.catch_warnings(), torch.no_grad():
        # shape checks in forward() trace as constants (expected); the legacy-exporter notice is deliberate
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.onnx")  # its own internals
        buffer = io.BytesIO()
        try:
            torch.onnx.export(graph, inputs, buffer, dynamo=False, opset_version=opset,
                              input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
        except Exception as exc:  # the exporters raise many types; one clear error for the caller
            raise ExportError(f"cannot export {architecture} to ONNX (opset {opset}): {type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    return buffer.getvalue()


def _write(serialised: bytes, path: Path, metadata: dict[str, str]) -> None:
    """Add zoo's metadata, check the model and write it."""
    import onnx

    proto = onnx.load_from_string(serialised)
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    onnx.save(proto, os.fspath(path))


def export(model: Any, path: str | os.PathLike, format: str = "onnx", input_size: int | Sequence[int] | None = None,
           dynamic_batch: bool = False, dynamic_size: bool = False, postprocess: bool = False, half: bool = False,
           opset: int | None = None, verify: bool = True) -> Path:
    """Export a detector (or a model name ``create_model`` takes) to ``path``; returns the path.

    The graph takes ``pixel_values [B, 3, H, W]`` (preprocessed as ``model.pretrained_cfg`` says) and returns
    ``pred_logits [B, Q, C]`` and ``pred_boxes [B, Q, 4]``, exactly what ``model(pixel_values)`` returns.
    ``postprocess=True`` gives the official deploy graph instead (see :class:`WithPostprocess`).
    ``input_size``: (height, width) or one int, a multiple of the model's stride (default: its pretrained_cfg).
    ``dynamic_batch`` / ``dynamic_size``: the batch size / height and width become free dimensions.
    ``half``: float16 weights, inputs and outputs. ``opset``: the ONNX opset (default 17).
    The model is exported on the CPU from a fused float32 copy (``deploy()``); the caller's model is not changed.
    ``verify``: run the file with onnxruntime (at a second size and batch when those are dynamic), print the
    agreement with the eager model, and raise :class:`ExportError` on a mismatch. The file is written to a
    temporary name and moved into place only when everything succeeded.
    ``zoo.export(..., int8=True, calibration=...)`` (zoo/export/api.py) quantizes the verified graph to int8.
    ``zoo.export(..., format="openvino")`` (zoo/export/api.py) writes OpenVINO IR instead.
    """
    _check_format(format)
    if format != "onnx":
        raise ValueError(f"zoo.export.onnx.export writes ONNX; zoo.export(..., format={format!r}) writes {format}")
    model = resolve_detector(model)
    path = _output_path(path)
    size = _input_size(model, input_size)
    opset = _check_opset(opset)
    _import_onnx()
    architecture = model.config["architecture"]
    # a float32 CPU copy in eval mode is the reference; the graph is traced from a fused copy of it
    reference = copy.deepcopy(model).float().cpu().eval()
    graph = _graph_module(copy.deepcopy(reference).deploy(), postprocess)
    if half:
        graph = graph.half()
    inputs = _example_inputs(model, postprocess, 1, size, seed=0)
    traced_inputs = tuple(t.half() if t.is_floating_point() and half else t for t in inputs)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        serialised = _torch_export(graph, traced_inputs, postprocess, dynamic_batch, dynamic_size, opset, architecture)
        _write(serialised, tmp, _metadata(model, postprocess, half, size))
        if verify:
            for agreement, shape in verify_export(reference, tmp, postprocess, half, size, dynamic_batch,
                                                  dynamic_size):
                print(f"onnxruntime vs eager {architecture} at {'x'.join(map(str, shape))}: {agreement}")
                if not agreement.ok:
                    raise ExportError(f"onnxruntime disagrees with the eager model at input {list(shape)}: "
                                      f"{agreement}; the export was removed (verify=False keeps it for inspection)")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# --------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------

def _verify_shapes(size: tuple[int, int], step: int, dynamic_batch: bool, dynamic_size: bool
                   ) -> list[tuple[int, tuple[int, int]]]:
    """The export's own batch and size, then another batch and a non-square other size when they are free."""
    shapes = [(1, size)]
    if dynamic_batch or dynamic_size:
        other = (size[0] + step, size[1] + 2 * step) if dynamic_size else size
        shapes.append((2 if dynamic_batch else 1, other))
    return shapes


def verify_export(model: nn.Module, path: str | os.PathLike, postprocess: bool, half: bool, size: tuple[int, int],
                  dynamic_batch: bool = False, dynamic_size: bool = False, session: Any = None
                  ) -> list[tuple[Agreement, tuple[int, ...]]]:
    """Run ``path`` with onnxruntime and compare with the eager ``model`` (float32, on the CPU), per query, in
    units of float rounding (see compare.py); returns an :class:`Agreement` and the input shape for each shape
    tried. ``session``: another runtime's session with onnxruntime's ``get_inputs`` / ``run`` (OpenVINO).

    A shape whose first input disagrees is tried once more with other random images, and the second result is
    the one returned: two candidates within rounding of each other at the edge of RT-DETR's top-k query selection
    can come out either way, which changes one input's queries, while a wrong graph disagrees on every input.
    A float32 comparison beyond the fixed bound is judged against the model's own float32 rounding, measured on
    the same inputs against a float64 copy: the graph may be at most twice as far from eager as that.
    """
    from zoo.export.session import open_session

    session = session or open_session(path)
    graph = _graph_module(model, postprocess)
    step = max(int(getattr(model, "size_divisor", 1) or 1), 32)
    results = []
    was_training = model.training
    try:
        for i, (batch, shape) in enumerate(_verify_shapes(size, step, dynamic_batch, dynamic_size)):
            agreement = _verify_once(graph, session, postprocess, half, batch, shape, seed=i)
            if not agreement.ok:
                print(f"exported vs eager at {batch}x3x{shape[0]}x{shape[1]}: {agreement}; trying other images")
                agreement = _verify_once(graph, session, postprocess, half, batch, shape, seed=1000 + i)
            results.append((agreement, (batch, 3, *shape)))
    finally:
        model.train(was_training)
    return results


def _verify_once(graph: nn.Module, session: Any, postprocess: bool, half: bool, batch: int, shape: tuple[int, int],
                 seed: int) -> Agreement:
    from zoo.export.compare import EPS, TOLERANCE_UNITS
    from zoo.layers.topk import record_rounding_ties

    dtype = "float16" if half else "float32"
    inputs = _example_inputs(graph.model, postprocess, batch, shape, seed=seed)
    # top-k selections within rounding of the k-th score: that many queries may come out otherwise
    with torch.no_grad(), record_rounding_ties(TOLERANCE_UNITS[dtype] * EPS[dtype]) as ties:
        expected = graph(*inputs)
    feed = {arg.name: (t.half() if half and t.is_floating_point() else t).numpy()
            for arg, t in zip(session.get_inputs(), inputs)}
    try:
        got = [torch.from_numpy(a) for a in session.run(None, feed)]
    except Exception as exc:  # onnxruntime's own error types; e.g. a size baked into the graph
        raise ExportError(f"the runtime cannot run the export at input {list(inputs[0].shape)}: "
                          f"{str(exc).strip().splitlines()[0]}") from exc
    names = (POSTPROCESS_NAMES if postprocess else RAW_NAMES)[1]

    def compare(reference: Sequence[torch.Tensor], candidate: Sequence[torch.Tensor], tolerance: float | None = None
                ) -> Agreement:
        reference, candidate = dict(zip(names, reference)), dict(zip(names, candidate))
        if postprocess:  # compare boxes relative to the image size, like the raw outputs
            scale = inputs[1].repeat(1, 2)[:, None].to(torch.float64)
            reference["boxes"] = reference["boxes"].double() / scale
            candidate["boxes"] = candidate["boxes"].double() / scale
        return compare_queries(reference, candidate, dtype, names, tolerance, allowed=sum(ties))

    agreement = compare(expected, got)
    if agreement.ok or half:
        return agreement
    # Some models amplify float32 rounding more than the fixed bound assumes (D-FINE's distribution refinement:
    # ~300 units on random weights). Measure this model's own float32 rounding on these inputs against a float64
    # copy: a graph that is no further from eager than eager float32 is from float64 only differs by rounding.
    with torch.no_grad():
        exact = copy.deepcopy(graph).double()(*(t.double() if t.is_floating_point() else t for t in inputs))
    own = compare(exact, expected, tolerance=float("inf")).worst_query
    if 2 * own <= TOLERANCE_UNITS[dtype]:
        return agreement
    return compare(expected, got, tolerance=2 * own)
