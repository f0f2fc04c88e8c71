"""D-FINE criterion: VFL + L1 + GIoU + the Fine-grained Localization loss (FGL: a two-bin distribution focal loss
towards the ground-truth edge distances in W(n) bins, weighted by IoU) + the Decoupled Distillation Focal loss
(DDF, GO-LSD: every earlier layer's bin distributions distilled from the last layer's, KL at temperature 5,
weighted by IoU for matched queries and by the teacher's confidence for the rest).

Two matchings (``matching``):
- ``"union"`` (default; Peterande/D-FINE ``DFINECriterion``, how the released models were trained): the box and
  localisation losses of every layer use the union of the matches of all layers and the encoder (GO-LSD), the
  first layer's pre-refinement boxes are supervised (``_pre``), the last layer gets FGL, and DDF's positive /
  negative balance uses ``8 / batch`` (the official per-GPU batch), the denoising layers reusing the last
  matching layer's (as the official code's state does); equal to the official criterion term by term;
- ``"per_layer"``: each head with its own matches. With ``style="transformers"`` (its default) transformers'
  ``DFineLoss`` (no ``_pre`` terms, no FGL on the last layer, DDF balance ``1 / batch``), term by term equal to it
  (tests/models/dfine/test_dfine_criterion.py); with ``style="official"`` the official criteria's
  ``use_uni_set: False`` (DEIMv2 Atto/Femto/Pico).

Terms whose weight ``weight_dict`` leaves out are not computed (the official ``losses`` list: DEIMv2's light sizes
train without FGL and DDF).

Terms are weighted and named as transformers names them: ``loss_{vfl,bbox,giou,fgl,ddf}`` (last layer),
``..._aux_{i}`` (earlier layers, then the encoder top-k as ``_aux_{L-1}``), ``..._dn_{i}`` (denoising), and in
``"union"`` mode ``..._pre`` / ``..._dn_pre``. Official weights: vfl 1, bbox 5, giou 2, fgl 0.15, ddf 1.5.

DEIM and DEIMv2 train the same outputs with the same union matching (DEIM's "dense one-to-one") and replace VFL by
the Matchability-Aware Loss: ``cls_loss="mal"`` (term ``loss_mal``, weight 1; DEIM's ``gamma`` 1.5, ``mal_alpha``
none). DEIMv2 also switches the matcher late in training to the cost ``-(p * IoU**4)`` (``matcher_change_epoch``;
the trainer tells the criterion the epoch through :meth:`DFINECriterion.set_epoch`). ``style`` says whose
conventions the union follows: ``"official"`` (the repos' ``DEIMCriterion`` / ``DFINECriterion``: the ``_pre``
terms, FGL on the last layer, DDF balance ``8 / batch``) or ``"transformers"`` (``Deimv2Loss`` with
``use_dense_one_to_one``: none of those, the union over the last layer, the earlier ones and the encoder).
:data:`DEIM_LOSS` and :data:`DEIMV2_LOSS` hold their settings.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert

from zoo.layers.denoising import denoising_indices
from zoo.losses.matcher import HungarianMatcher
from zoo.losses.targets import Indices, box_losses, check_targets, count_boxes, gather_matched
from zoo.losses.varifocal import matchability_aware_loss, paired_iou, varifocal_loss
from zoo.models.dfine.decoder import weighting_function

__all__ = ["DFINECriterion", "bbox_to_distance", "DEIM_LOSS", "DEIMV2_LOSS", "DEIMV2_MATCHER_CHANGE_EPOCH"]

MATCHINGS = ("union", "per_layer")
STYLES = ("official", "transformers")
CLS_LOSSES = ("vfl", "mal")
#: DEIM's loss (ShihuaHuang95/DEIM configs/base/deim.yml ``DEIMCriterion``)
DEIM_LOSS = {"cls_loss": "mal", "gamma": 1.5, "mal_alpha": None}
#: DEIMv2's (Intellindust-AI-Lab/DEIMv2 configs/base/deimv2.yml): DEIM's, and from ``matcher_change_epoch`` on the
#: matching cost ``-(p * IoU**4)``; pass ``matcher_change_epoch=DEIMV2_MATCHER_CHANGE_EPOCH[size]``
DEIMV2_LOSS = {**DEIM_LOSS, "iou_order": 4.0}
#: ``matcher_change_epoch`` of configs/deimv2/deimv2_{hgnetv2_atto,...,dinov3_x}_coco.yml (L and X: 50 and the
#: base's 45), 0-based epochs as the official ``epoch >= matcher_change_epoch``
DEIMV2_MATCHER_CHANGE_EPOCH = {"atto": 450, "femto": 450, "pico": 450, "n": 136, "s": 100, "m": 80, "l": 50, "x": 45}


def _translate(gt: torch.Tensor, reg_max: int, reg_scale: torch.Tensor, up: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distances -> (left bin index (float), weight of the right bin, weight of the left bin) on W(n)."""
    gt = gt.reshape(-1)
    values = weighting_function(reg_max, up, reg_scale)
    indices = ((values[None] - gt[:, None]) <= 0).sum(1).to(gt.dtype) - 1
    weight_right, weight_left = torch.zeros_like(indices), torch.zeros_like(indices)
    valid = (indices >= 0) & (indices < reg_max)
    left_idx = indices[valid].long()
    left_diff = (gt[valid] - values[left_idx]).abs()
    right_diff = (values[left_idx + 1] - gt[valid]).abs()
    weight_right[valid] = left_diff / (left_diff + right_diff)
    weight_left[valid] = 1.0 - weight_right[valid]
    below, above = indices < 0, indices >= reg_max
    weight_right[below], weight_left[below], indices[below] = 0.0, 1.0, 0.0
    weight_right[above], weight_left[above], indices[above] = 1.0, 0.0, reg_max - 0.1
    return indices, weight_right, weight_left


