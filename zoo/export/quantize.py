"""Post-training static int8 quantization of a zoo ONNX export (onnxruntime ``quantize_static``).

Format: QDQ (QuantizeLinear / DequantizeLinear pairs around the quantized nodes, which onnxruntime fuses into
int8 kernels), weights signed int8 per output channel, activations unsigned int8 per tensor with ranges
calibrated (min/max) on images run through the model's own preprocessing (:class:`zoo.data.images.Preprocess`).
Unsigned activations times signed weights (u8s8) is the product x86 int8 instructions compute (VPMADDUBSW,
VNNI's VPDPBUSD); with signed activations (s8s8) onnxruntime was slower than float32 on an AVX2 CPU
(rtdetr_r18vd at 640x640, 2 threads, two runs on a busy machine: s8s8 1568 / 4600 ms, fp32 1385 / 3615 ms, u8s8
1196 / 3273 ms) and the demo's AP was 62.7 with s8s8, 63.2 with u8s8 (63.3 in float32).

Only convolutions and matrix products (``Conv``, ``MatMul``, ``Gemm``) are quantized, and not all of them. What
stays float is computed from the graph, not from layer names (:func:`int8_exclusions`), so every family with
the RT-DETR query selection is treated alike:

- ``query-dependent``: every node downstream of a ``TopK`` (the query selection): the gathered queries, the
  decoder layers, their sampling offsets and attention weights, the box regression and score heads. A query
  selection that flips, or a box moved by a quantization step, is a lost detection.
- ``selection``: nodes that feed a ``TopK`` but not the values the deformable attention samples (the encoder
  output projection and the score head that rank the anchors).
- ``sampled values``: the projections whose output ``GridSample`` samples (deformable attention's value
  projection), so that the sampling reads float values.
- ``activation x activation``: matrix products without a constant operand (attention scores and the
  softmax-weighted sums): no weights to quantize, and the softmax output stays float.
- ``shares an input with a float node``: onnxruntime quantizes a tensor once for all its readers, so a product
  that reads the same tensor as a float node stays float too (LW-DETR's encoder box head, beside its score head).

Sigmoid, Softmax, GridSample, TopK and the gathers are never quantized (only Conv/MatMul/Gemm are candidates).
An int8 graph differs from float by far more than rounding, so it is not verified against the float bound of
compare.py: :func:`detection_agreement` scores its detections against the float32 eager model's by COCO AP.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

__all__ = ["QUANTIZED_OPS", "int8_exclusions", "calibration_images", "quantize_int8", "detection_agreement",
           "check_int8_options", "export_int8", "DEFAULT_CALIBRATION_COUNT"]

#: the operator types int8 quantization may touch
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
#: operators whose output depends on their input's shape only
SHAPE_OPS = ("Shape", "Size")
#: images used for calibration when no count is given
DEFAULT_CALIBRATION_COUNT = 64


def _graph_index(graph: Any) -> tuple[dict[str, Any], dict[str, list[Any]], set[str]]:
    """(producer of each tensor, consumers of each tensor, names of constant tensors)."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    return producer, consumers, constants


def _reach(starts: Sequence[Any], step: Any, stop: Any = None) -> set[str]:
    """Names of the nodes reachable from ``starts`` (included) along ``step(node) -> nodes``; the walk does not
    continue past a node for which ``stop(node)`` is true (it is still included)."""
    seen: set[str] = set()
    stack = list(starts)
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if stop is None or not stop(node):
            stack.extend(step(node))
    return seen


