"""Validation of detection targets shared by the DETR-family criteria."""
from __future__ import annotations

import torch

__all__ = ["check_targets"]


def check_targets(targets: list[dict[str, torch.Tensor]], batch_size: int, num_classes: int, label_hint: str) -> None:
    """One ``{"labels", "boxes"}`` dict per image with labels in ``[0, num_classes)``; ``label_hint`` says how to fix labels."""
    if len(targets) != batch_size:
        raise ValueError(f"{len(targets)} targets for a batch of {batch_size} images")
    for i, t in enumerate(targets):
        if "labels" not in t or "boxes" not in t:
            raise KeyError(f"target {i} needs 'labels' and 'boxes' (normalised cxcywh), got {sorted(t)}")
        if len(t["labels"]) and (t["labels"].min() < 0 or t["labels"].max() >= num_classes):
            raise ValueError(f"target {i} has labels outside [0, {num_classes}); {label_hint}")
