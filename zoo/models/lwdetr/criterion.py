"""LW-DETR / RF-DETR criterion: IoU-aware BCE (IA-BCE) classification + L1 + GIoU, Hungarian matching per group
of queries (Group DETR one-to-many training), on the last layer, every earlier decoder layer and the two-stage
encoder proposals.

Equal term by term to ``SetCriterion(ia_bce_loss=True)`` of roboflow/rf-detr and Atten4Vis/LW-DETR
(rfdetr/models/lwdetr.py) and to transformers' ``LwDetrImageLoss`` (the loss of ``LwDetrForObjectDetection`` and
``RfDetrForObjectDetection``; tests/models/lwdetr/test_criterion.py):

- matching: focal class cost (alpha 0.25, gamma 2) x 2 + L1 x 5 + GIoU x 2, solved separately in each of the
  ``group_detr`` groups of ``num_queries`` queries, so every target has one match per group; in eval mode one
  group (as the official criterion);
- IA-BCE: BCE on sigmoid scores where a matched query's target is ``t = clamp(p^alpha * IoU^(1-alpha), 0.01)``
  (alpha 0.25; the positive weight ``t``, the negative ``1 - t``) and every other (query, class) pays
  ``p^2 * -log(1-p)``; summed and divided by the box count;
- the normaliser: boxes in the batch x ``group_detr`` (averaged over processes), at least 1.

Terms are weighted (official: ``loss_ce`` 1, ``loss_bbox`` 5, ``loss_giou`` 2) and named as transformers and the
official code name them: ``loss_{ce,bbox,giou}`` (last layer), ``..._{i}`` (decoder layer i of the earlier ones),
``..._enc`` (encoder proposals). The official ``class_error`` / ``cardinality_error`` are logging only (not losses)
and are not returned: the trainer sums every returned term.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.losses.matcher import HungarianMatcher
from zoo.losses.targets import Indices, box_losses, check_targets, count_boxes, gather_matched
from zoo.losses.varifocal import paired_iou

__all__ = ["LWDETRCriterion", "ia_bce_loss", "group_match"]

#: official loss weights (rf-detr ``cls_loss_coef`` 1, ``bbox_loss_coef`` 5, ``giou_loss_coef`` 2)
WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def ia_bce_loss(logits: torch.Tensor, positives: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                iou: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Per-element IoU-aware BCE (LW-DETR), shaped like ``logits``. ``positives``: (batch, query, class) indices of
    the matched pairs; ``iou``: their boxes' IoU with the target. Written with ``logsigmoid`` as rf-detr does
    (``-w_pos log p - w_neg log(1-p) = w_neg x - logsigmoid(x) (w_pos + w_neg)``)."""
    prob = logits.sigmoid()
    pos_weights = torch.zeros_like(logits)
    neg_weights = prob ** gamma  # not detached, as the official code
    quality = (prob[positives].pow(alpha) * iou.detach().pow(1 - alpha)).clamp(min=0.01).detach()
    pos_weights[positives] = quality
    neg_weights[positives] = 1 - quality
    return neg_weights * logits - F.logsigmoid(logits) * (pos_weights + neg_weights)


def group_match(matcher: nn.Module, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]],
                groups: int) -> Indices:
    """Group DETR matching: ``matcher`` on each of ``groups`` equal slices of the queries; per image the matches of
    group 0, then group 1 (query indices offset by its slice), ... (the official order)."""
    num_queries = outputs["pred_logits"].shape[1]
    if num_queries % groups:
        raise ValueError(f"{num_queries} queries do not split into {groups} Group DETR groups; the model must "
                         f"return num_queries x group_detr queries in training mode")
    size = num_queries // groups
    per_group = [matcher({k: outputs[k][:, g * size:(g + 1) * size] for k in ("pred_logits", "pred_boxes")},
                         targets) for g in range(groups)]
    return [(torch.cat([m[i][0] + g * size for g, m in enumerate(per_group)]),
             torch.cat([m[i][1] for m in per_group])) for i in range(len(targets))]


class LWDETRCriterion(nn.Module):
    """LW-DETR / RF-DETR training loss: ``forward(outputs, targets)`` -> dict of *weighted* terms to sum (see the
    module doc). ``outputs``: ``pred_logits`` ``[B, Q * group_detr, C]``, ``pred_boxes`` (normalised cxcywh), and
    optionally ``aux_outputs`` (list of the same per earlier decoder layer) and ``enc_outputs`` (the same for the
    two-stage proposals). targets: per image ``{"labels": LongTensor[n] (0..C-1), "boxes": Tensor[n, 4] normalised
    cxcywh}``. In eval mode (``criterion.eval()``) the queries are one group."""

    def __init__(self, num_classes: int, group_detr: int = 13, matcher: HungarianMatcher | None = None,
                 weight_dict: dict[str, float] | None = None, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        if not isinstance(group_detr, int) or group_detr < 1:
            raise ValueError(f"group_detr must be a positive int, got {group_detr!r}")
        self.num_classes, self.group_detr, self.alpha, self.gamma = num_classes, group_detr, alpha, gamma
        self.matcher = matcher or HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, use_focal=True,
                                                   alpha=0.25, gamma=2.0)
        self.weight_dict = dict(weight_dict or WEIGHTS)
        missing = set(WEIGHTS) - set(self.weight_dict)
        if missing:
            raise ValueError(f"weight_dict needs a weight for {sorted(missing)}")

    def forward(self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        check_targets(targets, outputs["pred_logits"].shape[0], self.num_classes,
                      "map dataset category ids to contiguous labels (zoo.data.CocoDetection does)")
        device, dtype = outputs["pred_boxes"].device, torch.promote_types(outputs["pred_boxes"].dtype, torch.float32)
        targets = [{"labels": t["labels"].to(device), "boxes": t["boxes"].to(device=device, dtype=dtype)}
                   for t in targets]
        groups = self.group_detr if self.training else 1
        num_boxes = count_boxes(targets, device, scale=groups)
        heads = [("", outputs)] + [(f"_{i}", out) for i, out in enumerate(outputs.get("aux_outputs", []))]
        if outputs.get("enc_outputs") is not None:
            heads.append(("_enc", outputs["enc_outputs"]))
        losses: dict[str, torch.Tensor] = {}
        for suffix, out in heads:
            terms = self._terms(out, targets, group_match(self.matcher, out, targets, groups), num_boxes)
            losses.update({k + suffix: v * self.weight_dict[k] for k, v in terms.items()})
        return losses

    def _terms(self, out: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]], indices: Indices,
               num_boxes: float) -> dict[str, torch.Tensor]:
        logits, boxes = out["pred_logits"], out["pred_boxes"]
        if logits.element_size() < 4:  # AMP outputs (bf16 / fp16): the sums over all queries in float32
            logits, boxes = logits.float(), boxes.float()
        batch_idx, query_idx, labels, tgt_boxes = gather_matched(targets, indices, logits.device)
        src_boxes = boxes[batch_idx, query_idx]
        iou = paired_iou(src_boxes.detach(), tgt_boxes).to(logits.dtype)
        ce = ia_bce_loss(logits, (batch_idx, query_idx, labels), iou, self.alpha, self.gamma)
        loss_bbox, loss_giou = box_losses(src_boxes, tgt_boxes, num_boxes)
        return {"loss_ce": ce.sum() / num_boxes, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
