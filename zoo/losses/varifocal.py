"""The IoU-aware classification losses: varifocal (VarifocalNet; RT-DETR, D-FINE) and matchability-aware (MAL;
DEIM, DEIMv2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, box_iou

__all__ = ["varifocal_loss", "matchability_aware_loss", "paired_iou"]


def varifocal_loss(logits: torch.Tensor, one_hot: torch.Tensor, target_score: torch.Tensor, alpha: float = 0.75,
                   gamma: float = 2.0) -> torch.Tensor:
    """Per-element VFL (VarifocalNet): BCE towards ``target_score`` (IoU at the matched class, else 0); negatives
    (``one_hot == 0``) weighted by ``alpha * p**gamma``, positives by their target IoU. Shaped like ``logits``."""
    prob = logits.detach().sigmoid()
    weight = alpha * prob.pow(gamma) * (1 - one_hot) + target_score
    return F.binary_cross_entropy_with_logits(logits, target_score, weight=weight, reduction="none")


def matchability_aware_loss(logits: torch.Tensor, one_hot: torch.Tensor, target_score: torch.Tensor,
                            gamma: float = 1.5, alpha: float | None = None) -> torch.Tensor:
    """Per-element MAL (DEIM, ShihuaHuang95/DEIM ``loss_labels_mal``): BCE towards ``target_score ** gamma``, so that
    low-IoU matches (DEIM's many dense one-to-one matches) are pulled less towards 1 than by VFL; positives weighted
    1, negatives ``p**gamma`` (times ``alpha`` when given; the official default is none). Shaped like ``logits``."""
    prob = logits.detach().sigmoid()
    negative = prob.pow(gamma) * (1 - one_hot)
    weight = (negative if alpha is None else alpha * negative) + one_hot
    return F.binary_cross_entropy_with_logits(logits, target_score.pow(gamma), weight=weight, reduction="none")


def paired_iou(a_cxcywh: torch.Tensor, b_cxcywh: torch.Tensor) -> torch.Tensor:
    """IoU of row i of ``a`` with row i of ``b`` (0 where both boxes are degenerate)."""
    iou = box_iou(box_convert(a_cxcywh, "cxcywh", "xyxy"), box_convert(b_cxcywh, "cxcywh", "xyxy")).diagonal()
    return iou.nan_to_num(0.0)
