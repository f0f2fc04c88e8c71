"""HybridEncoder of RT-DETR: AIFI (one transformer layer on the stride-32 map) + CCFM (CSP-RepVGG FPN/PAN).

Shared by RT-DETR and D-FINE (whose CCFM plugs in RepNCSPELAN4 fusion and SCDown downsampling blocks, and drops the
lateral convs' activation: ``lateral_act=None``), so it lives in zoo.layers."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers.conv import ConvNormLayer, CSPRepLayer, conv_bn_act
from zoo.layers.position import SINCOS_LAYOUTS, sincos_2d_position_embedding
from zoo.layers.transformer import TransformerEncoder, TransformerEncoderLayer
from zoo.registry import get_component, register_component

__all__ = ["HybridEncoder"]


@register_component("encoder", "hybrid")
class HybridEncoder(nn.Module):
    """Project each level to ``hidden_dim``, run AIFI on ``use_encoder_idx`` levels, then fuse top-down and bottom-up.

    The CCFM blocks are pluggable by registered name: ``fusion_block`` (default :class:`CSPRepLayer`) is called as
    ``block(2 * hidden, hidden, num_blocks=..., expansion=..., act=..., **fusion_args)`` and
    ``downsample_block`` (default :func:`conv_bn_act`) as
    ``block(hidden, hidden, stride=2, act=..., **downsample_args)``;
    zoo.layers.akconv registers the AKConv alternatives.
    ``lateral_act``: the top-down lateral 1x1 convs' activation, ``"same"`` (``act``, RT-DETR) or None (D-FINE).
    ``fuse_op``: how the CCFM merges the upsampled / downsampled map with the lateral one, ``"cat"`` (RT-DETR,
    D-FINE: the block takes ``2 * hidden_dim`` channels) or ``"sum"`` (DEIMv2: ``hidden_dim``).
    ``identity_proj``: no input projection where a level is already ``hidden_dim`` wide (DEIMv2's DINOv3 variants).
    ``pe_layout``: the AIFI position embedding's layout on non-square maps, ``"transformers"`` (rows and columns as
    they are) or ``"official"`` (lyuwenyu/RT-DETR's, which swaps them); see ``sincos_2d_position_embedding``.
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int] = (8, 16, 32), hidden_dim: int = 256,
                 num_heads: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0, enc_act: str = "gelu",
                 use_encoder_idx: Sequence[int] = (2,), num_encoder_layers: int = 1, pe_temperature: float = 10000.0,
                 expansion: float = 1.0, depth_mult: float = 1.0, act: str = "silu",
                 fusion_block: str = CSPRepLayer.component_name, fusion_args: dict[str, Any] | None = None,
                 downsample_block: str = conv_bn_act.component_name, downsample_args: dict[str, Any] | None = None,
                 pe_layout: str = "transformers", lateral_act: str | None = "same", fuse_op: str = "cat",
                 identity_proj: bool = False):
        super().__init__()
        if fuse_op not in ("cat", "sum"):
            raise ValueError(f"fuse_op must be 'cat' or 'sum', got {fuse_op!r}")
        self.fuse_op = fuse_op
        if pe_layout not in SINCOS_LAYOUTS:
            raise ValueError(f"pe_layout must be one of {SINCOS_LAYOUTS}, got {pe_layout!r}")
        self.pe_layout = pe_layout
        self.in_channels = list(in_channels)
        self.strides = list(strides)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = list(use_encoder_idx)
        self.num_encoder_layers = num_encoder_layers
        self.pe_temperature = pe_temperature
        self.out_channels = [hidden_dim] * len(self.in_channels)
        self.input_proj = nn.ModuleList(
            nn.Identity() if identity_proj and c == hidden_dim
            else nn.Sequential(nn.Conv2d(c, hidden_dim, 1, bias=False), nn.BatchNorm2d(hidden_dim)) for c in in_channels
        )
        layer = TransformerEncoderLayer(hidden_dim, num_heads, dim_feedforward, dropout, enc_act)
        self.encoder = nn.ModuleList(TransformerEncoder(layer, num_encoder_layers) for _ in self.use_encoder_idx)

        fusion = get_component("block", fusion_block)
        downsample = get_component("block", downsample_block)
        fusion_kw = dict(num_blocks=round(3 * depth_mult), expansion=expansion, act=act, **(fusion_args or {}))
        down_kw = dict(stride=2, act=act, **(downsample_args or {}))
        levels = len(self.in_channels)
        lateral_act = act if lateral_act == "same" else lateral_act
        self.lateral_convs = nn.ModuleList(ConvNormLayer(hidden_dim, hidden_dim, 1, 1, act=lateral_act)
                                           for _ in range(levels - 1))
        fused = hidden_dim * 2 if fuse_op == "cat" else hidden_dim
        self.fpn_blocks = nn.ModuleList(fusion(fused, hidden_dim, **fusion_kw) for _ in range(levels - 1))
        self.downsample_convs = nn.ModuleList(downsample(hidden_dim, hidden_dim, **down_kw) for _ in range(levels - 1))
        self.pan_blocks = nn.ModuleList(fusion(fused, hidden_dim, **fusion_kw) for _ in range(levels - 1))

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"HybridEncoder expects {len(self.in_channels)} feature maps, got {len(feats)}")
        proj = [p(f) for p, f in zip(self.input_proj, feats)]
        for encoder, idx in zip(self.encoder, self.use_encoder_idx):
            b, c, h, w = proj[idx].shape
            src = proj[idx].flatten(2).transpose(1, 2)
            pos = sincos_2d_position_embedding(h, w, c, self.pe_temperature, src.device, src.dtype, self.pe_layout)
            proj[idx] = encoder(src, pos).transpose(1, 2).reshape(b, c, h, w).contiguous()

        # top-down: inner[0] is the current finest fused map
        inner = [proj[-1]]
        for i, idx in enumerate(range(len(proj) - 1, 0, -1)):
            high = self.lateral_convs[i](inner[0])
            inner[0] = high
            up = F.interpolate(high, scale_factor=2.0, mode="nearest")
            inner.insert(0, self.fpn_blocks[i](self._fuse(up, proj[idx - 1])))
        # bottom-up
        outs = [inner[0]]
        for i in range(len(proj) - 1):
            down = self.downsample_convs[i](outs[-1])
            outs.append(self.pan_blocks[i](self._fuse(down, inner[i + 1])))
        return outs

    def _fuse(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=1) if self.fuse_op == "cat" else a + b
