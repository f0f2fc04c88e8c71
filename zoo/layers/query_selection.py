"""Two-stage query selection of the RT-DETR lineage (RT-DETR v1/v2, D-FINE): an anchor per feature-map cell, the
encoder heads on the flattened memory, and the top-k cells by their best class score become the decoder's queries.

Shared here (not in a family folder) because a family may not import another family.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from zoo.layers.topk import topk_lowest_index
from zoo.layers.tracing import is_tracing

__all__ = ["inverse_sigmoid", "anchors", "SelectedQueries", "select_queries"]


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``log(x / (1 - x))`` with both clamped to ``eps`` (the DETR-family definition)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _anchors(shapes: tuple[tuple[int, int], ...], grid_size: float, eps: float, device: torch.device,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors (inverse-sigmoid cxcywh, ``[1, sum(HW), 4]``) and their valid mask; sizes may be traced."""
    anchors = []
    for level, (h, w) in enumerate(shapes):
        # integer aranges, then cast: exact, and the float16 aranges do not export
        gy, gx = torch.meshgrid(torch.arange(h, device=device).to(dtype),
                                torch.arange(w, device=device).to(dtype), indexing="ij")
        size = torch.stack([w, h]) if isinstance(w, torch.Tensor) else torch.tensor([w, h])  # traced or int
        size = size.to(dtype=dtype, device=device)
        xy = (torch.stack([gx, gy], -1) + 0.5) / size
        wh = torch.full_like(xy, grid_size * 2.0 ** level)
        anchors.append(torch.cat([xy, wh], -1).reshape(1, h * w, 4))
    anchors = torch.cat(anchors, 1)
    valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors))
    # finfo.max rather than inf: same result after sigmoid, and exporters/NPUs accept it
    anchors = torch.where(valid, anchors, torch.finfo(dtype).max)
    return anchors, valid


_anchors_cached = functools.lru_cache(maxsize=32)(_anchors)


def anchors(shapes: Sequence[tuple[int, int]], grid_size: float, eps: float, device: torch.device,
            dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors for feature maps of ``shapes``: cached per size, computed in the graph while exporting (traced
    sizes), so an exported model takes any input size."""
    make = _anchors if is_tracing() else _anchors_cached
    return make(tuple(shapes), grid_size, eps, device, dtype)


@dataclass
class SelectedQueries:
    """The top-k encoder cells: their features (the decoder's content queries, not detached), their boxes
    (inverse-sigmoid space) and their encoder logits; ``boxes``/``logits`` are what the encoder loss supervises."""
    content: torch.Tensor    # [B, K, D]
    ref_unact: torch.Tensor  # [B, K, 4]
    logits: torch.Tensor     # [B, K, C]

    @property
    def boxes(self) -> torch.Tensor:
        return self.ref_unact.sigmoid()


def select_queries(memory: torch.Tensor, shapes: Sequence[tuple[int, int]], enc_output: nn.Module,
                   enc_score_head: nn.Module, enc_bbox_head: nn.Module, num_queries: int,
                   anchor_eps: float = 1e-2, grid_size: float = 0.05) -> SelectedQueries:
    """Score every cell of ``memory`` ``[B, sum(HW), D]`` (cells outside the anchors' valid range are zeroed
    first), keep the ``num_queries`` best by their highest class logit, and regress their boxes from the anchors."""
    anchor, valid = anchors(shapes, grid_size, anchor_eps, memory.device, memory.dtype)
    output_memory = enc_output(valid.to(memory.dtype) * memory)
    enc_logits = enc_score_head(output_memory)
    # ties taken lowest index first, as in every exported graph (torch.topk's tie order is its own: on
    # transformers-initialised weights all scores tie and torch and onnxruntime selected other queries)
    topk = topk_lowest_index(enc_logits.max(-1).values, num_queries)[1]

    def gather(t: torch.Tensor) -> torch.Tensor:
        t = t.expand(topk.shape[0], -1, -1)  # anchors are shared by the batch
        return t.gather(1, topk.unsqueeze(-1).expand(-1, -1, t.shape[-1]))

    # the box head is row-wise: running it on the top-k rows only gives the same boxes for ~1/28 of the work
    selected = gather(output_memory)
    return SelectedQueries(selected, enc_bbox_head(selected) + gather(anchor), gather(enc_logits))
