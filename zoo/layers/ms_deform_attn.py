"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch, as RT-DETR and RT-DETRv2 use it.

Two sampling methods: ``"default"`` interpolates bilinearly with ``grid_sample``; ``"discrete"`` (RT-DETRv2)
takes the value of one pixel per sampling point with a gather, for inference engines without GridSample.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSDeformableAttention", "ms_deform_attn_core", "SAMPLING_METHODS"]

SAMPLING_METHODS = ("default", "discrete")


def _check_method(method: str) -> None:
    if method not in SAMPLING_METHODS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {SAMPLING_METHODS}")


def _discrete_sample(value: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
    """Value of the pixel at index ``floor(location * size + 0.5)``, clamped to the map, per sampling point.

    This is RT-DETRv2's rounding (official code and transformers): the pixel whose top-left corner is nearest,
    i.e. nearest-centre sampling of the point moved half a pixel right and down. Kept as is, since checkpoints
    trained with discrete sampling expect it.
    value ``[N, C, H, W]``, locations ``[N, Q, P, 2]`` in [0, 1] -> ``[N, C, Q, P]``.
    """
    n, channels, h, w = value.shape
    x = (locations[..., 0] * w + 0.5).to(torch.int64).clamp(0, w - 1)
    y = (locations[..., 1] * h + 0.5).to(torch.int64).clamp(0, h - 1)
    index = (y * w + x).flatten(1)  # [N, Q * P]
    sampled = value.flatten(2).gather(2, index[:, None].expand(-1, channels, -1))
    return sampled.view(n, channels, *locations.shape[1:3])


def ms_deform_attn_core(value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]],
                        sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                        num_points: Sequence[int], method: str = "default") -> torch.Tensor:
    """Sample ``value`` at ``sampling_locations`` (in [0, 1]) per level and sum with ``attention_weights``.

    value ``[B, sum(HW), heads, C]``; sampling_locations ``[B, Q, heads, sum(num_points), 2]`` and
    attention_weights ``[B, Q, heads, sum(num_points)]``, level-major (the points of level 0 first);
    num_points: points per level -> ``[B, Q, heads * C]``.
    """
    _check_method(method)
    bs, _, heads, channels = value.shape
    num_queries = sampling_locations.shape[1]
    locations = sampling_locations.transpose(1, 2).flatten(0, 1).split(list(num_points), dim=2)
    sampled = []
    start = 0
    for level, (h, w) in enumerate(spatial_shapes):
        # slices rather than split(sizes): with traced sizes the exported graph stays size-independent
        value_l = value[:, start:start + h * w].flatten(2).transpose(1, 2).reshape(bs * heads, channels, h, w)
        start = start + h * w
        if method == "discrete":
            sampled.append(_discrete_sample(value_l, locations[level]))
        else:
            sampled.append(F.grid_sample(value_l, 2 * locations[level] - 1, mode="bilinear", padding_mode="zeros",
                                         align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(bs * heads, 1, num_queries, -1)
    out = (torch.cat(sampled, dim=-1) * weights).sum(-1)
    return out.view(bs, heads * channels, num_queries).transpose(1, 2)


def _points_per_level(num_points: int | Sequence[int], num_levels: int) -> list[int]:
    """``num_points`` as a per-level list: an int applies to every level, a list must have one entry per level."""
    points = [num_points] * num_levels if not isinstance(num_points, (list, tuple)) else list(num_points)
    if len(points) != num_levels or not all(type(n) is int and n >= 1 for n in points):
        raise ValueError(f"num_points must be a positive int or {num_levels} positive ints (one per level), "
                         f"got {num_points!r}")
    return points


class MSDeformableAttention(nn.Module):
    """Deformable cross-attention over ``num_levels`` feature maps with box (cx, cy, w, h) references.

    Sampling location = ref_xy + offset * num_points_scale * ref_wh * offset_scale, where ``num_points_scale``
    is 1/n for each of the n points of a level. With one ``num_points`` for all levels and offset_scale 0.5
    this is RT-DETR's ``offset / n_points * ref_wh * 0.5``; RT-DETRv2 adds per-level point counts
    (``num_points=[4, 4, 2]``) and ``method="discrete"``. The scale is a buffer; RT-DETRv2 checkpoints store it
    (``persistent_points_scale=True``), RT-DETR ones do not. ``projections=False`` (D-FINE) samples the memory as it
    is: no value and output projections.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 3,
                 num_points: int | Sequence[int] = 4, method: str = "default", offset_scale: float = 0.5,
                 persistent_points_scale: bool = False, projections: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        _check_method(method)
        self.embed_dim, self.num_heads, self.num_levels = embed_dim, num_heads, num_levels
        self.num_points_list = _points_per_level(num_points, num_levels)
        self.method, self.offset_scale = method, offset_scale
        scale = [1.0 / n for n in self.num_points_list for _ in range(n)]
        self.register_buffer("num_points_scale", torch.tensor(scale, dtype=torch.float32),
                             persistent=persistent_points_scale)
        total = num_heads * sum(self.num_points_list)
        self.sampling_offsets = nn.Linear(embed_dim, total * 2)
        self.attention_weights = nn.Linear(embed_dim, total)
        self.value_proj = nn.Linear(embed_dim, embed_dim) if projections else nn.Identity()
        self.output_proj = nn.Linear(embed_dim, embed_dim) if projections else nn.Identity()
        self.reset_parameters()
        if method == "discrete":  # no gradient reaches the offsets through integer pixel indices
            self.sampling_offsets.requires_grad_(False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        # point k (1-based) of every level starts k steps out along its head's direction
        steps = torch.cat([torch.arange(1, n + 1, dtype=torch.float32) for n in self.num_points_list])
        self.sampling_offsets.bias.copy_((grid[:, None, :] * steps[None, :, None]).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            if isinstance(proj, nn.Linear):
                nn.init.xavier_uniform_(proj.weight)
                nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, reference_boxes: torch.Tensor, value: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]], value_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query ``[B, Q, D]``, reference_boxes ``[B, Q, 1, 4]`` (normalised cxcywh), value ``[B, sum(HW), D]``."""
        bs, num_queries, _ = query.shape
        value = self.value_proj(value)
        if value_mask is not None:
            value = value.masked_fill(~value_mask[..., None], 0.0)
        value = value.view(bs, value.shape[1], self.num_heads, self.embed_dim // self.num_heads)
        shape = (bs, num_queries, self.num_heads, sum(self.num_points_list))
        offsets = self.sampling_offsets(query).view(*shape, 2)
        weights = F.softmax(self.attention_weights(query).view(shape), -1)
        ref = reference_boxes[:, :, None]
        scale = self.num_points_scale.to(query.dtype)[:, None]
        locations = ref[..., :2] + offsets * scale * ref[..., 2:] * self.offset_scale
        return self.output_proj(ms_deform_attn_core(value, spatial_shapes, locations, weights, self.num_points_list,
                                                    self.method))
