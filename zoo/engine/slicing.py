"""Sliced inference for small objects in large images (as SAHI does): the image is cut into overlapping tiles, each
tile and the whole image (downscaled to the model's input, as ``predict`` does) are detected in batches, and the
detections are merged.

Merging is class-wise NMS (``torchvision.ops.batched_nms``), not box fusion: every kept box is one the model drew
around an object it saw whole, at the scale it was trained for, while fusion would average it with the truncated
boxes of neighbouring tiles and with the coarse box of the downscaled pass. Before the NMS, two kinds of boxes that
IoU cannot catch are dropped: boxes cut by a tile's inner edge (an object smaller than the overlap lies whole in a
neighbouring tile; a larger one is found by the whole-image pass), and whole-image boxes of a class that mostly
cover a tile's box of that class (``containment`` of the smaller box): the downscaled pass sees a small object
a few pixels wide and draws a loose box around it, which would survive the NMS next to the tile's tight box.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import torch

from zoo.data.images import ImageInput, Preprocess, load_image
from zoo.engine.device import resolve_device
from zoo.engine.predict import (Detections, _as_items, _check_args, detections_from_output, label_names_for,
                                run_detector)

__all__ = ["tile_windows", "predict_sliced"]


def check_slice(slice: Any, overlap: Any) -> tuple[tuple[int, int], float]:
    """``((tile height, tile width), overlap)`` checked: positive int sizes, overlap in [0, 1)."""
    if (not isinstance(slice, (tuple, list)) or len(slice) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in slice)):
        raise ValueError(f"slice must be (tile height, tile width) in pixels, two positive ints; got {slice!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        raise ValueError(f"overlap must be a fraction of the tile in [0, 1), e.g. 0.2; got {overlap!r}")
    return (int(slice[0]), int(slice[1])), float(overlap)


def _starts(length: int, tile: int, overlap: float) -> list[int]:
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(count)})  # the last tile ends at the border


def tile_windows(height: int, width: int, tile: tuple[int, int], overlap: float = 0.2
                 ) -> list[tuple[int, int, int, int]]:
    """``(x1, y1, x2, y2)`` of tiles of ``tile`` (height, width) pixels covering the image, neighbours sharing at
    least ``overlap`` of a tile; the last row and column end at the image's border (a side shorter than the tile
    is one tile of that side)."""
    (th, tw), overlap = check_slice(tile, overlap)
    return [(x, y, min(x + tw, width), min(y + th, height))
            for y in _starts(height, th, overlap) for x in _starts(width, tw, overlap)]


def _containment(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, M] intersection of xyxy boxes ``a`` and ``b`` over the area of the smaller of each pair."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(-1), (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / torch.minimum(area_a[:, None], area_b[None, :]).clamp(min=1e-6)


def _whole_boxes(boxes: torch.Tensor, window: tuple[int, int, int, int], size: tuple[int, int],
                 margin: float) -> torch.Tensor:
    """Mask of the boxes (tile pixels) not cut by one of the tile's inner edges (edges on the image border do not
    cut anything)."""
    x1, y1, x2, y2 = window
    height, width = size
    keep = torch.ones(len(boxes), dtype=torch.bool)
    if x1 > 0:
        keep &= boxes[:, 0] > margin
    if y1 > 0:
        keep &= boxes[:, 1] > margin
    if x2 < width:
        keep &= boxes[:, 2] < (x2 - x1) - margin
    if y2 < height:
        keep &= boxes[:, 3] < (y2 - y1) - margin
    return keep


@torch.no_grad()
def predict_sliced(model: torch.nn.Module, images: ImageInput | Sequence[ImageInput], slice: tuple[int, int],
                   overlap: float = 0.2, score_threshold: float = 0.5, top_k: int = 100, batch_size: int = 8,
                   device: str | torch.device | None = None, input_size: int | tuple[int, int] | None = None,
                   merge_iou: float = 0.5, containment: float = 0.7, whole_image: bool = True,
                   progress: bool = False) -> Detections | list[Detections]:
    """Detect objects in one image or a list of images tile by tile (see the module docstring), like
    :func:`zoo.engine.predict.predict` otherwise. ``slice`` is the tile's (height, width) in image pixels, each
    tile resized to the model's input; ``overlap`` the fraction of a tile its neighbours share; ``merge_iou`` the
    IoU above which class-wise NMS keeps only the best of two boxes; ``whole_image`` adds the downscaled image,
    whose boxes are dropped where they cover ``containment`` of a tile's box of the same class.
    """
    from torchvision.ops import batched_nms
    from tqdm.auto import tqdm

    from zoo.engine.inference import inference_model

    tile, overlap = check_slice(slice, overlap)
    _check_args(score_threshold, top_k, batch_size)
    for name, value in (("merge_iou", merge_iou), ("containment", containment)):
        if not 0 < value <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    items, single = _as_items(images)
    device = resolve_device(device, model)
    preprocess = Preprocess.from_model(model, input_size)
    names = label_names_for(model)
    step = batch_size if preprocess.batchable else 1
    margin = 0.02 * min(tile)
    was_training = model.training
    model.to(device).eval()
    runner = inference_model(model)
    results: list[Detections] = []
    try:
        for image, image_name in tqdm(items, disable=not progress, unit="img", desc="predict sliced"):
            pixels = load_image(image, image_name)
            size = (int(pixels.shape[1]), int(pixels.shape[2]))
            windows = tile_windows(*size, tile, overlap)
            if whole_image:
                windows.append((0, 0, size[1], size[0]))
            boxes, scores, labels, from_tile = [], [], [], []
            for start in range(0, len(windows), step):
                chunk = windows[start:start + step]
                crops = [pixels[:, y1:y2, x1:x2] for x1, y1, x2, y2 in chunk]
                outputs = run_detector(runner, preprocess, [preprocess.resize(c) for c in crops],
                                       [(int(c.shape[1]), int(c.shape[2])) for c in crops], device,
                                       float(score_threshold), top_k)
                for window, crop, out in zip(chunk, crops, outputs):
                    out = {k: v.float().cpu() for k, v in out.items()}
                    is_tile = window != (0, 0, size[1], size[0])
                    if is_tile:
                        keep = _whole_boxes(out["boxes"], window, size, margin)
                        out = {k: v[keep] for k, v in out.items()}
                    boxes.append(out["boxes"] + torch.tensor(window[:2] * 2, dtype=torch.float32))
                    scores.append(out["scores"])
                    labels.append(out["labels"].long())
                    from_tile.append(torch.full((len(out["scores"]),), is_tile))
            merged = {"boxes": torch.cat(boxes), "scores": torch.cat(scores), "labels": torch.cat(labels)}
            tiles = torch.cat(from_tile)
            if len(windows) > 1 and (~tiles).any() and tiles.any():  # whole-image boxes around a tile's box
                covers = _containment(merged["boxes"][~tiles], merged["boxes"][tiles]) >= containment
                covers &= merged["labels"][~tiles][:, None] == merged["labels"][tiles][None, :]
                drop = torch.zeros_like(tiles)
                drop[(~tiles).nonzero()[:, 0]] = covers.any(1)
                merged = {k: v[~drop] for k, v in merged.items()}
            keep = batched_nms(merged["boxes"], merged["scores"], merged["labels"], merge_iou)[:top_k]
            results.append(detections_from_output({k: v[keep] for k, v in merged.items()}, names, size,
                                                   os.fspath(image) if isinstance(image, (str, os.PathLike)) else None))
    finally:
        model.train(was_training)
    return results[0] if single else results
