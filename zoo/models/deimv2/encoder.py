"""DEIMv2's LiteEncoder (Intellindust-AI-Lab/DEIMv2 ``engine/deim/lite_encoder.py``) for Atto/Femto/Pico: one
backbone map (stride 16) projected to ``hidden_dim``, a stride-32 map made from it by average pooling + 1x1 conv and
a global-average-pooling fusion (YOLOv6's BiFusion), then one top-down and one bottom-up RepNCSPELAN4 (DEIM's csp2)
fusion by sums. No transformer layer. Keys as the official module."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers.conv import ConvNormLayer, create_act
from zoo.layers.elan import RepNCSPELAN4
from zoo.registry import register_component

__all__ = ["LiteEncoder"]


def _down(hidden_dim: int, act: str) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(3, 2, 1), nn.Conv2d(hidden_dim, hidden_dim, 1, 1, bias=False),
                         nn.BatchNorm2d(hidden_dim), create_act(act))


class GAPFusion(nn.Module):
    """``conv(x + global_avg_pool(x))``."""

    def __init__(self, channels: int, act: str):
        super().__init__()
        self.cv = ConvNormLayer(channels, channels, 1, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv(x + F.adaptive_avg_pool2d(x, 1))


@register_component("encoder", "deimv2_lite")
class LiteEncoder(nn.Module):
    """One stride-16 level in, two levels (strides 16, 32) of ``hidden_dim`` out."""

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int] = (16,), hidden_dim: int = 64,
                 expansion: float = 1.0, depth_mult: float = 1.0, act: str = "silu", csp_type: str = "csp2"):
        super().__init__()
        if len(in_channels) != 1:
            raise ValueError(f"LiteEncoder takes one backbone level, got {len(in_channels)} ({list(in_channels)})")
        self.in_channels, self.hidden_dim = list(in_channels), hidden_dim
        self.out_channels = [hidden_dim, hidden_dim]
        self.strides = [strides[0], 2 * strides[0]]
        self.input_proj = nn.ModuleList(nn.Sequential(OrderedDict([
            ("conv", nn.Conv2d(c, hidden_dim, 1, bias=False)), ("norm", nn.BatchNorm2d(hidden_dim))]))
            for c in in_channels)
        self.down_sample1 = _down(hidden_dim, act)
        self.down_sample2 = _down(hidden_dim, act)
        self.bi_fusion = GAPFusion(hidden_dim, act)
        blocks = round(3 * depth_mult)
        self.fpn_block = RepNCSPELAN4(hidden_dim, hidden_dim, blocks, expansion, act, csp_type)
        self.pan_block = RepNCSPELAN4(hidden_dim, hidden_dim, blocks, expansion, act, csp_type)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != 1:
            raise ValueError(f"LiteEncoder expects 1 feature map, got {len(feats)}")
        high = self.input_proj[0](feats[0])
        low = self.bi_fusion(self.down_sample1(high))
        fpn = self.fpn_block(high + F.interpolate(low, scale_factor=2.0, mode="nearest"))
        return [fpn, self.pan_block(low + self.down_sample2(fpn))]
