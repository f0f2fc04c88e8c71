"""Batching detection samples: images of one size stacked, targets kept as a list of dicts."""
from __future__ import annotations

import torch

__all__ = ["collate_detection"]


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """``[(image [3, H, W], target), ...]`` -> ``(images [B, 3, H, W], [target, ...])``. All images must have
    the same size (resize in the dataset transforms)."""
    if not batch:
        raise ValueError("empty batch")
    images, targets = zip(*batch)
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ValueError(f"images in a batch must share one size, got {sorted(shapes)}: add a Resize transform")
    return torch.stack([im.as_subclass(torch.Tensor) for im in images]), list(targets)
