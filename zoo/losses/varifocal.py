"""Varifocal loss (VarifocalNet), the classification loss of RT-DETR and D-FINE."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, box_iou

__all__ = ["varifocal_loss", "paired_iou"]


def varifocal_loss(logits: torch.Tensor, one_hot: torch.Tensor, target_score: torch.Tensor, alpha: float = 0.75,
                   gamma: float = 2.0) -> torch.Tensor:
    """Per-element VFL (VarifocalNet): BCE towards ``target_score`` (IoU at the matched class, else 0); negatives
    (``one_hot == 0``) weighted by ``alpha * p**gamma``, positives by their target IoU. Shaped like ``logits``."""
    prob = logits.detach().sigmoid()
    weight = alpha * prob.pow(gamma) * (1 - one_hot) + target_score
    return F.binary_cross_entropy_with_logits(logits, target_score, weight=weight, reduction="none")


def paired_iou(a_cxcywh: torch.Tensor, b_cxcywh: torch.Tensor) -> torch.Tensor:
    """IoU of row i of ``a`` with row i of ``b`` (0 where both boxes are degenerate)."""
    iou = box_iou(box_convert(a_cxcywh, "cxcywh", "xyxy"), box_convert(b_cxcywh, "cxcywh", "xyxy")).diagonal()
    return iou.nan_to_num(0.0)
