"""Multi-scale deformable attention (Deformable DETR), in pure PyTorch with ``grid_sample``."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MSDeformableAttention", "ms_deform_attn_core"]


def ms_deform_attn_core(value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]],
                        sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Sample ``value`` at ``sampling_locations`` (in [0, 1]) per level and sum with ``attention_weights``.

    value ``[B, sum(HW), heads, C]``, sampling_locations ``[B, Q, heads, levels, points, 2]``,
    attention_weights ``[B, Q, heads, levels, points]`` -> ``[B, Q, heads * C]``.
    """
    bs, _, heads, channels = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(bs * heads, channels, h, w)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(bs * heads, 1, num_queries, num_levels * num_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(bs, heads * channels, num_queries).transpose(1, 2)


class MSDeformableAttention(nn.Module):
    """Deformable cross-attention over ``num_levels`` feature maps with box (cx, cy, w, h) references.

    Sampling location = ref_xy + offset / num_points * ref_wh * 0.5, as in RT-DETR.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 3, num_points: int = 4):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.num_levels, self.num_points = embed_dim, num_heads, num_levels, num_points
        total = num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dim, total * 2)
        self.attention_weights = nn.Linear(embed_dim, total)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.reshape(self.num_heads, 1, 1, 2).tile(1, self.num_levels, self.num_points, 1)
        grid *= torch.arange(1, self.num_points + 1, dtype=torch.float32).reshape(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: torch.Tensor, reference_boxes: torch.Tensor, value: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]], value_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query ``[B, Q, D]``, reference_boxes ``[B, Q, 1, 4]`` (normalised cxcywh), value ``[B, sum(HW), D]``."""
        bs, num_queries, _ = query.shape
        value = self.value_proj(value)
        if value_mask is not None:
            value = value.masked_fill(~value_mask[..., None], 0.0)
        value = value.view(bs, value.shape[1], self.num_heads, self.embed_dim // self.num_heads)
        shape = (bs, num_queries, self.num_heads, self.num_levels, self.num_points)
        offsets = self.sampling_offsets(query).view(*shape, 2)
        weights = F.softmax(self.attention_weights(query).view(bs, num_queries, self.num_heads, -1), -1).view(shape)
        ref = reference_boxes[:, :, None, :, None]
        locations = ref[..., :2] + offsets / self.num_points * ref[..., 2:] * 0.5
        return self.output_proj(ms_deform_attn_core(value, spatial_shapes, locations, weights))
