"""Training and evaluation transforms on ``torchvision.transforms.v2`` (boxes follow every geometric op through
``tv_tensors.BoundingBoxes``), plus the batch-level multi-scale resize.

Images are sized by the model's own rule, :class:`zoo.data.images.Preprocess` (stretch to a square for RT-DETR,
shortest edge with a longest-edge limit for DETR), so training, evaluation and prediction resize alike.

Samples are ``(image, target)`` with ``image`` a uint8 ``tv_tensors.Image`` and ``target["boxes"]`` an xyxy
pixel ``BoundingBoxes``; :func:`to_model_target` turns the result into what the model and loss use.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from zoo.data.images import Preprocess

__all__ = ["train_transforms", "eval_transforms", "to_model_target", "multiscale_resize", "default_scales",
           "ModelResize"]


def _preprocess(resize: Preprocess | int | tuple[int, int], mean: Sequence[float] | None,
                std: Sequence[float] | None) -> Preprocess:
    """An int or (height, width) means a stretch resize (RT-DETR); a Preprocess is taken as it is."""
    if isinstance(resize, Preprocess):
        return resize
    size = (resize, resize) if isinstance(resize, int) else tuple(resize)
    return Preprocess("stretch", size, mean=None if mean is None else tuple(mean),
                      std=None if std is None else tuple(std))


class ModelResize(v2.Transform):
    """Resize to :meth:`Preprocess.output_size` (boxes follow). ``scales`` (training): for each image draw the
    size's first number from them (the square side, or DETR's shortest edge), scaling the longest-edge limit alike."""

    def __init__(self, preprocess: Preprocess, scales: Sequence[int] | None = None):
        super().__init__()
        self.preprocess, self.scales = preprocess, list(scales) if scales else None

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        rule = self.preprocess
        if self.scales:
            first = random.choice(self.scales)
            second = first if rule.resize_mode == "stretch" else max(first, round(rule.size[1] * first / rule.size[0]))
            rule = Preprocess(rule.resize_mode, (first, second))
        return {"size": list(rule.output_size(height, width))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.resize, inpt, size=params["size"], antialias=True)


def _to_float(mean: Sequence[float] | None, std: Sequence[float] | None) -> list[v2.Transform]:
    ops: list[v2.Transform] = [v2.ToDtype(torch.float32, scale=True)]
    if mean is not None and std is not None:
        ops.append(v2.Normalize(mean=list(mean), std=list(std)))
    return ops


def train_transforms(resize: Preprocess | int | tuple[int, int], mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None, photometric_p: float = 0.5, zoom_out_p: float = 0.5,
                     iou_crop_p: float = 0.8, flip_p: float = 0.5, zoom_fill: int = 0,
                     scales: Sequence[int] | None = None) -> v2.Compose:
    """The official RT-DETR recipe: photometric distortion, zoom-out (canvas up to 4x), IoU crop, horizontal flip,
    resize (a Preprocess, or ``int`` = square), drop boxes under 1 px, scale to [0, 1] (+ mean/std when given).
    ``scales`` draws the size per image (shortest-edge models; stretch models resize whole batches instead)."""
    preprocess = _preprocess(resize, mean, std)
    per_image = scales if preprocess.resize_mode != "stretch" else None
    return v2.Compose([
        v2.RandomPhotometricDistort(p=photometric_p),
        v2.RandomZoomOut(fill=zoom_fill, side_range=(1.0, 4.0), p=zoom_out_p),
        v2.RandomApply([v2.RandomIoUCrop()], p=iou_crop_p),
        v2.SanitizeBoundingBoxes(min_size=1),
        v2.RandomHorizontalFlip(p=flip_p),
        ModelResize(preprocess, per_image),
        v2.SanitizeBoundingBoxes(min_size=1),
        *_to_float(preprocess.mean, preprocess.std),
    ])


def eval_transforms(resize: Preprocess | int | tuple[int, int], mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None) -> v2.Compose:
    """Resize by the model's rule (a Preprocess, or ``int`` = square stretch) and scale (+ mean/std)."""
    preprocess = _preprocess(resize, mean, std)
    return v2.Compose([ModelResize(preprocess), *_to_float(preprocess.mean, preprocess.std)])


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
