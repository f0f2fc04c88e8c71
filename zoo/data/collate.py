"""Batching detection samples: images stacked (zero-padded at the bottom/right when sizes differ), targets kept
as a list of dicts."""
from __future__ import annotations

import torch

__all__ = ["collate_detection"]


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """``[(image [3, H, W], target), ...]`` -> ``(images [B, 3, H, W], [target, ...])``.

    Images of different sizes (shortest-edge resizing) are zero-padded to the largest, and each target gets
    ``"size"``: its image's valid ``(height, width)``, from which the model builds its pixel mask."""
    if not batch:
        raise ValueError("empty batch")
    images = [im.as_subclass(torch.Tensor) for im, _ in batch]
    targets = [dict(t) for _, t in batch]
    if len({tuple(im.shape) for im in images}) == 1:
        return torch.stack(images), targets
    height, width = max(im.shape[1] for im in images), max(im.shape[2] for im in images)
    padded = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for canvas, im, target in zip(padded, images, targets):
        canvas[:, :im.shape[1], :im.shape[2]] = im
        target["size"] = torch.tensor(im.shape[1:])
    return padded, targets
