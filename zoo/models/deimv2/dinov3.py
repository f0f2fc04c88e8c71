"""DEIMv2's DINOv3 backbone: a plain ViT (patch 16, RoPE, optional register tokens and LayerScale) whose layers
``return_layers`` become three maps of strides 8/16/32 (bilinear resize of the stride-16 tokens), each concatenated
with the matching map of the Spatial Tuning Adapter (STA, a small CNN on the image) and projected to ``hidden_dim``
by a 1x1 conv + BatchNorm (Intellindust-AI-Lab/DEIMv2 ``engine/backbone/dinov3_adapter.py``).

The ViT is written here rather than taken from timm (``timm.models.eva``) or transformers (``DINOv3ViTBackbone``):
timm's keys and token layout differ, and transformers would become a runtime dependency; this one keeps the official
DINOv3 names (``blocks.{i}.attn.qkv``, ``ls1.gamma``, ``storage_tokens``) so release files load by name, and gives
transformers' numbers (RoPE sin/cos computed in float32 and cast, as both references do), checked in float64 by
tests/models/deimv2. DEIMv2-S/M use the DINOv3-distilled ViT-Tiny / Tiny+ (no registers, no LayerScale, features not
normalised); L/X the DINOv3 ViT-S/16 and S+/16 (4 registers, LayerScale, the final LayerNorm on every feature,
no key bias; S+ with a SwiGLU FFN).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.registry import register_component

__all__ = ["DINOv3STA", "VisionTransformer", "SpatialTuningAdapter"]

FEATURE_NORMS = ("all", "none", "final")


def rope_sincos(h: int, w: int, head_dim: int, base: float, device: torch.device,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """2D RoPE of an ``h`` x ``w`` patch grid (centres normalised to [-1, 1] per axis), ``[h*w, head_dim]`` in
    float32 (float64 products for a float64 model), with transformers' arithmetic (angles times ``1 / periods``;
    the official code divides by the periods, which differs by float32 rounding only)."""
    inv_freq = 1 / base ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32, device=device)  # 1 / periods
    ch = torch.arange(0.5, h, dtype=torch.float32, device=device) / h
    cw = torch.arange(0.5, w, dtype=torch.float32, device=device) / w
    coords = 2.0 * torch.stack(torch.meshgrid(ch, cw, indexing="ij"), dim=-1).flatten(0, 1) - 1.0
    if dtype == torch.float64:  # a float64 model (transformers' inv_freq buffer is then float64)
        inv_freq = inv_freq.double()
    angles = (2 * math.pi * coords[:, :, None] * inv_freq[None, None, :]).flatten(1, 2).tile(2)
    return angles.sin(), angles.cos()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection; RoPE on the patch tokens (not the prefix).
    ``key_bias=False``: the key third of the qkv bias is masked to zero (the official ``mask_k_bias``)."""

    def __init__(self, dim: int, num_heads: int, key_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        mask = torch.ones(3 * dim)
        if not key_bias:
            mask[dim:2 * dim] = 0
        self.register_buffer("bias_mask", mask, persistent=False)
        self.key_bias = key_bias

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n, c = x.shape
        bias = self.qkv.bias if self.key_bias else self.qkv.bias * self.bias_mask.to(self.qkv.bias.dtype)
        q, k, v = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        sin, cos = (t.to(x.dtype) for t in rope)
        prefix = n - sin.shape[0]
        q = torch.cat([q[:, :, :prefix], q[:, :, prefix:] * cos + _rotate_half(q[:, :, prefix:]) * sin], 2)
        k = torch.cat([k[:, :, :prefix], k[:, :, prefix:] * cos + _rotate_half(k[:, :, prefix:]) * sin], 2)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """``w3(silu(w1 x) * w2 x)`` (DINOv3 ViT-S+)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1, self.w2, self.w3 = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(self, dim: int, num_heads: int, ffn_hidden: int, ffn: str, layer_scale: float | None,
                 key_bias: bool, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, key_bias)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, ffn_hidden) if ffn == "mlp" else SwiGLU(dim, ffn_hidden)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """DINOv3-style ViT returning the patch tokens of ``return_layers`` as ``[B, C, H/16, W/16]`` maps.
    ``feature_norm``: which returned layers pass through the final LayerNorm: "all" (official DINOv3), "none"
    (the official ViT-Tiny, which has no final norm), "final" (transformers' ``apply_layernorm=False``: only the
    last block's output)."""

    def __init__(self, embed_dim: int = 384, depth: int = 12, num_heads: int = 6, ffn_hidden: int = 1536,
                 ffn: str = "mlp", num_register_tokens: int = 0, layer_scale: float | None = None,
                 key_bias: bool = True, eps: float = 1e-6, patch_size: int = 16, rope_base: float = 100.0,
                 return_layers: Sequence[int] = (3, 7, 11), feature_norm: str = "none"):
        super().__init__()
        if ffn not in ("mlp", "swiglu"):
            raise ValueError(f"ffn must be 'mlp' or 'swiglu', got {ffn!r}")
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}, got {feature_norm!r}")
        if any(i not in range(depth) for i in return_layers):
            raise ValueError(f"return_layers must be block indices below depth={depth}, got {list(return_layers)}")
        self.embed_dim, self.num_heads, self.patch_size, self.rope_base = embed_dim, num_heads, patch_size, rope_base
        self.return_layers, self.feature_norm = list(return_layers), feature_norm
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, ffn_hidden, ffn, layer_scale, key_bias, eps)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=eps) if feature_norm != "none" else None
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, _, h, w = x.shape
        h, w = h // self.patch_size, w // self.patch_size
        tokens = [self.cls_token.expand(b, -1, -1)]
        if self.storage_tokens is not None:
            tokens.append(self.storage_tokens.expand(b, -1, -1))
        prefix = sum(t.shape[1] for t in tokens)
        x = torch.cat(tokens + [self.patch_embed.proj(x).flatten(2).transpose(1, 2)], 1)
        rope = rope_sincos(h, w, self.embed_dim // self.num_heads, self.rope_base, x.device, x.dtype)
        last = len(self.blocks) - 1
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x, rope)
            if i in self.return_layers:
                y = x
                if self.feature_norm == "all" or (self.feature_norm == "final" and i == last):
                    y = self.norm(y)
                outs.append(y[:, prefix:].transpose(1, 2).reshape(b, -1, h, w))
        return outs


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout)]


