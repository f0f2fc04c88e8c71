"""Hungarian matching between predictions and ground truth (DETR, RT-DETR, D-FINE, DEIM)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_convert, box_iou, generalized_box_iou

__all__ = ["HungarianMatcher"]


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimising ``w_class * class + w_bbox * L1 + w_giou * (-GIoU)``.

    ``use_focal=False``: class cost = -softmax probability (DETR). ``use_focal=True``: the focal cost of
    RT-DETR / Deformable DETR with ``alpha`` and ``gamma`` on sigmoid probabilities. ``iou_order`` (DEIMv2's
    late-training matcher, ``change_matcher``): the cost is ``-(p * IoU**iou_order)`` instead, p the sigmoid
    probability of the target's class (the weights are then unused).
    Targets: ``[{"labels": LongTensor[n], "boxes": Tensor[n, 4] normalised cxcywh}, ...]``.
    Returns one ``(query_indices, target_indices)`` pair of int64 tensors per image.
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 use_focal: bool = False, alpha: float = 0.25, gamma: float = 2.0, iou_order: float | None = None):
        super().__init__()
        if cost_class == cost_bbox == cost_giou == 0:
            raise ValueError("all matcher costs are 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.use_focal, self.alpha, self.gamma, self.iou_order = use_focal, alpha, gamma, iou_order

    @torch.no_grad()
    def forward(self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        bs, num_queries = logits.shape[:2]
        sizes = [len(t["boxes"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in targets]
        logits = logits.flatten(0, 1).float()
        out_boxes = boxes.flatten(0, 1).float()
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(out_boxes)
        if self.iou_order is not None:
            iou = box_iou(box_convert(out_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy"))
            cost = -(logits.sigmoid()[:, tgt_ids] * iou.pow(self.iou_order))
            return self._assign(cost.view(bs, num_queries, -1).cpu(), sizes)
        if self.use_focal:
            prob = logits.sigmoid()[:, tgt_ids]
            neg = (1 - self.alpha) * prob ** self.gamma * -(1 - prob + 1e-8).log()
            pos = self.alpha * (1 - prob) ** self.gamma * -(prob + 1e-8).log()
            cost_class = pos - neg
        else:
            cost_class = -logits.softmax(-1)[:, tgt_ids]
        cost_bbox = torch.cdist(out_boxes, tgt_boxes, p=1)
        cost_giou = -generalized_box_iou(box_convert(out_boxes, "cxcywh", "xyxy"),
                                         box_convert(tgt_boxes, "cxcywh", "xyxy"))
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        return self._assign(cost.view(bs, num_queries, -1).cpu(), sizes)

    @staticmethod
    def _assign(cost: torch.Tensor, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image the assignment of least total cost; ``cost`` is ``[B, Q, all targets]``."""
        if not torch.isfinite(cost).all():
            raise FloatingPointError("matching cost is not finite: check predictions and target boxes for NaN/inf")
        from scipy.optimize import linear_sum_assignment  # here: `import zoo` (and the CLI) need not load scipy

        indices = []
        for i, c in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(c[i])
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
