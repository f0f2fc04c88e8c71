"""Multi-layer perceptron used by DETR-style box heads and query position heads."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP"]

_ACTS = {"relu": torch.relu, "silu": F.silu}


class MLP(nn.Module):
    """``num_layers`` Linear layers with ``act`` (ReLU, or SiLU as in DEIMv2) between them (none after the last).
    Keys: ``layers.{i}``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, act: str = "relu"):
        super().__init__()
        if act not in _ACTS:
            raise ValueError(f"MLP act must be one of {sorted(_ACTS)}, got {act!r}")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))
        self.act = _ACTS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return x
