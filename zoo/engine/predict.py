"""Inference on images: read and preprocess them (zoo.data.images), run the detector in batches and return
:class:`Detections` in the pixel coordinates of the original images."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from zoo.data.coco_names import label_names_for
from zoo.data.images import ImageInput, Preprocess, load_image
from zoo.engine.device import resolve_device
from zoo.engine.validate import score_threshold as check_score_threshold

__all__ = ["Detections", "predict", "detect_batches", "run_detector", "label_names_for", "detections_from_output"]


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
    track_ids: torch.Tensor | None = None  # [N] int64 ids from a tracker (zoo.engine.track), -1: not (yet) tracked

    def __len__(self) -> int:
        return int(self.scores.numel())

    def subset(self, index: torch.Tensor | Sequence[int]) -> "Detections":
        """The detections at ``index`` (indices or a boolean mask), same image."""
        index = torch.as_tensor(index)
        if index.dtype != torch.bool:
            index = index.long()
        kept = torch.arange(len(self))[index].tolist()
        return dataclasses.replace(
            self, boxes=self.boxes[index], scores=self.scores[index], labels=self.labels[index],
            label_names=[self.label_names[i] for i in kept],
            track_ids=None if self.track_ids is None else self.track_ids[index])

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types (lists, floats, ints, strings), ready for ``json.dumps``; ``track_ids`` only when the
        detections were tracked."""
        record = {
            "source": self.source,
            "image_size": list(self.image_size),
            "boxes": self.boxes.tolist(),
            "scores": self.scores.tolist(),
            "labels": self.labels.tolist(),
            "label_names": list(self.label_names),
        }
        if self.track_ids is not None:
            record["track_ids"] = self.track_ids.tolist()
        return record

    def to_supervision(self) -> Any:
        """A ``supervision.Detections`` (the ``track`` or ``supervision`` extra) for supervision's annotators, zones
        and dataset tools: ``xyxy``, ``confidence``, ``class_id`` (the model's class index), ``tracker_id`` (when
        tracked) and ``data["class_name"]``."""
        sv = _supervision()
        return sv.Detections(
            xyxy=self.boxes.detach().cpu().float().numpy().reshape(-1, 4),
            confidence=self.scores.detach().cpu().float().numpy(),
            class_id=self.labels.detach().cpu().numpy().astype(int),
            tracker_id=None if self.track_ids is None else self.track_ids.cpu().numpy().astype(int),
            data={"class_name": np.array(self.label_names, dtype=str)})

    @classmethod
    def from_supervision(cls, detections: Any, image_size: tuple[int, int],
                         label_names: Sequence[str] | None = None, source: str | None = None) -> "Detections":
        """zoo :class:`Detections` from a ``supervision.Detections`` on an image of ``image_size`` (height, width).

        Names come from ``data["class_name"]``, else from ``label_names[class_id]``, else ``class_{id}``;
        ``tracker_id`` becomes ``track_ids``. Detections without ``confidence`` (annotations) get score 1. Masks,
        keypoints and other ``data`` fields have no place in zoo's Detections and are not carried over."""
        sv = _supervision()
        if not isinstance(detections, sv.Detections):
            raise TypeError(f"expected a supervision.Detections, got {type(detections).__name__}")
        if (len(image_size) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
                                        for v in image_size)):
            raise ValueError(f"image_size must be (height, width) in pixels, got {image_size!r}")
        n = len(detections)
        if n and detections.class_id is None:
            raise ValueError("these supervision Detections have no class_id; zoo's Detections need a class per box "
                             "(set detections.class_id, e.g. to zeros for a single class)")
        labels = torch.as_tensor(np.asarray(detections.class_id if n else [], dtype=np.int64).reshape(n))
        scores = np.ones(n, np.float32) if detections.confidence is None else detections.confidence
        scores = torch.as_tensor(np.asarray(scores, dtype=np.float32).reshape(n))
        names = detections.data.get("class_name") if detections.data else None
        if names is None:
            table = list(label_names or [])
            names = [table[i] if 0 <= i < len(table) else f"class_{i}" for i in labels.tolist()]
        order = torch.argsort(scores, descending=True, stable=True)
        track_ids = None if detections.tracker_id is None else \
            torch.as_tensor(np.asarray(detections.tracker_id, dtype=np.int64).reshape(n))[order]
        return cls(boxes=torch.as_tensor(np.asarray(detections.xyxy, dtype=np.float32).reshape(n, 4))[order],
                   scores=scores[order], labels=labels[order], label_names=[str(names[i]) for i in order.tolist()],
                   image_size=(int(image_size[0]), int(image_size[1])), source=source, track_ids=track_ids)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def _supervision() -> Any:
    from zoo.extras import require

    return require("supervision", "supervision", "converting detections to and from supervision")


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


def detections_from_output(output: dict[str, torch.Tensor], names: Sequence[str], image_size: tuple[int, int],
                           source: str | None = None) -> Detections:
    """:class:`Detections` (on the CPU, float32) from one image's ``model.postprocess`` output."""
    labels = output["labels"].cpu().long()
    return Detections(boxes=output["boxes"].float().cpu(), scores=output["scores"].float().cpu(), labels=labels,
                      label_names=[names[i] if i < len(names) else f"class_{i}" for i in labels.tolist()],
                      image_size=image_size, source=source)


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
                    results.append(detections_from_output(out, names, size, source))
                bar.update(len(resized))
    finally:
        model.train(was_training)
    return results
