"""COCO box evaluation with pycocotools, following the official RT-DETR / DETR protocol.

Per image the model's top 300 detections over the flattened (query x class) scores are kept with no score
threshold; contiguous labels are mapped back to the dataset's category ids; ``COCOeval`` (maxDets 1/10/100)
computes the 12 standard numbers.

In a process group (``torchrun``) every rank runs its shard of the images (whole batches, see
:func:`zoo.engine.distributed.shard_range`), rank 0 gathers the detections in image order and runs ``COCOeval``
once, and every rank gets the metrics: the numbers equal a single process's exactly.

Per class (:func:`per_class_metrics`): AP, AP50 and the number of ground-truth instances, read from
``COCOeval``'s own precision array, so they average to the overall numbers; ``zoo.engine.eval_plots`` draws the
precision-recall curves and a confusion matrix from the same evaluation.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.ops import box_convert

from zoo.data.images import Preprocess, load_image
from zoo.engine import distributed
from zoo.engine.device import resolve_device
from zoo.engine.inference import inference_model
from zoo.engine.predict import run_detector

__all__ = ["evaluate", "evaluate_detections", "per_class_metrics", "format_per_class", "label_to_category_ids",
           "label_map_by_name", "EvalResult", "COCO_METRIC_NAMES"]

#: names of the 12 numbers ``COCOeval.summarize()`` prints, in its order
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                     "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")

#: detections kept per image by the official RT-DETR evaluation
TOP_K = 300


@dataclass
class EvalResult:
    """``metrics``: the 12 COCO numbers by name (-1 where the dataset has no ground truth of that kind);
    ``detections``: the COCO results list (``image_id``, ``category_id``, ``bbox`` xywh, ``score``), all of them on
    rank 0 and only the rank's own shard on the others; ``world_size``: how many processes shared the work;
    ``per_class``: ``{class name: {"AP", "AP50", "instances"}}`` (:func:`per_class_metrics`); ``evaluator``: the
    ``COCOeval`` after ``accumulate`` (rank 0 only; what the plots read)."""

    metrics: dict[str, float]
    detections: list[dict[str, Any]] = field(repr=False)
    world_size: int = 1
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    evaluator: Any = field(default=None, repr=False)


def _quiet(quiet: bool = True) -> contextlib.AbstractContextManager:
    """Silence pycocotools' prints ("loading annotations...", "DONE") unless ``quiet`` is False."""
    return contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()


def _load_coco(ann: Any, verbose: bool) -> Any:
    from pycocotools.coco import COCO

    if not isinstance(ann, (str, os.PathLike)):
        return ann  # already a COCO object
    if not Path(ann).is_file():
        raise FileNotFoundError(f"annotation file not found: {ann}")
    with _quiet(not verbose):
        try:
            coco = COCO(os.fspath(ann))
        except (json.JSONDecodeError, UnicodeDecodeError, AssertionError, KeyError, TypeError) as exc:
            raise ValueError(f"{ann} is not a COCO annotation file ({type(exc).__name__}: {exc})") from exc
    missing = [key for key in ("images", "categories", "annotations") if key not in coco.dataset]
    if missing:
        raise ValueError(f"{ann} is not a COCO detection annotation file: no {', '.join(missing)}")
    return coco


def _results_coco(coco_gt: Any, detections: Sequence[Mapping[str, Any]]) -> Any:
    """``coco_gt.loadRes(detections)``; an empty list (which loadRes cannot take) gives an empty result set."""
    from pycocotools.coco import COCO

    if detections:
        with _quiet():
            # loadRes adds keys (area, id, segmentation...) to the dicts it is given: pass copies
            return coco_gt.loadRes([dict(d, bbox=list(d["bbox"])) for d in detections])
    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]),
                     "annotations": []}
    with _quiet():
        empty.createIndex()
    return empty


def evaluate_detections(ann_file: str | os.PathLike | Any, detections: Sequence[Mapping[str, Any]] | str | os.PathLike,
                        verbose: bool = True) -> dict[str, float]:
    """Score COCO-format detections (a list, or a JSON file of one) against ``ann_file`` with ``COCOeval``.

    Prints the 12 standard numbers when ``verbose``; returns them by name (:data:`COCO_METRIC_NAMES`).
    """
    evaluator = _cocoeval(ann_file, detections, verbose)
    return {name: float(value) for name, value in zip(COCO_METRIC_NAMES, evaluator.stats)}


