"""Fixed (non-learned) position embeddings: RT-DETR's 2-D sin-cos grid and DETR's mask-aware sine embedding."""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from zoo.layers.tracing import is_tracing

__all__ = ["sincos_2d_position_embedding", "PositionEmbeddingSine"]


def _sincos_2d(height: int | torch.Tensor, width: int | torch.Tensor, dim: int, temperature: float,
               device: torch.device | None = None) -> torch.Tensor:
    """The embedding in float64; ``height`` and ``width`` may be traced sizes (computed in the exported graph)."""
    if dim % 4 != 0:
        raise ValueError(f"embedding dim must be divisible by 4, got {dim}")
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float64, device=device) / pos_dim)
    grid_y, grid_x = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=device),
                                    torch.arange(width, dtype=torch.float64, device=device), indexing="ij")
    out_y = grid_y.flatten()[:, None] * omega[None]
    out_x = grid_x.flatten()[:, None] * omega[None]
    return torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)[None]


_sincos_2d_cached = functools.lru_cache(maxsize=16)(_sincos_2d)


def sincos_2d_position_embedding(height: int, width: int, dim: int, temperature: float = 10000.0,
                                 device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """2-D sin-cos embedding ``[1, H*W, dim]`` for a row-major flattened ``H x W`` map.

    Layout ``[sin y, cos y, sin x, cos x]``, computed in float64 and cached per size. On square maps
    this equals the official RT-DETR embedding; on non-square maps the official code mixes up rows
    and columns, and we follow the corrected layout that transformers uses. While tracing or exporting it is
    computed from the (traced) size instead, so exported graphs take any height and width.
    """
    if is_tracing():
        return _sincos_2d(height, width, int(dim), float(temperature), device).to(dtype=dtype)
    return _sincos_2d_cached(int(height), int(width), int(dim), float(temperature)).to(device=device, dtype=dtype)


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
