"""The windowed plain ViT of LW-DETR and RF-DETR, one module for both (a registered backbone, ``windowed_vit``).

- LW-DETR (Atten4Vis/LW-DETR ``models/backbone/vit.py``): a CAE-pretrained ViT (no class token, no bias on the key
  projection, layer scales ``gamma_1/2``), absolute position embeddings of the 224-px pre-training grid resized
  (bicubic) to the feature map, ``num_windows`` windows (a square number; 16 = 4 x 4);
- RF-DETR (roboflow/rf-detr ``models/backbone/dinov2_with_windowed_attn.py``): DINOv2 (class token, which each window
  gets a copy of; layer scales; a final LayerNorm on the returned maps), ``num_windows`` windows per side; the
  position grid is ``resolution / patch_size`` and only resized (bicubic, antialiased, in float32, as DINOv2 does)
  at other input sizes. RF-DETR N/S/M/L use DINOv2 without registers (``dinov2_windowed_small``), so none here.

Windowed blocks attend within each window; the others ("global") attend over all tokens of an image. timm's ViT /
DINOv2 has no windows of this kind (nor a class token copied into each), so zoo has its own module; its parameter
names are transformers' DINOv2 names (``embeddings.*``, ``encoder.layer.{i}.attention.attention.query`` ...), and
the tokens are windowed exactly as transformers' ``LwDetrViTBackbone`` / ``RfDetrDinov2Backbone`` window them
(checked in float64 by tests/models/lwdetr).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers.tracing import is_tracing
from zoo.registry import register_component

__all__ = ["WindowedViT"]

STYLES = ("cae", "dinov2")


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (``lambda1``)."""

    def __init__(self, dim: int, init: float):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (``attention.query/key/value``, ``output.dense``)."""

    def __init__(self, dim: int, num_heads: int, key_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=key_bias)
        self.value = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (proj(x).view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)


class _AttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, key_bias: bool):
        super().__init__()
        self.attention = Attention(dim, num_heads, key_bias)
        self.output = nn.Module()
        self.output.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output.dense(self.attention(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with layer scales; ``windowed=False`` merges an image's windows for attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, windowed: bool, num_windows: int,
                 key_bias: bool, layer_scale: float, eps: float = 1e-6):
        super().__init__()
        self.windowed, self.num_windows = windowed, num_windows
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attention = _AttentionBlock(dim, num_heads, key_bias)
        self.layer_scale1 = LayerScale(dim, layer_scale)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale2 = LayerScale(dim, layer_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bw, n, c = x.shape
        y = self.norm1(x)
        if not self.windowed:
            y = y.reshape(bw // self.num_windows, self.num_windows * n, c)
        y = self.attention(y).reshape(bw, n, c)
        x = x + self.layer_scale1(y)
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class PatchEmbeddings(nn.Module):
    def __init__(self, dim: int, patch_size: int):
        super().__init__()
        self.projection = nn.Conv2d(3, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(x)


class Embeddings(nn.Module):
    """Patch embedding + absolute position embeddings (+ the class token, DINOv2 style)."""

    def __init__(self, dim: int, patch_size: int, pos_grid: int, cls_token: bool):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.patch_embeddings = PatchEmbeddings(dim, patch_size)
        self.position_embeddings = nn.Parameter(torch.zeros(1, pos_grid * pos_grid + 1, dim))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)


def _bicubic_aa_weights(size: int | torch.Tensor, grid: int, device: torch.device) -> torch.Tensor:
    """``[size, grid]`` weights of PyTorch's antialiased bicubic resize (``F.interpolate(mode="bicubic",
    antialias=True, align_corners=False)``, PIL's cubic with a = -0.5, widened by the scale when shrinking),
    computed with tensor ops so that ``size`` may be a traced size."""
    out = torch.arange(size, device=device, dtype=torch.float32)
    scale = torch.as_tensor(grid, dtype=torch.float32, device=device) / torch.as_tensor(size, dtype=torch.float32,
                                                                                         device=device)
    stretch = torch.clamp(scale, min=1.0)
    x = ((torch.arange(grid, device=device, dtype=torch.float32)[None] + 0.5 - scale * (out[:, None] + 0.5))
         / stretch).abs()
    a = -0.5
    weights = torch.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                          torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, torch.zeros_like(x)))
    return weights / weights.sum(1, keepdim=True)


@register_component("backbone", "windowed_vit")
class WindowedViT(nn.Module):
    """Plain ViT with windowed and global blocks returning the maps after blocks ``out_indices`` (all of stride
    ``patch_size`` and ``dim`` channels), ``[B, dim, H/p, W/p]`` each.

    ``style="cae"`` (LW-DETR): out index i is the output of block i (0-based), ``num_windows`` windows in total;
    ``style="dinov2"`` (RF-DETR): out index i is the output of block i - 1 (index 0 is the embedding), ``num_windows``
    windows per side, a class token per window, the final LayerNorm applied to the returned maps. Blocks not in
    ``window_blocks`` attend globally; ``None`` means DINOv2's rule (every block up to the last output except the
    outputs themselves is windowed). ``pos_grid``: side of the stored position-embedding grid.
    """

    def __init__(self, style: str = "dinov2", dim: int = 384, depth: int = 12, num_heads: int = 6,
                 patch_size: int = 16, num_windows: int = 2, out_indices: Sequence[int] = (3, 6, 9, 12),
                 window_blocks: Sequence[int] | None = None, pos_grid: int = 24, mlp_ratio: float = 4.0):
        super().__init__()
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        self.style, self.dim, self.patch_size = style, dim, patch_size
        self.out_indices = list(out_indices)
        first = 1 if style == "dinov2" else 0
        if not self.out_indices or any(i < first or i >= depth + first for i in self.out_indices):
            raise ValueError(f"out_indices must lie in {first}..{depth - 1 + first} for depth {depth}, got {out_indices}")
        if style == "cae":
            side = math.isqrt(num_windows)
            if side * side != num_windows:
                raise ValueError(f"num_windows must be a square number for the LW-DETR ViT, got {num_windows}")
            self.windows_side, windows = side, num_windows
            window_blocks = list(window_blocks or ())
        else:
            self.windows_side, windows = num_windows, num_windows * num_windows
            if window_blocks is None:
                window_blocks = sorted(set(range(self.out_indices[-1] + 1)) - set(self.out_indices))
        self.window_blocks = list(window_blocks)
        cae = style == "cae"
        self.embeddings = Embeddings(dim, patch_size, pos_grid, cls_token=not cae)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, windowed=i in self.window_blocks, num_windows=windows,
                  key_bias=not cae, layer_scale=0.1 if cae else 1.0) for i in range(depth))
        self.layernorm = None if cae else nn.LayerNorm(dim, eps=1e-6)
        self.out_channels = [dim] * len(self.out_indices)
        self.strides = [patch_size] * len(self.out_indices)
        #: inputs must be multiples of this: whole patches, and as many in every window
        self.size_divisor = patch_size * self.windows_side

    def _positions(self, h: int, w: int, height: int, width: int) -> torch.Tensor:
        """The position embeddings for an ``h`` x ``w`` patch grid (resized from the stored grid where it differs;
        while tracing always, so that an exported graph resizes them for any input size)."""
        pos = self.embeddings.position_embeddings
        grid = math.isqrt(pos.shape[1] - 1)
        patch = pos[:, 1:]
        tracing = is_tracing()
        if self.style == "cae":
            if tracing or grid != h or grid != w:
                patch = F.interpolate(patch.reshape(1, grid, grid, -1).permute(0, 3, 1, 2), size=(h, w),
                                      mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
            return patch.reshape(1, h, w, -1)
        if not tracing and grid * grid == h * w and height == width:
            return pos
        patch = patch.reshape(1, grid, grid, -1).permute(0, 3, 1, 2).float()
        if tracing:  # ONNX has no antialiased bicubic resize: the same resize as two matrix products
            rows, cols = _bicubic_aa_weights(h, grid, patch.device), _bicubic_aa_weights(w, grid, patch.device)
            patch = torch.einsum("hi,bcij,wj->bchw", rows, patch, cols)
        else:
            patch = F.interpolate(patch, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        patch = patch.to(pos.dtype)
        return torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, h * w, -1)], 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b, _, height, width = x.shape
        s = self.windows_side
        emb = self.embeddings.patch_embeddings(x)
        c, h, w = emb.shape[1:]
        if self.style == "cae":
            tokens = emb.permute(0, 2, 3, 1) + self._positions(h, w, height, width)
            tokens = tokens.reshape(b, s, h // s, s, w // s, c).permute(0, 1, 3, 2, 4, 5).reshape(
                b * s * s, (h // s) * (w // s), c)
        else:
            tokens = torch.cat([self.embeddings.cls_token.expand(b, -1, -1), emb.flatten(2).transpose(1, 2)], 1)
            tokens = tokens + self._positions(h, w, height, width)
            # transformers' / rf-detr's window partition, read literally (it swaps the roles of h and w inside a
            # window, which is the same thing on square inputs)
            pixels = tokens[:, 1:].reshape(b, s, w // s, s, h // s, c).transpose(2, 3).reshape(
                b * s * s, (h // s) * (w // s), c)
            cls = tokens[:, :1].repeat(s * s, 1, 1)
            tokens = torch.cat([cls, pixels], 1)
        outs = []
        first = 1 if self.style == "dinov2" else 0
        for i, block in enumerate(self.encoder.layer):
            tokens = block(tokens)
            if i + first in self.out_indices:
                outs.append(self._unwindow(tokens, b, h, w))
            if i + first >= self.out_indices[-1]:
                break
        return outs

    def _unwindow(self, tokens: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        s, c = self.windows_side, tokens.shape[-1]
        if self.style == "cae":
            return tokens.reshape(b, s, s, h // s, w // s, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)
        tokens = self.layernorm(tokens)[:, 1:]
        tokens = tokens.reshape(b, s, s, h // s, w // s, c).transpose(2, 3).reshape(b, h, w, c)
        return tokens.permute(0, 3, 1, 2).contiguous()