def int8_exclusions(model: Any) -> dict[str, list[str]]:
    """The ``Conv`` / ``MatMul`` / ``Gemm`` nodes of an ONNX model (a ``ModelProto``) that stay float, by reason
    (see the module docstring); every other node of those types is quantized."""
    graph = model.graph
    producer, consumers, constants = _graph_index(graph)
    down = lambda node: [c for out in node.output for c in consumers.get(out, [])]  # noqa: E731
    # values flow up to a Shape / Size node but not through it: with a dynamic size, shapes computed from one
    # branch feed reshapes of another without carrying its values
    up = lambda node: ([] if node.op_type in SHAPE_OPS  # noqa: E731
                       else [producer[i] for i in node.input if i in producer])
    candidate = lambda node: node.op_type in QUANTIZED_OPS  # noqa: E731
    topk = [n for n in graph.node if n.op_type == "TopK"]
    samplers = [n for n in graph.node if n.op_type == "GridSample"]
    sampled = [producer[n.input[0]] for n in samplers if n.input[0] in producer]
    after_selection = _reach(topk, down)
    if samplers:
        feeds_selection = _reach(topk, up) - _reach(sampled, up)
    else:  # no deformable sampling: the products whose output reaches a TopK directly (the score heads)
        feeds_selection = _reach([p for n in topk for p in up(n)], up, stop=candidate)
    # the last products before each GridSample's value input, walking up through reshapes and splits only
    value_projections = _reach(sampled, up, stop=candidate)
    reasons: dict[str, list[str]] = {"query-dependent": [], "selection": [], "sampled values": [],
                                     "activation x activation": []}
    for node in graph.node:
        if not candidate(node):
            continue
        if node.name in after_selection:
            reasons["query-dependent"].append(node.name)
        elif node.name in feeds_selection:
            reasons["selection"].append(node.name)
        elif node.name in value_projections:
            reasons["sampled values"].append(node.name)
        elif len(node.input) < 2 or node.input[1] not in constants:
            reasons["activation x activation"].append(node.name)
    # onnxruntime puts one QuantizeLinear / DequantizeLinear pair on a tensor for all its readers, so a float node
    # that shares its input with a quantized one would read the dequantized copy: keep such neighbours float too
    # (LW-DETR's encoder box head beside its score head)
    reasons["shares an input with a float node"] = []
    kept = {name for names in reasons.values() for name in names}
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if not candidate(node) or node.name in kept:
                continue
            if any(c.name in kept for i in node.input if i not in constants for c in consumers.get(i, [])):
                reasons["shares an input with a float node"].append(node.name)
                kept.add(node.name)
                changed = True
    return reasons


def calibration_images(source: str | os.PathLike | Sequence[str | os.PathLike], count: int | None = None
                       ) -> list[Path]:
    """Image files for calibration: the first ``count`` (default :data:`DEFAULT_CALIBRATION_COUNT`) image files
    under a folder (searched recursively, sorted by path), or the given list of files."""
    from zoo.data.formats.base import IMAGE_SUFFIXES

    count = DEFAULT_CALIBRATION_COUNT if count is None else count
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"calibration_count must be a positive int, got {count!r}")
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise FileNotFoundError(f"calibration folder {folder} does not exist; pass a folder of images that "
                                    "look like the deployment data (a few dozen are enough)")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under calibration folder {folder}")
    else:
        files = [Path(p) for p in source]
        missing = [str(p) for p in files if not p.is_file()]
        if not files or missing:
            raise FileNotFoundError(f"calibration images not found: {', '.join(missing) or 'the list is empty'}")
    return files[:count]


def _feeds(preprocess: Any, files: Sequence[Path]) -> Iterator[dict[str, Any]]:
    """One ``pixel_values`` feed per image, preprocessed as the model's ``pretrained_cfg`` says."""
    for path in files:
        image, _ = preprocess.load(path)
        yield {"pixel_values": preprocess.collate([image])[0].numpy()}


