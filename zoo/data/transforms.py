"""RT-DETR training and evaluation transforms on ``torchvision.transforms.v2`` (boxes follow every geometric op
through ``tv_tensors.BoundingBoxes``), plus the batch-level multi-scale resize.

Samples are ``(image, target)`` with ``image`` a uint8 ``tv_tensors.Image`` and ``target["boxes"]`` an xyxy
pixel ``BoundingBoxes``; :func:`to_model_target` turns the result into what the model and loss use.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert
from torchvision.transforms import v2

__all__ = ["train_transforms", "eval_transforms", "to_model_target", "multiscale_resize", "default_scales"]


def _to_float(mean: Sequence[float] | None, std: Sequence[float] | None) -> list[v2.Transform]:
    ops: list[v2.Transform] = [v2.ToDtype(torch.float32, scale=True)]
    if mean is not None and std is not None:
        ops.append(v2.Normalize(mean=list(mean), std=list(std)))
    return ops


def train_transforms(size: int | tuple[int, int], mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, photometric_p: float = 0.5, zoom_out_p: float = 0.5,
                     iou_crop_p: float = 0.8, flip_p: float = 0.5, zoom_fill: int = 0) -> v2.Compose:
    """The official RT-DETR recipe: photometric distortion, zoom-out (canvas up to 4x), IoU crop, horizontal flip,
    resize to ``size`` (``int`` = square), drop boxes under 1 px, scale to [0, 1] (+ mean/std when given)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    return v2.Compose([
        v2.RandomPhotometricDistort(p=photometric_p),
        v2.RandomZoomOut(fill=zoom_fill, side_range=(1.0, 4.0), p=zoom_out_p),
        v2.RandomApply([v2.RandomIoUCrop()], p=iou_crop_p),
        v2.SanitizeBoundingBoxes(min_size=1),
        v2.RandomHorizontalFlip(p=flip_p),
        v2.Resize(size),
        v2.SanitizeBoundingBoxes(min_size=1),
        *_to_float(mean, std),
    ])


def eval_transforms(size: int | tuple[int, int], mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> v2.Compose:
    """Stretch-resize to ``size`` and scale (the RT-DETR evaluation preprocessing)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    return v2.Compose([v2.Resize(size), *_to_float(mean, std)])


def to_model_target(target: dict) -> dict:
    """xyxy pixel ``BoundingBoxes`` -> plain ``boxes`` tensor, normalised cxcywh (what the loss expects)."""
    boxes = target["boxes"]
    h, w = boxes.canvas_size
    norm = box_convert(boxes.as_subclass(torch.Tensor).float(), "xyxy", "cxcywh")
    norm = norm / torch.tensor([w, h, w, h], dtype=norm.dtype)
    return {**target, "boxes": norm}


def default_scales(size: int, step: int = 32) -> list[int]:
    """Multi-scale training sizes: multiples of ``step`` within [0.75, 1.25] x ``size`` (RT-DETR: 480..800 around
    640), with ``size`` itself listed three times so that it is drawn most often."""
    scales = [s for s in range(step, int(1.25 * size) + 1, step) if s >= 0.75 * size] or [size]
    return scales + [size, size]


def multiscale_resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize a batch ``[B, 3, H, W]`` to ``size`` (bilinear). Normalised boxes are unchanged by construction."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)