def bbox_to_distance(points: torch.Tensor, boxes_xyxy: torch.Tensor, reg_max: int, reg_scale: torch.Tensor,
                     up: torch.Tensor, eps: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ground-truth edge distances from reference boxes ``points`` (cxcywh) as FGL targets: bin positions
    (clamped below ``reg_max``) and the interpolation weights of the two bins around each."""
    reg_scale = reg_scale.abs()
    left = (points[:, 0] - boxes_xyxy[:, 0]) / (points[:, 2] / reg_scale + 1e-16) - 0.5 * reg_scale
    top = (points[:, 1] - boxes_xyxy[:, 1]) / (points[:, 3] / reg_scale + 1e-16) - 0.5 * reg_scale
    right = (boxes_xyxy[:, 2] - points[:, 0]) / (points[:, 2] / reg_scale + 1e-16) - 0.5 * reg_scale
    bottom = (boxes_xyxy[:, 3] - points[:, 1]) / (points[:, 3] / reg_scale + 1e-16) - 0.5 * reg_scale
    indices, weight_right, weight_left = _translate(torch.stack([left, top, right, bottom], -1), reg_max,
                                                    reg_scale, up)
    return indices.clamp(0, reg_max - eps).detach(), weight_right.detach(), weight_left.detach()


class DFINECriterion(nn.Module):
    """D-FINE training loss: ``forward(outputs, targets)`` -> dict of *weighted* terms to sum (see module doc).

    targets: per image ``{"labels": LongTensor[n] (0..C-1), "boxes": Tensor[n, 4] normalised cxcywh}``.
    """

    def __init__(self, num_classes: int, reg_max: int = 32, matcher: HungarianMatcher | None = None,
                 weight_dict: dict[str, float] | None = None, alpha: float = 0.75, gamma: float = 2.0,
                 matching: str = "union", temperature: float = 5.0, cls_loss: str = "vfl",
                 mal_alpha: float | None = None, style: str | None = None, matcher_change_epoch: int | None = None,
                 iou_order: float = 4.0):
        super().__init__()
        if matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {MATCHINGS}, got {matching!r}")
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"cls_loss must be one of {CLS_LOSSES}, got {cls_loss!r}")
        style = style or ("official" if matching == "union" else "transformers")
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        self.num_classes, self.reg_max, self.matching, self.style = num_classes, reg_max, matching, style
        self.matcher = matcher or HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, use_focal=True,
                                                   alpha=0.25, gamma=2.0)
        self.cls_loss = cls_loss
        self.weight_dict = dict(weight_dict or {f"loss_{cls_loss}": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0,
                                                "loss_fgl": 0.15, "loss_ddf": 1.5})
        terms = (f"loss_{cls_loss}", "loss_bbox", "loss_giou", "loss_fgl", "loss_ddf")
        unknown = sorted(set(self.weight_dict) - set(terms))
        if unknown:
            raise ValueError(f"weight_dict has unknown terms {unknown} (cls_loss={cls_loss!r}); it may weigh "
                             f"{', '.join(terms)} (a term left out is not computed)")
        if f"loss_{cls_loss}" not in self.weight_dict:
            raise ValueError(f"weight_dict has no weight for loss_{cls_loss} (cls_loss={cls_loss!r}): "
                             f"{sorted(self.weight_dict)}")
        self.alpha, self.gamma, self.mal_alpha, self.temperature = alpha, gamma, mal_alpha, temperature
        self.ddf_batch_scale = 8.0 if style == "official" else 1.0
        #: DEIMv2: from this epoch on (0-based, as :meth:`set_epoch` counts) match by ``-(p * IoU**iou_order)``
        self.matcher_change_epoch = matcher_change_epoch
        self.late_matcher = HungarianMatcher(iou_order=iou_order) if matcher_change_epoch is not None else None
        self.epoch = 0
        self._balance: tuple[torch.Tensor, torch.Tensor] | None = None

    def set_epoch(self, epoch: int) -> None:
        """The training epoch (0-based) about to run: DEIMv2's matcher changes at ``matcher_change_epoch``."""
        self.epoch = int(epoch)

    def _match(self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]) -> Indices:
        late = self.late_matcher is not None and self.epoch >= self.matcher_change_epoch
        return (self.late_matcher if late else self.matcher)(outputs, targets)

    def forward(self, outputs: dict[str, Any], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        check_targets(targets, outputs["pred_logits"].shape[0], self.num_classes,
                      "map dataset category ids to contiguous labels (zoo.data.CocoDetection does)")
        device = outputs["pred_logits"].device
        dtype = outputs["pred_boxes"].dtype
        targets = [{"labels": t["labels"].to(device), "boxes": t["boxes"].to(device=device, dtype=dtype)}
                   for t in targets]
        num_boxes = count_boxes(targets, device)
        up, reg_scale = outputs.get("up"), outputs.get("reg_scale")
        aux = list(outputs.get("aux_outputs", []))
        enc = outputs.get("enc_outputs")
        union, official = self.matching == "union", self.style == "official"
        self._balance = None  # official: the denoising DDF reuses the last layer's positive/negative balance
        indices = self._match(outputs, targets)
        aux_indices = [self._match(out, targets) for out in aux]
        pre_indices = self._match(outputs["pre_outputs"], targets) if official and "pre_outputs" in outputs else None
        enc_indices = self._match(enc, targets) if enc is not None else None
        if union:
            go = self._union(indices, [*aux_indices, *([pre_indices] if pre_indices else []),
                                       *([enc_indices] if enc_indices else [])])
            num_go = count_boxes([{"labels": q} for q, _ in go], device)
        losses: dict[str, torch.Tensor] = {}

        def add(out: dict, cls_idx: Indices, box_idx: Indices, num_cls: float, num_box: float, suffix: str,
                local: bool = True) -> None:
            terms = self._terms(out, targets, cls_idx, box_idx, num_cls, num_box, up, reg_scale, local,
                                dn=suffix.startswith("_dn"))
            losses.update({k + suffix: v * self.weight_dict[k] for k, v in terms.items() if k in self.weight_dict})

        add(outputs, indices, go if union else indices, num_boxes, num_go if union else num_boxes, "", local=official)
        for i, (out, idx) in enumerate(zip(aux, aux_indices)):
            add(out, idx, go if union else idx, num_boxes, num_go if union else num_boxes, f"_aux_{i}")
        if pre_indices is not None:
            add(outputs["pre_outputs"], pre_indices, go if union else pre_indices, num_boxes,
                num_go if union else num_boxes, "_pre")
        if enc is not None:
            add(enc, enc_indices, go if union else enc_indices, num_boxes, num_go if union else num_boxes,
                f"_aux_{len(aux)}")
        if "dn_outputs" in outputs:
            meta = outputs["dn_meta"]
            dn_idx = denoising_indices(meta, targets)
            dn_boxes = num_boxes * meta["dn_num_group"]
            for i, out in enumerate(outputs["dn_outputs"]):
                add(out, dn_idx, dn_idx, dn_boxes, dn_boxes, f"_dn_{i}")
            if official and "dn_pre_outputs" in outputs:
                add(outputs["dn_pre_outputs"], dn_idx, dn_idx, dn_boxes, dn_boxes, "_dn_pre")
        if official:  # as the official criterion (Objects365 pre-training)
            losses = {k: torch.nan_to_num(v, nan=0.0) for k, v in losses.items()}
        return losses

    @staticmethod
    def _union(indices: Indices, others: list[Indices]) -> Indices:
        """GO-LSD: per image the union of all layers' (query, target) matches; a query matched to several targets
        keeps the one it was matched to most often (ties: the official order)."""
        results = []
        for i, (queries, gts) in enumerate(indices):
            pairs = torch.cat([torch.stack([queries, gts], 1)] + [torch.stack([o[i][0], o[i][1]], 1) for o in others])
            unique, counts = torch.unique(pairs, return_counts=True, dim=0)
            chosen: dict[int, int] = {}
            for row, col in unique[torch.argsort(counts, descending=True)].tolist():
                chosen.setdefault(row, col)
            results.append((torch.tensor(list(chosen), dtype=torch.int64, device=queries.device),
                            torch.tensor(list(chosen.values()), dtype=torch.int64, device=queries.device)))
        return results

    def _terms(self, out: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]], cls_idx: Indices,
               box_idx: Indices, num_cls: float, num_box: float, up: torch.Tensor | None,
               reg_scale: torch.Tensor | None, local: bool, dn: bool = False) -> dict[str, torch.Tensor]:
        logits, boxes = out["pred_logits"], out["pred_boxes"]
        batch_idx, query_idx, tgt_labels, tgt_boxes = gather_matched(targets, cls_idx, logits.device)
        one_hot, score = torch.zeros_like(logits), torch.zeros_like(logits)
        one_hot[batch_idx, query_idx, tgt_labels] = 1.0
        score[batch_idx, query_idx, tgt_labels] = paired_iou(boxes[batch_idx, query_idx].detach(), tgt_boxes)
        if self.cls_loss == "mal":
            cls = matchability_aware_loss(logits, one_hot, score, self.gamma, self.mal_alpha)
        else:
            cls = varifocal_loss(logits, one_hot, score, self.alpha, self.gamma)
        terms = {f"loss_{self.cls_loss}": cls.mean(1).sum() * logits.shape[1] / num_cls}
        batch_idx, query_idx, _, tgt_boxes = gather_matched(targets, box_idx, logits.device)
        src_boxes = boxes[batch_idx, query_idx]
        terms["loss_bbox"], terms["loss_giou"] = box_losses(src_boxes, tgt_boxes, num_box)
        if local and "pred_corners" in out and {"loss_fgl", "loss_ddf"} & set(self.weight_dict):
            terms.update(self._local(out, (batch_idx, query_idx), src_boxes, tgt_boxes, num_box, up, reg_scale, dn))
        return terms

    def _local(self, out: dict[str, torch.Tensor], idx: tuple[torch.Tensor, torch.Tensor], src_boxes: torch.Tensor,
               tgt_boxes: torch.Tensor, num_boxes: float, up: torch.Tensor, reg_scale: torch.Tensor,
               dn: bool = False) -> dict[str, torch.Tensor]:
        bins = self.reg_max + 1
        corners = out["pred_corners"][idx].reshape(-1, bins)
        target, weight_right, weight_left = bbox_to_distance(
            out["ref_points"][idx].detach(), box_convert(tgt_boxes, "cxcywh", "xyxy"), self.reg_max, reg_scale, up)
        ious = paired_iou(src_boxes, tgt_boxes).detach()
        left = target.long()
        fgl = (F.cross_entropy(corners, left, reduction="none") * weight_left
               + F.cross_entropy(corners, left + 1, reduction="none") * weight_right)
        terms = {"loss_fgl": (fgl * ious.repeat_interleave(4)).sum() / num_boxes}
        if "teacher_corners" not in out:
            return terms
        pred = out["pred_corners"].reshape(-1, bins)
        teacher = out["teacher_corners"].reshape(-1, bins)
        if torch.equal(pred, teacher):
            terms["loss_ddf"] = pred.sum() * 0
            return terms
        weight = out["teacher_logits"].sigmoid().max(dim=-1).values
        mask = torch.zeros_like(weight, dtype=torch.bool)
        mask[idx] = True
        weight[idx] = ious.to(weight.dtype)
        mask, weight = mask.repeat_interleave(4, dim=-1).flatten(), weight.repeat_interleave(4, dim=-1).flatten().detach()
        t = self.temperature
        kl = F.kl_div(F.log_softmax(pred / t, dim=1), F.softmax(teacher.detach() / t, dim=1), reduction="none")
        distill = weight * t ** 2 * kl.sum(-1)
        scale = self.ddf_batch_scale / out["pred_boxes"].shape[0]
        num_pos, num_neg = (mask.sum() * scale) ** 0.5, ((~mask).sum() * scale) ** 0.5
        if self.style == "official":  # denoising layers weigh by the last matching layer's balance
            if dn and self._balance is not None:
                num_pos, num_neg = self._balance
            elif not dn:
                self._balance = (num_pos, num_neg)
        pos = distill[mask].mean() if mask.any() else 0
        neg = distill[~mask].mean() if (~mask).any() else 0
        terms["loss_ddf"] = (pos * num_pos + neg * num_neg) / (num_pos + num_neg)
        return terms
