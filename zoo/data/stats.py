"""What a detection dataset holds: images, boxes and images per class, and box sizes (``zoo data stats``)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from zoo.data.formats.base import DetectionSplit

__all__ = ["split_stats", "format_stats", "plot_box_sizes"]

#: COCO's small / medium / large limits on sqrt(box area), pixels
COCO_AREA_LIMITS = (32, 96)


def split_stats(data: DetectionSplit) -> dict[str, Any]:
    """``{"images", "empty_images", "boxes", "crowd", "classes": {name: {"boxes", "images"}}, "sizes": [sqrt
    area of every box, pixels]}``; crowd / difficult boxes are counted apart."""
    names = {c["id"]: c["name"] for c in data.coco["categories"]}
    classes = {n: {"boxes": 0, "images": 0} for n in names.values()}
    seen: set[tuple[int, int]] = set()
    sizes, crowd = [], 0
    with_boxes = set()
    for ann in data.coco["annotations"]:
        if ann.get("iscrowd"):
            crowd += 1
            continue
        name = names[ann["category_id"]]
        classes[name]["boxes"] += 1
        with_boxes.add(ann["image_id"])
        if (ann["image_id"], ann["category_id"]) not in seen:
            seen.add((ann["image_id"], ann["category_id"]))
            classes[name]["images"] += 1
        sizes.append(math.sqrt(max(0.0, ann["bbox"][2] * ann["bbox"][3])))
    images = len(data.coco["images"])
    return {"images": images, "empty_images": images - len(with_boxes), "boxes": len(sizes), "crowd": crowd,
            "classes": classes, "sizes": sizes}


def format_stats(name: str, stats: dict[str, Any]) -> str:
    """A split's counts as a table (boxes and images per class, COCO size buckets)."""
    small, medium = COCO_AREA_LIMITS
    sizes = stats["sizes"]
    buckets = (sum(s < small for s in sizes), sum(small <= s < medium for s in sizes), sum(s >= medium for s in sizes))
    lines = [f"{name}: {stats['images']} images ({stats['empty_images']} without objects), {stats['boxes']} boxes"
             + (f" + {stats['crowd']} crowd/difficult" if stats["crowd"] else "")
             + f"; small/medium/large (COCO): {buckets[0]}/{buckets[1]}/{buckets[2]}"]
    width = max([5] + [len(n) for n in stats["classes"]])
    lines.append(f"  {'class':<{width}}  {'boxes':>7}  {'images':>7}")
    lines += [f"  {n:<{width}}  {c['boxes']:>7d}  {c['images']:>7d}" for n, c in stats["classes"].items()]
    return "\n".join(lines)


def plot_box_sizes(stats: dict[str, dict[str, Any]], path: str | os.PathLike) -> Path:
    """Per split: boxes per class (bars) and a histogram of box sizes (sqrt of the area, log scale, COCO's small /
    medium / large limits marked). Needs matplotlib (``zoo[plots]``)."""
    import numpy as np

    from zoo.extras import require

    figure_cls = require("matplotlib.figure", "plots", "zoo data stats' plot", package="matplotlib").Figure
    ticker = require("matplotlib.ticker", "plots", "zoo data stats' plot", package="matplotlib")
    fig = figure_cls(figsize=(11, 3.6 * len(stats)), dpi=100)
    axes = fig.subplots(len(stats), 2, squeeze=False)
    for row, (split, st) in zip(axes, stats.items()):
        names = list(st["classes"])
        row[0].barh(range(len(names)), [st["classes"][n]["boxes"] for n in names], color="tab:blue")
        row[0].set_yticks(range(len(names)), names, fontsize=8 if len(names) < 30 else 5)
        row[0].invert_yaxis()
        row[0].set(xlabel="boxes", title=f"{split}: boxes per class")
        sizes = np.asarray(st["sizes"], dtype=float)
        sizes = sizes[sizes > 0]
        if len(sizes):
            bins = np.geomspace(max(1.0, sizes.min()), max(2.0, sizes.max()), 40)
            row[1].hist(sizes, bins=bins, color="tab:orange")
            row[1].set_xscale("log")
            plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")  # 20, not 2 x 10^1
            row[1].xaxis.set_major_formatter(plain)
            row[1].xaxis.set_minor_formatter(plain)
        row[1].yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        row[0].xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        for limit in COCO_AREA_LIMITS:
            row[1].axvline(limit, color="gray", linestyle="--", linewidth=1)
        row[1].set(xlabel="box size: sqrt(w x h), pixels (dashed: COCO small/medium/large)", ylabel="boxes",
                   title=f"{split}: box sizes ({len(sizes)} boxes)")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
