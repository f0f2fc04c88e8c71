"""Fixed (non-learned) position embeddings."""
from __future__ import annotations

import functools

import torch

__all__ = ["sincos_2d_position_embedding"]


@functools.lru_cache(maxsize=16)
def _sincos_2d(height: int, width: int, dim: int, temperature: float) -> torch.Tensor:
    if dim % 4 != 0:
        raise ValueError(f"embedding dim must be divisible by 4, got {dim}")
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (torch.arange(pos_dim, dtype=torch.float64) / pos_dim)
    grid_y, grid_x = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                                    torch.arange(width, dtype=torch.float64), indexing="ij")
    out_y = grid_y.flatten()[:, None] * omega[None]
    out_x = grid_x.flatten()[:, None] * omega[None]
    return torch.cat([out_y.sin(), out_y.cos(), out_x.sin(), out_x.cos()], dim=1)[None]


def sincos_2d_position_embedding(height: int, width: int, dim: int, temperature: float = 10000.0,
                                 device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """2-D sin-cos embedding ``[1, H*W, dim]`` for a row-major flattened ``H x W`` map.

    Layout ``[sin y, cos y, sin x, cos x]``, computed in float64 and cached per size. On square maps
    this equals the official RT-DETR embedding; on non-square maps the official code mixes up rows
    and columns, and we follow the corrected layout that transformers uses.
    """
    return _sincos_2d(int(height), int(width), int(dim), float(temperature)).to(device=device, dtype=dtype)
