"""Fixed (non-learned) position embeddings: RT-DETR's 2-D sin-cos grid and DETR's mask-aware sine embedding."""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from zoo.layers.tracing import is_tracing

__all__ = ["sincos_2d_position_embedding", "SINCOS_LAYOUTS", "PositionEmbeddingSine"]


#: AIFI position-embedding layouts: "transformers" (rows and columns as in the map) and "official" (lyuwenyu/RT-DETR)
SINCOS_LAYOUTS = ("transformers", "official")


def _sincos_2d(height: int | torch.Tensor, width: int | torch.Tensor, dim: int, temperature: float, layout: str,
               device: torch.device | None = None) -> torch.Tensor:
    """The embedding in float64; ``height`` and ``width`` may be traced sizes (computed in the exported graph)."""
    if dim % 4 != 0:
        raise ValueError(f"embedding dim must be divisible by 4, got {dim}")
    if layout not in SINCOS_LAYOUTS:
        raise ValueError(f"unknown position-embedding layout {layout!r}; expected one of {SINCOS_LAYOUTS}")
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float64, device=device) / pos_dim)
    index = torch.arange(height * width, dtype=torch.float64, device=device)
    # token k of the row-major map is at row k // width, column k % width; the official code reads it as
    # (k // height, k % height), which is the same thing only on square maps
    first, second = (index // width, index % width) if layout == "transformers" else (index // height, index % height)
    out_first, out_second = first[:, None] * omega[None], second[:, None] * omega[None]
    return torch.cat([out_first.sin(), out_first.cos(), out_second.sin(), out_second.cos()], dim=1)[None]


_sincos_2d_cached = functools.lru_cache(maxsize=16)(_sincos_2d)


def sincos_2d_position_embedding(height: int, width: int, dim: int, temperature: float = 10000.0,
                                 device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                                 layout: str = "transformers") -> torch.Tensor:
    """2-D sin-cos embedding ``[1, H*W, dim]`` for a row-major flattened ``H x W`` map, computed in float64 and
    cached per size (while tracing or exporting, computed from the traced size: exported graphs take any size).

    ``layout="transformers"`` (default): ``[sin y, cos y, sin x, cos x]`` of each token's row y and column x, as
    Hugging Face transformers computes it. ``layout="official"``: what lyuwenyu/RT-DETR computes (its
    ``build_2d_sincos_position_embedding(w, h)`` meshes ``arange(w)`` x ``arange(h)`` and flattens w-major), i.e.
    token ``k`` gets ``(k // H, k % H)`` instead of ``(k // W, k % W)``. The two agree on square maps; on
    non-square maps the official one mixes up rows and columns, and models trained with the official code at
    non-square sizes need it to reproduce the official numbers.
    """
    if is_tracing():
        return _sincos_2d(height, width, int(dim), float(temperature), layout, device).to(dtype=dtype)
    return _sincos_2d_cached(int(height), int(width), int(dim), float(temperature), layout).to(device=device,
                                                                                               dtype=dtype)


class PositionEmbeddingSine(nn.Module):
    """DETR's sine position embedding, computed from the padding mask of a batch.

    Unlike :func:`sincos_2d_position_embedding` (a fixed grid), positions here count only the
    valid (unpadded) pixels of each image and are normalised by that image's own extent, so two images of
    different sizes padded into one batch get the embedding each would get alone.

    ``forward(mask [B, H, W] bool, True on padding)`` -> ``[B, 2 * num_pos_feats, H, W]`` = cat(pos_y, pos_x).

    Per axis: cumulative count of valid pixels (optionally divided by the image's last value and multiplied by
    ``scale``), divided by ``temperature ** (2 * (i // 2) / num_pos_feats)``; even channels take the sine, odd
    channels the cosine, interleaved. Defaults are DETR's (128 features per axis for d_model 256, normalised,
    scale 2*pi, eps 1e-6). Computed in float32 whatever the feature dtype.
    """

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float | None = None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("scale only applies with normalize=True")
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even (sine/cosine pairs), got {num_pos_feats}")
        self.num_pos_feats, self.temperature, self.normalize = num_pos_feats, temperature, normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        if mask.ndim != 3 or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor [B, H, W] (True on padding), got {mask.dtype} "
                             f"{list(mask.shape)}")
        not_mask = (~mask).to(torch.float32)
        y_embed = not_mask.cumsum(1)
        x_embed = not_mask.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[..., None] / dim_t
        pos_y = y_embed[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, normalize={self.normalize}, "
                f"scale={self.scale:.4f}")