class SpatialTuningAdapter(nn.Module):
    """The STA: conv-BN-GELU (stride 2), max-pool, then three stride-2 conv-BN (GELU between): maps of strides
    8/16/32 with ``2c``/``4c``/``4c`` channels. Keys as the official ``SpatialPriorModulev2`` (``stem.0``...)."""

    def __init__(self, inplanes: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, inplanes, 3, 2, 1, bias=False), nn.BatchNorm2d(inplanes), nn.GELU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.conv2 = nn.Sequential(*_conv_bn(inplanes, 2 * inplanes))
        self.conv3 = nn.Sequential(nn.GELU(), *_conv_bn(2 * inplanes, 4 * inplanes))
        self.conv4 = nn.Sequential(nn.GELU(), *_conv_bn(4 * inplanes, 4 * inplanes))
        self.out_channels = [2 * inplanes, 4 * inplanes, 4 * inplanes]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c2 = self.conv2(self.stem(x))
        c3 = self.conv3(c2)
        return [c2, c3, self.conv4(c3)]


@register_component("backbone", "dinov3_sta")
class DINOv3STA(nn.Module):
    """DINOv3 ViT + STA -> three ``hidden_dim`` maps at strides 8/16/32 (the DEIMv2 S/M/L/X backbone).

    ``vit``: the :class:`VisionTransformer` arguments (three ``return_layers``); ``sta_channels``: the STA width
    (official ``conv_inplane``); ``hidden_dim``: the projected width (official default: the ViT width).
    Inputs must be multiples of 32 (the STA's stride), and ImageNet-normalised, as the official configs do."""

    def __init__(self, vit: dict, sta_channels: int = 16, hidden_dim: int | None = None):
        super().__init__()
        self.dinov3 = VisionTransformer(**vit)
        if len(self.dinov3.return_layers) != 3:
            raise ValueError(f"DINOv3STA needs three return_layers (strides 8/16/32), got {self.dinov3.return_layers}")
        self.sta = SpatialTuningAdapter(sta_channels)
        embed, hidden = self.dinov3.embed_dim, hidden_dim or self.dinov3.embed_dim
        self.convs = nn.ModuleList(nn.Conv2d(embed + c, hidden, 1, bias=False) for c in self.sta.out_channels)
        self.norms = nn.ModuleList(nn.BatchNorm2d(hidden) for _ in self.sta.out_channels)
        self.out_channels, self.strides = [hidden] * 3, [8, 16, 32]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # the official sizes int(h * 2 ** (1 - i)) of the stride-16 maps, as shape arithmetic (traced when exporting);
        # the stride-16 map keeps its size (bilinear resampling to the same size is the identity)
        f8, f16, f32 = self.dinov3(x)
        semantic = [F.interpolate(f8, size=[f8.shape[2] * 2, f8.shape[3] * 2], mode="bilinear", align_corners=False),
                    f16,
                    F.interpolate(f32, size=[f32.shape[2] // 2, f32.shape[3] // 2], mode="bilinear",
                                  align_corners=False)]
        return [norm(conv(torch.cat([s, d], 1))) for conv, norm, s, d in
                zip(self.convs, self.norms, semantic, self.sta(x))]