def quantize_int8(source: str | os.PathLike, target: str | os.PathLike, preprocess: Any, files: Sequence[Path]
                  ) -> dict[str, list[str]]:
    """Write the static int8 (QDQ, per-channel weights) version of the float ONNX file ``source`` to ``target``,
    calibrated on ``files`` (preprocessed by ``preprocess``); returns what was kept float, by reason."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = _feeds(preprocess, files)

        def get_next(self) -> dict[str, Any] | None:
            return next(self.feeds, None)

    model = onnx.load(os.fspath(source))
    exclusions = int8_exclusions(model)
    excluded = sorted(name for names in exclusions.values() for name in names)
    quantizer_log = logging.getLogger()  # quantize_static logs "consider pre-processing" on the root logger
    level = quantizer_log.level
    quantizer_log.setLevel(logging.ERROR)
    try:
        quantize_static(model, os.fspath(target), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=excluded, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        quantizer_log.setLevel(level)
    return exclusions


def check_int8_options(int8: bool, calibration: Any, count: int | None, half: bool, postprocess: bool) -> list[Path]:
    """The calibration image files for ``int8``; a clear error for options that do not go together."""
    if not int8:
        if calibration is not None or count is not None:
            raise ValueError("calibration images are for int8 quantization: pass int8=True (zoo export --int8) "
                             "or drop the calibration")
        return []
    if half:
        raise ValueError("int8=True quantizes the float32 graph; drop half=True (--half)")
    if postprocess:
        raise ValueError("int8=True quantizes the raw graph (pixel_values -> pred_logits, pred_boxes); drop "
                         "postprocess=True (--postprocess)")
    if calibration is None:
        raise ValueError("int8=True needs calibration images: calibration=FOLDER (zoo export --int8 --calibration "
                         "DIR), a few dozen images like the deployment data")
    return calibration_images(calibration, count)


def export_int8(model: Any, path: str | os.PathLike, files: Sequence[Path], input_size: Any = None,
                dynamic_batch: bool = False, dynamic_size: bool = False, opset: int | None = None,
                verify: bool = True) -> Path:
    """``zoo.export(..., int8=True)``: export and verify the float32 graph (:func:`zoo.export.onnx.export`) under a
    temporary name beside ``path``, quantize it (:func:`quantize_int8`, calibrated on ``files``), and write
    ``path`` with the float32 file's metadata plus ``zoo_dtype`` "int8" and ``zoo_int8`` (the nodes kept float,
    by rule). ``verify`` also prints the int8 graph's detection AP against eager float32
    (:func:`detection_agreement`) on up to 8 of the calibration images."""
    import onnx

    from zoo.data.images import Preprocess
    from zoo.export.onnx import _output_path, export, read_metadata, resolve_detector

    model = resolve_detector(model)
    path = _output_path(path)
    architecture = model.config["architecture"]
    fp32 = path.with_name(f".{path.stem}.{os.getpid()}.fp32{path.suffix}")
    staged = path.with_name(f".{path.stem}.{os.getpid()}.int8{path.suffix}")
    try:
        export(model, fp32, input_size=input_size, dynamic_batch=dynamic_batch, dynamic_size=dynamic_size,
               opset=opset, verify=verify)
        metadata = read_metadata(fp32)
        reference = copy.deepcopy(model).float().cpu().eval()
        # calibration images are stretched to the export size (a fixed-size graph takes nothing else; the
        # activation ranges do not depend on the aspect ratio being kept)
        preprocess = dataclasses.replace(Preprocess.from_model(reference), resize_mode="stretch",
                                         size=tuple(metadata["export_size"]))
        exclusions = quantize_int8(fp32, staged, preprocess, files)
        proto = onnx.load(os.fspath(staged))
        props = {p.key: p.value for p in onnx.load(os.fspath(fp32), load_external_data=False).metadata_props}
        props.update(zoo_dtype=json.dumps("int8"), zoo_int8=json.dumps({
            "calibration_images": len(files), "quantized_ops": list(QUANTIZED_OPS), "kept_float": exclusions}))
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, props)
        onnx.save(proto, os.fspath(staged))
        kept = ", ".join(f"{len(names)} {reason}" for reason, names in exclusions.items() if names)
        print(f"int8 {architecture}: {sum(n.op_type == 'DequantizeLinear' for n in proto.graph.node)} "
              f"dequantize nodes, calibrated on {len(files)} images; kept float: {kept or 'nothing'}")
        if verify:
            _print_agreement(reference, staged, files[:8])
        os.replace(staged, path)
    finally:
        for temporary in (fp32, staged):
            if temporary.exists():
                temporary.unlink()
    return path


def _print_agreement(reference: torch.nn.Module, path: Path, files: Sequence[Path]) -> None:
    from zoo.export.runtime import OnnxRuntimeDetector

    try:
        detector = OnnxRuntimeDetector(path)
    except ValueError as exc:  # e.g. a fixed-size export of a model that keeps the aspect ratio
        ap, why = None, f"not measured: {exc}"
    else:
        ap = detection_agreement(reference, detector, files)
        why = "not measured: eager float32 finds nothing with score >= 0.5 on the calibration images"
    print(f"int8 vs eager float32 {reference.config['architecture']}: " + (
        f"detection AP {ap:.1f} on {len(files)} calibration images, eager's detections with score >= 0.5 as "
        "ground truth (an int8 graph is not within float rounding; check the AP on labelled data with zoo eval)"
        if ap is not None else why))


def detection_agreement(reference: torch.nn.Module, detector: torch.nn.Module, files: Sequence[Path],
                        score_threshold: float = 0.5) -> float | None:
    """COCO AP (0-100) of ``detector``'s detections on ``files``, taking the ``reference`` model's detections with
    score >= ``score_threshold`` as the ground truth; None when the reference finds nothing that confident."""
    from pycocotools.coco import COCO

    from zoo.engine.evaluate import evaluate_detections

    names = [str(p) for p in files]
    truth = reference.predict(names, score_threshold=score_threshold, top_k=100)
    found = detector.predict(names, score_threshold=0.0, top_k=100)
    images, annotations, results = [], [], []
    for i, (t, f) in enumerate(zip(truth, found)):
        images.append({"id": i, "height": t.image_size[0], "width": t.image_size[1]})
        for box, label in zip(t.boxes.tolist(), t.labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label, "iscrowd": 0,
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                "area": (box[2] - box[0]) * (box[3] - box[1])})
        results += [{"image_id": i, "category_id": label, "score": score,
                     "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}
                    for box, label, score in zip(f.boxes.tolist(), f.labels.tolist(), f.scores.tolist())]
    if not annotations:
        return None
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c} for c in range(int(reference.num_classes))]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return 100 * evaluate_detections(coco, results, verbose=False)["AP"]
