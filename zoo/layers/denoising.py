"""Contrastive denoising (CDN) queries for the training of RT-DETR-lineage decoders (DINO / RT-DETR recipe; RT-DETR
and D-FINE share it, so it lives in zoo.layers).

Ground-truth boxes are copied into ``num_group`` groups of positive and negative queries: positives get box noise
below half the box size (the decoder must reconstruct the box), negatives between one and two half-sizes (the
decoder must call them background); labels are flipped at random with probability ``label_noise_ratio / 2``.
An attention mask keeps the matching queries from seeing the denoising ones and the groups from seeing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.ops import box_convert

from zoo.layers.query_selection import inverse_sigmoid

__all__ = ["DenoisingQueries", "build_denoising_queries", "denoising_attn_mask", "denoising_indices"]


@dataclass
class DenoisingQueries:
    """Contrastive denoising queries prepended to the decoder input during training (built by the loss code)."""
    class_embed: torch.Tensor  # [B, num_dn, D]
    boxes_unact: torch.Tensor  # [B, num_dn, 4], inverse-sigmoid space
    attn_mask: torch.Tensor    # [num_dn + num_queries, num_dn + num_queries], True = blocked
    meta: dict[str, Any]       # dn_num_split, dn_num_group, dn_positive_idx


def denoising_attn_mask(group_size: int, num_group: int, num_queries: int,
                        device: torch.device | None = None) -> torch.Tensor:
    """``[n_dn + Q, n_dn + Q]`` bool mask, True = blocked: each denoising group sees only itself (and the
    matching queries); the matching queries see no denoising query."""
    num_dn = group_size * num_group
    mask = torch.zeros(num_dn + num_queries, num_dn + num_queries, dtype=torch.bool, device=device)
    mask[num_dn:, :num_dn] = True
    group = torch.arange(num_dn, device=device) // group_size
    mask[:num_dn, :num_dn] = group[:, None] != group[None, :]
    return mask


def build_denoising_queries(targets: list[dict[str, torch.Tensor]], decoder: nn.Module,
                            num_denoising: int | None = None, label_noise_ratio: float | None = None,
                            box_noise_scale: float | None = None) -> DenoisingQueries | None:
    """Build the denoising queries for one batch, or None when there is nothing to denoise.

    targets: per image ``{"labels": LongTensor[n], "boxes": Tensor[n, 4] normalised cxcywh}``.
    decoder (RT-DETR's or D-FINE's): supplies ``denoising_class_embed``, ``num_queries``, ``num_classes`` and the noise defaults
    (``num_denoising``, ``label_noise_ratio``, ``box_noise_scale``), any of which may be overridden here.

    Returns None when denoising is off (``num_denoising <= 0``) or no image has a box. An image with more boxes
    than ``num_denoising`` denoises a random subset of ``num_denoising`` of them (the query count stays bounded);
    ``meta["dn_gt_idx"]`` lists, per image, which target boxes the positive queries reconstruct.
    """
    num_denoising = decoder.num_denoising if num_denoising is None else num_denoising
    label_noise_ratio = decoder.label_noise_ratio if label_noise_ratio is None else label_noise_ratio
    box_noise_scale = decoder.box_noise_scale if box_noise_scale is None else box_noise_scale
    if num_denoising <= 0 or not targets:
        return None
    if not hasattr(decoder, "denoising_class_embed"):
        raise ValueError("this decoder was built with num_denoising=0 and has no denoising_class_embed; "
                         "build the model with num_denoising > 0 or pass num_denoising=0 here")
    num_classes = decoder.num_classes
    embed = decoder.denoising_class_embed
    device = embed.weight.device

    gt_idx = []
    for t in targets:
        n = len(t["labels"])
        idx = torch.arange(n, device=device)
        if n > num_denoising:  # too many boxes for the budget: denoise a random subset
            idx = torch.randperm(n, device=device)[:num_denoising].sort().values
        gt_idx.append(idx)
    counts = [len(i) for i in gt_idx]
    max_gt = max(counts)
    if max_gt == 0:
        return None
    num_group = max(num_denoising // max_gt, 1)
    bs = len(targets)

    labels = torch.full((bs, max_gt), num_classes, dtype=torch.int32, device=device)
    boxes = torch.zeros(bs, max_gt, 4, device=device)
    valid = torch.zeros(bs, max_gt, dtype=torch.bool, device=device)
    for i, (t, idx) in enumerate(zip(targets, gt_idx)):
        labels[i, :len(idx)] = t["labels"].to(device)[idx].to(torch.int32)
        boxes[i, :len(idx)] = t["boxes"].to(device=device, dtype=boxes.dtype)[idx]
        valid[i, :len(idx)] = True

    # layout per group: [max_gt positives, max_gt negatives], groups one after another
    reps = 2 * num_group
    labels, boxes, valid = labels.repeat(1, reps), boxes.repeat(1, reps, 1), valid.repeat(1, reps)
    negative = (torch.arange(reps * max_gt, device=device) // max_gt) % 2 == 1  # [n_dn]
    positive_idx = [torch.nonzero(~negative & v).flatten() for v in valid]

    if label_noise_ratio > 0:
        flip = torch.rand_like(labels, dtype=torch.float) < label_noise_ratio * 0.5
        random_labels = torch.randint_like(flip, 0, num_classes, dtype=labels.dtype)
        labels = torch.where(flip & valid, random_labels, labels)

    if box_noise_scale > 0:
        corners = box_convert(boxes, "cxcywh", "xyxy")
        half_size = boxes[..., 2:].repeat(1, 1, 2) * 0.5 * box_noise_scale
        sign = torch.randint_like(boxes, 0, 2) * 2.0 - 1.0
        magnitude = torch.rand_like(boxes) + negative[None, :, None].to(boxes.dtype)  # [0,1) pos, [1,2) neg
        corners = (corners + sign * magnitude * half_size).clamp(0.0, 1.0)
        boxes = box_convert(corners, "xyxy", "cxcywh")
    boxes_unact = inverse_sigmoid(boxes)

    meta = {"dn_positive_idx": positive_idx, "dn_num_group": num_group,
            "dn_num_split": [reps * max_gt, decoder.num_queries], "dn_gt_idx": gt_idx}
    attn_mask = denoising_attn_mask(2 * max_gt, num_group, decoder.num_queries, device)
    return DenoisingQueries(class_embed=embed(labels), boxes_unact=boxes_unact, attn_mask=attn_mask, meta=meta)


def denoising_indices(meta: dict[str, Any], targets: list[dict[str, torch.Tensor]]
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Denoising query ``k`` of group ``g`` reconstructs target ``gt_idx[k]``: pair them up per image."""
    indices = []
    for i, t in enumerate(targets):
        device = t["labels"].device
        gt_idx = meta["dn_gt_idx"][i] if "dn_gt_idx" in meta else torch.arange(len(t["labels"]))
        gt_idx = gt_idx.to(device).repeat(meta["dn_num_group"])
        query_idx = meta["dn_positive_idx"][i].to(device)
        if len(query_idx) != len(gt_idx):
            raise ValueError(f"dn_meta has {len(query_idx)} positive queries for image {i} but its "
                             f"{len(gt_idx) // max(meta['dn_num_group'], 1)} boxes x {meta['dn_num_group']} groups "
                             "need as many: build the denoising queries from these targets")
        indices.append((query_idx, gt_idx))
    return indices
