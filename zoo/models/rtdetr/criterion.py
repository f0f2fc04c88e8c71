"""RT-DETR criterion: Hungarian matching, then varifocal + L1 + GIoU losses on every decoder layer, the encoder
top-k proposals and the contrastive denoising groups (official RT-DETR ``SetCriterion`` semantics)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo.layers.denoising import denoising_indices
from zoo.losses.matcher import HungarianMatcher
from zoo.losses.varifocal import paired_iou, varifocal_loss
from zoo.losses.targets import Indices, box_losses, check_targets, count_boxes, gather_matched

__all__ = ["RTDETRCriterion", "varifocal_loss"]


class RTDETRCriterion(nn.Module):
    """RT-DETR training loss.

    forward(outputs, targets) -> dict of *weighted* loss terms; their sum is the training loss. Keys:
    ``loss_{vfl,bbox,giou}`` (last layer), ``..._aux_{i}`` (earlier decoder layers, ``outputs["aux_outputs"]``),
    ``..._enc`` (encoder top-k, ``outputs["enc_outputs"]``), ``..._dn_{i}`` (denoising, ``outputs["dn_outputs"]``
    with ``outputs["dn_meta"]``, matched to their source boxes instead of by the Hungarian matcher).

    targets: per image ``{"labels": LongTensor[n] (contiguous 0..C-1), "boxes": Tensor[n, 4] normalised cxcywh}``.
    The box count used for normalisation is averaged over processes when ``torch.distributed`` is initialised.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher | None = None,
                 weight_dict: dict[str, float] | None = None, alpha: float = 0.75, gamma: float = 2.0):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, use_focal=True,
                                                   alpha=0.25, gamma=2.0)
        self.weight_dict = dict(weight_dict or {"loss_vfl": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0})
        self.alpha, self.gamma = alpha, gamma

    def forward(self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        check_targets(targets, outputs["pred_logits"].shape[0], self.num_classes,
                      "map dataset category ids to contiguous labels (zoo.data.CocoDetection does)")
        device = outputs["pred_logits"].device
        targets = [{"labels": t["labels"].to(device), "boxes": t["boxes"].to(device=device, dtype=torch.float32)}
                   for t in targets]
        num_boxes = count_boxes(targets, device)
        losses: dict[str, torch.Tensor] = {}
        heads = [("", outputs)]
        heads += [(f"_aux_{i}", aux) for i, aux in enumerate(outputs.get("aux_outputs", []))]
        if "enc_outputs" in outputs:
            heads.append(("_enc", outputs["enc_outputs"]))
        for suffix, out in heads:
            indices = self.matcher(out, targets)
            losses.update(self._terms(out, targets, indices, num_boxes, suffix))
        if "dn_outputs" in outputs:
            meta = outputs["dn_meta"]
            indices = self.denoising_indices(meta, targets)
            for i, out in enumerate(outputs["dn_outputs"]):
                losses.update(self._terms(out, targets, indices, num_boxes * meta["dn_num_group"], f"_dn_{i}"))
        return losses

    @staticmethod
    def denoising_indices(meta: dict[str, Any], targets: list[dict[str, torch.Tensor]]) -> Indices:
        """Denoising query ``k`` of group ``g`` reconstructs target ``gt_idx[k]``: pair them up per image."""
        return denoising_indices(meta, targets)

    def _terms(self, out: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]], indices: Indices,
               num_boxes: float, suffix: str) -> dict[str, torch.Tensor]:
        logits, boxes = out["pred_logits"].float(), out["pred_boxes"].float()
        batch_idx, query_idx, tgt_labels, tgt_boxes = gather_matched(targets, indices, logits.device)
        src_boxes = boxes[batch_idx, query_idx]

        one_hot, score = torch.zeros_like(logits), torch.zeros_like(logits)
        one_hot[batch_idx, query_idx, tgt_labels] = 1.0
        score[batch_idx, query_idx, tgt_labels] = paired_iou(src_boxes.detach(), tgt_boxes)
        vfl = varifocal_loss(logits, one_hot, score, self.alpha, self.gamma)
        # mean over classes, sum over queries and images, per target box
        loss_vfl = vfl.mean(1).sum() * logits.shape[1] / num_boxes
        loss_bbox, loss_giou = box_losses(src_boxes, tgt_boxes, num_boxes)
        terms = {"loss_vfl": loss_vfl, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
        return {k + suffix: v * self.weight_dict[k] for k, v in terms.items()}
