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
           "ModelResize", "Mosaic", "AffineMosaic", "MixUp", "SampleMixing", "MOSAIC_STYLES"]


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


Sample = tuple[torch.Tensor, dict]


def _stretch(image: torch.Tensor, target: dict, height: int, width: int) -> Sample:
    """Resize an image and its xyxy pixel boxes to ``height`` x ``width``."""
    return TF.resize(image, [height, width], antialias=True), {
        **target, "boxes": TF.resize(target["boxes"], [height, width])}


def _combined(image: torch.Tensor, boxes: list[torch.Tensor], labels: list[torch.Tensor], first: dict) -> Sample:
    from torchvision import tv_tensors

    h, w = image.shape[-2:]
    target = {**first, "boxes": tv_tensors.BoundingBoxes(torch.cat(boxes).reshape(-1, 4), format="XYXY",
                                                         canvas_size=(h, w)),
              "labels": torch.cat(labels), "orig_size": torch.tensor([h, w])}
    return tv_tensors.Image(image), target


class Mosaic:
    """Four samples in a 2x2 mosaic (YOLO / DEIM): a random centre in the middle half of a ``size`` x ``size``
    canvas splits it into four tiles, and each sample is resized into its tile, so that every box stays whole.
    Takes ``num_samples`` raw samples (uint8 image, xyxy pixel boxes) and returns one; the first sample's
    ``image_id`` is kept."""

    num_samples = 4

    def __init__(self, size: int = 640):
        self.size = int(size)

    def __call__(self, samples: Sequence[Sample]) -> Sample:
        if len(samples) != 4:
            raise ValueError(f"Mosaic takes 4 samples, got {len(samples)}")
        s = self.size
        xc, yc = (int(random.uniform(0.25 * s, 0.75 * s)) for _ in range(2))
        canvas = torch.zeros((3, s, s), dtype=samples[0][0].dtype)
        tiles = [(0, 0, xc, yc), (xc, 0, s, yc), (0, yc, xc, s), (xc, yc, s, s)]
        boxes, labels = [], []
        for (image, target), (x0, y0, x1, y1) in zip(samples, tiles):
            image, target = _stretch(image, target, y1 - y0, x1 - x0)
            canvas[:, y0:y1, x0:x1] = image
            boxes.append(target["boxes"].as_subclass(torch.Tensor) + torch.tensor([x0, y0, x0, y0]))
            labels.append(target["labels"])
        return _combined(canvas, boxes, labels, samples[0][1])


class AffineMosaic:
    """DEIM's mosaic (ShihuaHuang95/DEIM engine/data/transforms/mosaic.py, without its sample cache): the four
    samples resized to a shortest side of ``tile``, pasted into a 2 x 2 grid of the largest tile's size, and the
    canvas moved by one random affine transform (rotation up to ``degrees``, ``translate``, ``scale``; torchvision's
    ``RandomAffine``, boxes becoming the enclosing boxes of the moved ones, clamped to the canvas). Boxes left
    under 1 pixel wide or high are dropped with their labels."""

    num_samples = 4

    def __init__(self, tile: int = 320, degrees: float = 10.0, translate: tuple[float, float] = (0.1, 0.1),
                 scale: tuple[float, float] = (0.5, 1.5), fill: int = 0):
        self.resize = v2.Resize(int(tile))
        self.affine = v2.RandomAffine(degrees=degrees, translate=translate, scale=scale, fill=fill)
        self.sanitize = v2.SanitizeBoundingBoxes(min_size=1)

    def __call__(self, samples: Sequence[Sample]) -> Sample:
        if len(samples) != 4:
            raise ValueError(f"AffineMosaic takes 4 samples, got {len(samples)}")
        resized = [self.resize(image, target) for image, target in samples]
        h = max(image.shape[-2] for image, _ in resized)
        w = max(image.shape[-1] for image, _ in resized)
        canvas = torch.zeros((3, 2 * h, 2 * w), dtype=samples[0][0].dtype)
        boxes, labels = [], []
        for (image, target), (x0, y0) in zip(resized, [(0, 0), (w, 0), (0, h), (w, h)]):
            canvas[:, y0:y0 + image.shape[-2], x0:x0 + image.shape[-1]] = image
            boxes.append(target["boxes"].as_subclass(torch.Tensor) + torch.tensor([x0, y0, x0, y0]))
            labels.append(target["labels"])
        image, target = _combined(canvas, boxes, labels, samples[0][1])
        return self.sanitize(*self.affine(image, target))