def _cocoeval(ann_file: str | os.PathLike | Any, detections: Sequence[Mapping[str, Any]] | str | os.PathLike,
              verbose: bool) -> Any:
    """``COCOeval`` run through evaluate, accumulate and summarize."""
    from pycocotools.cocoeval import COCOeval

    coco_gt = _load_coco(ann_file, verbose)
    if isinstance(detections, (str, os.PathLike)):
        with open(detections) as f:
            detections = json.load(f)
    if not isinstance(detections, list):
        raise TypeError(f"detections must be a list of COCO results, got {type(detections).__name__}")
    evaluator = COCOeval(coco_gt, _results_coco(coco_gt, detections), "bbox")
    with _quiet(not verbose):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def per_class_metrics(evaluator: Any) -> dict[str, dict[str, float]]:
    """``{class name: {"AP", "AP50", "instances"}}`` from an accumulated ``COCOeval``: AP averages the precision
    over IoU 0.50:0.95 and recall as ``summarize`` does (all areas, 100 detections), AP50 at IoU 0.5; -1 for a
    class without ground truth. ``instances`` counts the non-crowd ground-truth boxes of the evaluated images."""
    import numpy as np

    coco, params = evaluator.cocoGt, evaluator.params
    precision = evaluator.eval["precision"][:, :, :, params.areaRngLbl.index("all"), -1]  # [T, R, K]
    counts: dict[int, int] = {}
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=params.imgIds)):
        if not ann.get("iscrowd", 0):
            counts[ann["category_id"]] = counts.get(ann["category_id"], 0) + 1
    out = {}
    for k, cat_id in enumerate(params.catIds):
        name = coco.cats[cat_id]["name"]
        values = [precision[:, :, k], precision[0, :, k]]
        ap, ap50 = (float(np.mean(v[v > -1])) if (v > -1).any() else -1.0 for v in values)
        out[name if name not in out else f"{name} ({cat_id})"] = {"AP": ap, "AP50": ap50,
                                                                 "instances": counts.get(cat_id, 0)}
    return out


def format_per_class(per_class: Mapping[str, Mapping[str, float]]) -> str:
    """The per-class table ``zoo eval`` prints (AP and AP50 in percent; ``-`` where a class has no ground truth)."""
    width = max([len("class")] + [len(n) for n in per_class])
    lines = [f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}  {'instances':>9}"]
    for name, row in per_class.items():
        ap, ap50 = (f"{100 * row[k]:6.1f}" if row[k] >= 0 else f"{'-':>6}" for k in ("AP", "AP50"))
        lines.append(f"{name:<{width}}  {ap}  {ap50}  {row['instances']:>9d}")
    return "\n".join(lines)


def label_to_category_ids(num_classes: int, category_ids: Sequence[int],
                          label_map: Mapping[int, int] | Sequence[int] | None = None) -> list[int] | None:
    """How model labels become dataset category ids: ``label_map`` when given; contiguous labels ->
    the sorted category ids when the model has one class per category (RT-DETR on COCO: 80); None (labels
    are already category ids) when the model's classes cover every id (DETR on COCO: 91 > id 90)."""
    if label_map is not None:
        if isinstance(label_map, Mapping):
            return [int(label_map.get(i, -1)) for i in range(num_classes)]
        if len(label_map) != num_classes:
            raise ValueError(f"label_map has {len(label_map)} entries but the model predicts {num_classes} classes")
        return [int(c) for c in label_map]
    ids = sorted(int(c) for c in category_ids)
    if num_classes == len(ids):
        return ids
    if ids and num_classes > ids[-1]:
        return None
    raise ValueError(f"the model predicts {num_classes} classes but the annotations have {len(ids)} categories "
                     f"(ids {ids[:5]}{' ...' if len(ids) > 5 else ''}); pass label_map= (model label -> category id; "
                     "on the command line `zoo eval --label-map`)")


def label_map_by_name(model: torch.nn.Module, coco: Any) -> list[int] | None:
    """Model label -> category id by class name, when the model records its label names
    (``pretrained_cfg["label_names"]``), every one of them names exactly one category and they are not already the
    categories in id order; else None (the rule of :func:`label_to_category_ids` applies). So a model trained
    on ``[circle, square, triangle]`` scores a dataset that lists ``[square, triangle, circle]`` correctly."""
    names = list((getattr(model, "pretrained_cfg", None) or {}).get("label_names") or [])
    if len(names) != int(model.num_classes):
        return None
    by_name: dict[str, list[int]] = {}
    for cat_id in sorted(coco.getCatIds()):
        by_name.setdefault(coco.cats[cat_id]["name"], []).append(cat_id)
    if any(len(by_name.get(n, [])) != 1 for n in names) or len(set(names)) != len(names):
        return None
    mapping = [by_name[n][0] for n in names]
    return None if mapping == sorted(coco.getCatIds()) else mapping


