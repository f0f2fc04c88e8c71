"""Plots that explain an evaluation: precision-recall curves per class (IoU 0.5, from ``COCOeval``'s own
precision array) and a confusion matrix (IoU 0.5, at a score threshold, with a background row and column).
matplotlib is the optional extra ``plots`` (``pip install 'zoo[plots]'``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torchvision.ops import box_convert, box_iou

__all__ = ["confusion_matrix", "plot_pr_curves", "plot_confusion_matrix", "write_eval_plots"]


def _figure(purpose: str) -> Any:
    from zoo.extras import require

    return require("matplotlib.figure", "plots", purpose, package="matplotlib").Figure


def confusion_matrix(coco_gt: Any, detections: Sequence[Mapping[str, Any]], score_threshold: float = 0.5,
                     iou_threshold: float = 0.5) -> tuple[np.ndarray, list[str]]:
    """``[C + 1, C + 1]`` counts, rows the true class, columns the predicted class, the last row and column
    "background": per image the detections scoring at least ``score_threshold`` are matched, highest score first,
    to the unmatched ground-truth box they overlap most (IoU >= ``iou_threshold``, any class); a match counts at
    (true, predicted), an unmatched detection at (background, predicted) and a missed box at (true, background).
    Detections matching a crowd (VOC difficult) box are not counted. Returns the matrix and the class names."""
    cat_ids = sorted(coco_gt.getCatIds())
    index = {c: k for k, c in enumerate(cat_ids)}
    bg = len(cat_ids)
    matrix = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    by_image: dict[int, list[Mapping[str, Any]]] = {}
    for d in detections:
        if d["score"] >= score_threshold and d["category_id"] in index:
            by_image.setdefault(d["image_id"], []).append(d)
    for image_id in coco_gt.getImgIds():
        gts = coco_gt.imgToAnns.get(image_id, [])
        dets = sorted(by_image.get(image_id, []), key=lambda d: -d["score"])
        gt_boxes = box_convert(torch.tensor([g["bbox"] for g in gts], dtype=torch.float64).reshape(-1, 4),
                               "xywh", "xyxy")
        det_boxes = box_convert(torch.tensor([d["bbox"] for d in dets], dtype=torch.float64).reshape(-1, 4),
                                "xywh", "xyxy")
        iou = box_iou(det_boxes, gt_boxes).numpy()
        crowd = np.array([bool(g.get("iscrowd", 0)) for g in gts], dtype=bool)
        taken = np.zeros(len(gts), dtype=bool)
        for i, d in enumerate(dets):
            overlap = np.where(taken | crowd, -1.0, iou[i]) if len(gts) else np.zeros(0)
            j = int(overlap.argmax()) if len(gts) else -1
            if j >= 0 and overlap[j] >= iou_threshold:
                taken[j] = True
                matrix[index[gts[j]["category_id"]], index[d["category_id"]]] += 1
            elif len(gts) and crowd.any() and iou[i][crowd].max() >= iou_threshold:
                continue  # on an ignored box
            else:
                matrix[bg, index[d["category_id"]]] += 1
        for j in np.flatnonzero(~taken & ~crowd):
            matrix[index[gts[j]["category_id"]], bg] += 1
    return matrix, [coco_gt.cats[c]["name"] for c in cat_ids]


def plot_pr_curves(evaluator: Any, path: str | os.PathLike) -> Path:
    """Precision against recall at IoU 0.5 for every class (all areas, 100 detections per image), AP50 in the
    legend, as ``COCOeval.accumulate`` interpolates it."""
    figure_cls = _figure("pr_curve.png")
    params = evaluator.params
    precision = evaluator.eval["precision"][0, :, :, params.areaRngLbl.index("all"), -1]  # [R, K]
    fig = figure_cls(figsize=(7, 5.5), dpi=110)
    ax = fig.add_subplot()
    for k, cat_id in enumerate(params.catIds):
        curve = precision[:, k]
        if (curve < 0).all():
            continue  # no ground truth of this class
        ax.plot(params.recThrs, np.clip(curve, 0, None), linewidth=1.5,
                label=f"{evaluator.cocoGt.cats[cat_id]['name']} {curve[curve > -1].mean():.3f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title="precision-recall at IoU 0.5 (legend: AP50)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize="small", ncols=1 + len(params.catIds) // 20)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_confusion_matrix(matrix: np.ndarray, names: Sequence[str], path: str | os.PathLike,
                          score_threshold: float = 0.5, iou_threshold: float = 0.5) -> Path:
    """The counts of :func:`confusion_matrix` as a heat map, each true-class row normalised (colour), counts
    written in the cells up to 30 classes."""
    figure_cls = _figure("confusion_matrix.png")
    labels = [*names, "background"]
    n = len(labels)
    side = min(20.0, 3 + 0.45 * n)
    fig = figure_cls(figsize=(side + 1.5, side), dpi=110)
    ax = fig.add_subplot()
    rows = matrix.sum(1, keepdims=True)
    shown = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(n), labels, rotation=90 if n > 8 else 45, ha="right" if n <= 8 else "center")
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted", ylabel="true",
           title=f"confusion matrix (IoU {iou_threshold:g}, score >= {score_threshold:g})")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if shown[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def write_eval_plots(result: Any, folder: str | os.PathLike, score_threshold: float = 0.5) -> list[Path]:
    """``pr_curve.png`` and ``confusion_matrix.png`` of an :class:`zoo.engine.evaluate.EvalResult` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if result.evaluator is None:
        raise ValueError("this evaluation result has no COCOeval (only rank 0 keeps it): plot on rank 0")
    matrix, names = confusion_matrix(result.evaluator.cocoGt, result.detections, score_threshold)
    return [plot_pr_curves(result.evaluator, folder / "pr_curve.png"),
            plot_confusion_matrix(matrix, names, folder / "confusion_matrix.png", score_threshold)]
