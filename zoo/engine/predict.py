"""Inference on images: read and preprocess them (zoo.data.images), run the detector in batches and return
:class:`Detections` in the pixel coordinates of the original images."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from zoo.data.coco_names import coco_label_names
from zoo.data.images import ImageInput, Preprocess, load_image
from zoo.engine.device import resolve_device
from zoo.engine.validate import score_threshold as check_score_threshold

__all__ = ["Detections", "predict", "detect_batches", "run_detector", "label_names_for"]


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------

@dataclass
class Detections:
    """Detections for one image. ``boxes`` are ``[N, 4]`` (x1, y1, x2, y2) in pixels of the original image,
    sorted by decreasing score; ``labels`` are the model's class indices and ``label_names`` their names."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    label_names: list[str]
    image_size: tuple[int, int]  # (height, width) of the original image
    source: str | None = None  # the file path, None for in-memory images

    def __len__(self) -> int:
        return int(self.scores.numel())

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (lists, floats, ints, strings), ready for ``json.dumps``."""
        return {
            "source": self.source,
            "image_size": list(self.image_size),
            "boxes": self.boxes.tolist(),
            "scores": self.scores.tolist(),
            "labels": self.labels.tolist(),
            "label_names": list(self.label_names),
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def label_names_for(model: torch.nn.Module) -> list[str]:
    """``pretrained_cfg["label_names"]`` when set, else COCO names for 80/91-class models, else ``class_{i}``."""
    num_classes = int(model.num_classes)
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names") or coco_label_names(num_classes)
    names = list(names or [])
    return names + [f"class_{i}" for i in range(len(names), num_classes)]


# --------------------------------------------------------------------------------------------------
# Running a detector
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def run_detector(model: torch.nn.Module, preprocess: Preprocess, images: Sequence[torch.Tensor],
                 original_sizes: Sequence[tuple[int, int]], device: torch.device, score_threshold: float,
                 top_k: int) -> list[dict[str, torch.Tensor]]:
    """Forward resized uint8 images as one batch and postprocess to boxes in original pixels.

    Without a pixel mask the model's normalised boxes refer to the padded canvas, so each original size is
    scaled by padded / resized; with a mask (DETR) they refer to the valid region, i.e. the original image.
    Inputs take the model's dtype (bf16/fp16 models, or float32 under ``torch.autocast``); postprocessing runs
    in float32.
    """
    from zoo.engine.inference import model_dtype

    pixel_values, mask = preprocess.collate(images, device)
    pixel_values = pixel_values.to(model_dtype(model))
    original = torch.tensor(original_sizes, dtype=torch.float32, device=device)
    if preprocess.use_mask:
        outputs = model(pixel_values, pixel_mask=mask)
        target_sizes = original
    else:
        outputs = model(pixel_values)
        resized = torch.tensor([tuple(im.shape[-2:]) for im in images], dtype=torch.float32, device=device)
        target_sizes = original * torch.tensor(pixel_values.shape[-2:], device=device) / resized
    outputs = {k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in outputs.items()}
    with torch.autocast(device.type, enabled=False):
        return model.postprocess(outputs, target_sizes, score_threshold=score_threshold, top_k=top_k)


def _as_items(images: ImageInput | Sequence[ImageInput]) -> tuple[list[tuple[Any, str]], bool]:
    """-> ([(image, name used in errors)], whether a single image was passed)."""
    def name(image: Any, i: int | None) -> str:
        if isinstance(image, (str, os.PathLike)):
            return os.fspath(image)
        return "image" if i is None else f"images[{i}]"

    if isinstance(images, (list, tuple)):
        return [(im, name(im, i)) for i, im in enumerate(images)], False
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:  # a batch
        return [(im, f"images[{i}]") for i, im in enumerate(images)], False
    return [(images, name(images, None))], True


def _check_args(score_threshold: Any, top_k: Any, batch_size: Any) -> None:
    check_score_threshold(score_threshold)
    for arg, value in (("top_k", top_k), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")


Batch = tuple[list[torch.Tensor], list[tuple[int, int]], list["str | None"]]  # resized images, sizes, sources


@torch.no_grad()
def predict(model: torch.nn.Module, images: ImageInput | Sequence[ImageInput], score_threshold: float = 0.5,
            top_k: int = 100, batch_size: int = 8, device: str | torch.device | None = None,
            input_size: int | tuple[int, int] | None = None, progress: bool = False
            ) -> Detections | list[Detections]:
    """Detect objects in one image or a list of images (see :func:`load_image` for what an image can be).

    Returns one :class:`Detections` for a single image, else a list in input order. Boxes are in pixels of
    each original image; at most ``top_k`` detections with score >= ``score_threshold`` are kept.
    ``device`` moves the model there (default: where the model is). ``input_size`` overrides the size in
    ``pretrained_cfg`` (faster, less accurate). Images are read batch by batch, so long lists stay cheap, and
    each is resized as soon as it is read, so a batch holds ``batch_size`` images at the model's input size plus
    one decoded file (a large JPEG is decoded at reduced scale: :meth:`Preprocess.load`).
    The model runs fused (see :func:`zoo.engine.inference.inference_model`) in its own dtype (bf16 and fp16
    models work, and so does ``torch.autocast``); boxes and scores come back in float32.
    """
    _check_args(score_threshold, top_k, batch_size)
    items, single = _as_items(images)
    preprocess = Preprocess.from_model(model, input_size)
    step = batch_size if preprocess.batchable else 1

    def batches() -> Iterator[Batch]:
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            resized, sizes = zip(*(preprocess.load(image, image_name) for image, image_name in chunk))
            sources = [name if isinstance(image, (str, os.PathLike)) else None for image, name in chunk]
            yield list(resized), list(sizes), sources

    results = detect_batches(model, batches(), preprocess, score_threshold, top_k, device, progress, len(items))
    return results[0] if single else results


@torch.no_grad()
def detect_batches(model: torch.nn.Module, batches: Iterable[Batch], preprocess: Preprocess,
                   score_threshold: float = 0.5, top_k: int = 100, device: str | torch.device | None = None,
                   progress: bool = False, total: int | None = None) -> list[Detections]:
    """:class:`Detections` of images already read and resized (:meth:`Preprocess.load`), one batch per item of
    ``batches``: ([resized uint8 images], [original (height, width)], [source path or None]). What
    :func:`predict` runs; zoo.engine.predict_files calls it to read and record each file itself."""
    from tqdm.auto import tqdm

    from zoo.engine.inference import inference_model

    check_score_threshold(score_threshold)
    device = resolve_device(device, model)
    names = label_names_for(model)
    was_training = model.training
    model.to(device).eval()
    runner = inference_model(model)  # fused (deploy) copy: same outputs up to rounding, faster
    results: list[Detections] = []
    try:
        with tqdm(total=total, disable=not progress, unit="img", desc="predict") as bar:
            for resized, sizes, sources in batches:
                outputs = run_detector(runner, preprocess, resized, sizes, device, float(score_threshold), top_k)
                for size, source, out in zip(sizes, sources, outputs):
                    labels = out["labels"].cpu().long()
                    results.append(Detections(
                        boxes=out["boxes"].float().cpu(), scores=out["scores"].float().cpu(), labels=labels,
                        label_names=[names[i] if i < len(names) else f"class_{i}" for i in labels.tolist()],
                        image_size=size, source=source))
                bar.update(len(resized))
    finally:
        model.train(was_training)
    return results