class _CocoImages(Dataset):
    """Reads and resizes the images of a COCO annotation file (in DataLoader workers)."""

    def __init__(self, coco: Any, image_dir: Path, preprocess: Preprocess, ids: Sequence[int]):
        self.coco, self.image_dir, self.preprocess, self.ids = coco, image_dir, preprocess, list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[int, tuple[int, int], torch.Tensor]:
        info = self.coco.imgs[self.ids[index]]
        path = self.image_dir / info["file_name"]
        image = load_image(path, exif_transpose=False)
        size = (int(image.shape[1]), int(image.shape[2]))
        expected = (info.get("height", size[0]), info.get("width", size[1]))
        if size != tuple(expected):
            raise ValueError(f"{path} is {size[0]}x{size[1]} pixels but the annotations say "
                             f"{expected[0]}x{expected[1]}; is image_dir the right split?")
        return info["id"], size, self.preprocess.resize(image)


@torch.no_grad()
def evaluate(model: torch.nn.Module, ann_file: str | os.PathLike | Any = None, image_dir: str | os.PathLike | None = None,
             batch_size: int = 8, num_workers: int = 2, device: str | torch.device | None = None,
             input_size: int | tuple[int, int] | None = None,
             label_map: Mapping[int, int] | Sequence[int] | None = None, progress: bool = True,
             verbose: bool = True, data: str | os.PathLike | None = None, split: str = "val") -> EvalResult:
    """Run ``model`` on every image of a COCO annotation file (or a ``pycocotools`` ``COCO``) and its
    ``image_dir``, or of the ``split`` of the dataset folder ``data`` (any format of :mod:`zoo.data.formats`;
    a set with errors is refused), and score it with pycocotools.

    Model labels become category ids by ``label_map``, else by class name (:func:`label_map_by_name`), else by
    :func:`label_to_category_ids`' rule. Preprocessing comes from ``model.pretrained_cfg`` (``input_size``
    overrides the size); the model runs fused,
    as in ``predict`` (:func:`zoo.engine.inference.inference_model`). Returns an
    :class:`EvalResult` with the 12 numbers (also printed when ``verbose``) and the detections list.
    In a process group each rank evaluates its shard and all ranks return the same metrics (see module docstring).
    """
    from tqdm.auto import tqdm

    for arg, value in (("batch_size", batch_size), ("num_workers", num_workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if arg == "batch_size" else 0):
            raise ValueError(f"{arg} must be a {'positive' if arg == 'batch_size' else 'non-negative'} int, "
                             f"got {value!r}")
    if data is not None:
        if ann_file is not None or image_dir is not None:
            raise ValueError("pass data= (a dataset folder) or ann_file and image_dir, not both")
        from zoo.data.formats import load_split

        loaded = load_split(data, split)
        ann_file, image_dir = loaded.to_coco(), loaded.image_dir
    elif ann_file is None or image_dir is None:
        raise ValueError("evaluate needs ann_file and image_dir, or data= (a dataset folder)")
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image directory not found: {image_dir}")
    lead = distributed.rank() == 0
    verbose, progress = verbose and lead, progress and lead
    coco = _load_coco(ann_file, verbose)
    if label_map is None:
        label_map = label_map_by_name(model, coco)
    to_category = label_to_category_ids(int(model.num_classes), coco.getCatIds(), label_map)
    device = resolve_device(device, model)
    preprocess = Preprocess.from_model(model, input_size)
    step = batch_size if preprocess.batchable else 1
    ids = sorted(coco.getImgIds())
    shard = [ids[i] for i in distributed.shard_range(len(ids), step)]
    loader = DataLoader(_CocoImages(coco, image_dir, preprocess, shard), batch_size=step, num_workers=num_workers,
                        collate_fn=list)
    lookup = torch.tensor(to_category) if to_category is not None else None
    detections: list[dict[str, Any]] = []
    was_training = model.training
    model.to(device).eval()
    runner = inference_model(model)  # the fused copy predict runs: the same detections as predict, faster
    try:
        for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
            ids, sizes, images = zip(*batch)
            outputs = run_detector(runner, preprocess, images, sizes, device, score_threshold=0.0, top_k=TOP_K)
            for image_id, out in zip(ids, outputs):
                labels = out["labels"].cpu().long()
                categories = lookup[labels] if lookup is not None else labels
                boxes = box_convert(out["boxes"].float().cpu(), "xyxy", "xywh")
                detections.extend(
                    {"image_id": int(image_id), "category_id": c, "bbox": b, "score": s}
                    for c, b, s in zip(categories.tolist(), boxes.tolist(), out["scores"].float().cpu().tolist())
                )
    finally:
        model.train(was_training)
    parts = distributed.gather_to_rank0(detections)
    if parts is not None:  # rank 0: every shard, in rank (= image) order
        detections = [d for part in parts for d in part]
    evaluator = _cocoeval(coco, detections, verbose) if lead else None
    metrics = {n: float(v) for n, v in zip(COCO_METRIC_NAMES, evaluator.stats)} if lead else None
    per_class = per_class_metrics(evaluator) if lead else None
    metrics, per_class = distributed.broadcast_object((metrics, per_class))
    return EvalResult(metrics, detections, distributed.world_size(), per_class, evaluator)
