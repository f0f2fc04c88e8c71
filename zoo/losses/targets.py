"""What the DETR-family criteria share: target validation, gathering the matched pairs, and the box losses."""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ["check_targets", "count_boxes", "box_count", "gather_matched", "box_losses"]

#: the loss normaliser :func:`box_count` sets for gradient accumulation (None: count the batch's boxes)
_BOX_COUNT: ContextVar[float | None] = ContextVar("box_count", default=None)


@contextlib.contextmanager
def box_count(boxes: float | None) -> Iterator[None]:
    """Normalise the losses computed inside by ``boxes`` instead of the batch's own count: gradient accumulation
    passes the boxes per micro-batch averaged over all micro-batches (and processes) of an optimisation step, as
    DDP averages over processes, so that N accumulated batches of B equal one batch of N*B."""
    token = _BOX_COUNT.set(boxes)
    try:
        yield
    finally:
        _BOX_COUNT.reset(token)

Indices = list[tuple[torch.Tensor, torch.Tensor]]


def check_targets(targets: list[dict[str, torch.Tensor]], batch_size: int, num_classes: int, label_hint: str) -> None:
    """One ``{"labels", "boxes"}`` dict per image with labels in ``[0, num_classes)``; ``label_hint`` says how to fix labels."""
    if len(targets) != batch_size:
        raise ValueError(f"{len(targets)} targets for a batch of {batch_size} images")
    for i, t in enumerate(targets):
        if "labels" not in t or "boxes" not in t:
            raise KeyError(f"target {i} needs 'labels' and 'boxes' (normalised cxcywh), got {sorted(t)}")
        if len(t["labels"]) and (t["labels"].min() < 0 or t["labels"].max() >= num_classes):
            raise ValueError(f"target {i} has labels outside [0, {num_classes}); {label_hint}")


def count_boxes(targets: list[dict[str, torch.Tensor]], device: torch.device, scale: float = 1.0) -> float:
    """Boxes in the batch times ``scale``, averaged over processes under torch.distributed, at least 1 (the loss
    normaliser); inside :func:`box_count`, the count given there (times ``scale``). ``scale``: Group DETR's
    number of query groups, which the official criteria multiply by before the clamp to 1."""
    if _BOX_COUNT.get() is not None:
        return max(float(_BOX_COUNT.get()) * scale, 1.0)
    n = torch.tensor([float(sum(len(t["labels"]) for t in targets)) * scale], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(float(n.item()), 1.0)


def gather_matched(targets: list[dict[str, torch.Tensor]], indices: Indices, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(batch_idx, query_idx, labels, boxes)`` of the matched (query, target) pairs, image after image."""
    batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(device)
    query_idx = torch.cat([q for q, _ in indices]).to(device)
    labels = torch.cat([t["labels"][j.to(device)] for t, (_, j) in zip(targets, indices)])
    boxes = torch.cat([t["boxes"][j.to(device)] for t, (_, j) in zip(targets, indices)])
    return batch_idx, query_idx, labels, boxes


def box_losses(src_boxes: torch.Tensor, tgt_boxes: torch.Tensor, num_boxes: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 and GIoU losses of matched cxcywh boxes, summed and divided by the (all-reduced) box count."""
    loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="sum") / num_boxes
    giou = generalized_box_iou(box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy"))
    return loss_bbox, (1 - giou.diagonal()).sum() / num_boxes
