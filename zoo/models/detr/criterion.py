"""DETR criterion (facebookresearch/detr ``SetCriterion``): Hungarian matching, then cross-entropy with a
down-weighted no-object class, L1 and GIoU on the matched boxes, on the last and every auxiliary decoder layer."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.losses.matcher import HungarianMatcher
from zoo.losses.targets import Indices, box_losses, check_targets, count_boxes, gather_matched

__all__ = ["SetCriterion"]


class SetCriterion(nn.Module):
    """DETR training loss.

    forward(outputs, targets) -> dict of *weighted* loss terms; their sum is the training loss. Keys
    ``loss_{ce,bbox,giou}`` for the last layer and ``..._aux_{i}`` for ``outputs["aux_outputs"][i]``; each head
    is matched on its own. Unweighted values are ``term / weight_dict[name]``.

    ``num_classes`` follows the reference convention: the largest class id + 1 (91 for COCO, whose ids run to
    90), and the logits have ``num_classes + 1`` columns, the last being no-object with weight ``eos_coef``.
    targets: per image ``{"labels": LongTensor[n] in [0, num_classes), "boxes": Tensor[n, 4] normalised cxcywh}``.
    The box count used for normalisation is averaged over processes when ``torch.distributed`` is initialised.
    """

    def __init__(self, num_classes: int = 91, matcher: HungarianMatcher | None = None, eos_coef: float = 0.1,
                 weight_dict: dict[str, float] | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, use_focal=False)
        self.weight_dict = dict(weight_dict or {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0})
        self.eos_coef = eos_coef
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def forward(self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        self._check(outputs, targets)
        device = outputs["pred_logits"].device
        targets = [{"labels": t["labels"].to(device), "boxes": t["boxes"].to(device=device, dtype=torch.float32)}
                   for t in targets]
        num_boxes = count_boxes(targets, device)
        heads = [("", outputs)] + [(f"_aux_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        losses: dict[str, torch.Tensor] = {}
        for suffix, out in heads:
            indices = self.matcher(out, targets)
            losses.update(self._terms(out, targets, indices, num_boxes, suffix))
        return losses

    def _check(self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]) -> None:
        logits = outputs["pred_logits"]
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(f"pred_logits has {logits.shape[-1]} columns; a criterion with num_classes="
                             f"{self.num_classes} expects {self.num_classes + 1} (classes + no-object)")
        check_targets(targets, logits.shape[0], self.num_classes,
                      "DETR COCO models take the raw COCO category ids (1..90) with num_classes=91")

    def _terms(self, out: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]], indices: Indices,
               num_boxes: float, suffix: str) -> dict[str, torch.Tensor]:
        logits, boxes = out["pred_logits"].float(), out["pred_boxes"].float()
        device = logits.device
        batch_idx, query_idx, tgt_labels, tgt_boxes = gather_matched(targets, indices, device)
        src_boxes = boxes[batch_idx, query_idx]

        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=device)
        target_classes[batch_idx, query_idx] = tgt_labels
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight.to(device))
        loss_bbox, loss_giou = box_losses(src_boxes, tgt_boxes, num_boxes)
        terms = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
        return {k + suffix: v * self.weight_dict[k] for k, v in terms.items()}

    @staticmethod
    @torch.no_grad()
    def cardinality_error(outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Mean absolute error between the number of non-no-object predictions and of targets (for logging)."""
        logits = outputs["pred_logits"]
        predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
        expected = torch.as_tensor([float(len(t["labels"])) for t in targets], device=logits.device)
        return F.l1_loss(predicted, expected)