#: the mosaics :class:`SampleMixing` makes: zoo's grid (:class:`Mosaic`) or DEIM's (:class:`AffineMosaic`)
MOSAIC_STYLES = ("grid", "deim")


class MixUp:
    """Two samples blended (mixup for detection): the second resized to the first's size, pixels mixed with a
    weight drawn from Beta(``alpha``, ``alpha``), the boxes of both kept."""

    num_samples = 2

    def __init__(self, alpha: float = 32.0):
        self.alpha = float(alpha)

    def __call__(self, samples: Sequence[Sample]) -> Sample:
        if len(samples) != 2:
            raise ValueError(f"MixUp takes 2 samples, got {len(samples)}")
        (a, ta), (b, tb) = samples
        b, tb = _stretch(b, tb, *a.shape[-2:])
        lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        mixed = (lam * a.float() + (1 - lam) * b.float()).round().clamp(0, 255).to(a.dtype)
        return _combined(mixed, [ta["boxes"].as_subclass(torch.Tensor), tb["boxes"].as_subclass(torch.Tensor)],
                         [ta["labels"], tb["labels"]], ta)


class SampleMixing(torch.utils.data.Dataset):
    """A detection dataset (one with ``load(i)`` -> raw sample and ``transforms``, as
    :class:`zoo.data.coco.CocoDetection`) whose samples become a :class:`Mosaic` with probability ``mosaic`` and
    are mixed with another with probability ``mixup``, before the dataset's own transforms (a mosaic's through
    ``mosaic_transforms`` when given: DEIM leaves out zoom-out and IoU crop there). ``mosaic_style``: ``"grid"``
    (:class:`Mosaic`) or ``"deim"`` (:class:`AffineMosaic`, tiles of half ``mosaic_size``).

    ``stage`` (set per epoch by the trainer): ``"mix"`` as above; ``"augment"``: the dataset's transforms, unmixed;
    ``"light"``: the ``light`` transforms (DEIM's first epochs: flips only), unmixed; ``"plain"`` (the last
    ``no_aug_epochs``): ``plain`` (resize only), unmixed. ``enabled`` is ``stage != "plain"`` (setting it True
    means "mix")."""

    STAGES = ("mix", "augment", "light", "plain")

    def __init__(self, dataset: Any, mosaic: float = 0.0, mixup: float = 0.0, plain: Any = None,
                 mosaic_size: int | None = None, mixup_alpha: float = 32.0, light: Any = None,
                 mosaic_transforms: Any = None, mosaic_style: str = "grid"):
        if mosaic_style not in MOSAIC_STYLES:
            raise ValueError(f"mosaic_style must be one of {MOSAIC_STYLES}, got {mosaic_style!r}")
        self.dataset, self.mosaic_p, self.mixup_p, self.plain = dataset, float(mosaic), float(mixup), plain
        self.light, self.mosaic_transforms = light, mosaic_transforms
        # DEIM's tiles are half its 640 input: the same share of the training size here
        self.mosaic = (Mosaic(mosaic_size or 640) if mosaic_style == "grid"
                       else AffineMosaic(tile=(mosaic_size or 640) // 2))
        self.mixup = MixUp(mixup_alpha)
        self._stage = "mix"

    @property
    def stage(self) -> str:
        return self._stage

    @stage.setter
    def stage(self, value: str) -> None:
        if value not in self.STAGES:
            raise ValueError(f"stage must be one of {self.STAGES}, got {value!r}")
        self._stage = value

    @property
    def enabled(self) -> bool:
        return self._stage != "plain"

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._stage = "mix" if value else "plain"

    def __len__(self) -> int:
        return len(self.dataset)

    def _others(self, count: int) -> list[Sample]:
        return [self.dataset.load(random.randrange(len(self.dataset))) for _ in range(count)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        sample = self.dataset.load(index)
        transforms = {"plain": self.plain, "light": self.light if self.light is not None else self.plain
                      }.get(self._stage, self.dataset.transforms)
        if self._stage == "mix":
            if self.mosaic_p and random.random() < self.mosaic_p:
                sample = self.mosaic([sample, *self._others(3)])
                if self.mosaic_transforms is not None:
                    transforms = self.mosaic_transforms
            if self.mixup_p and random.random() < self.mixup_p:
                sample = self.mixup([sample, *self._others(1)])
        image, target = transforms(*sample) if transforms is not None else sample
        return image, to_model_target(target)
