"""Normalisation helpers: frozen BatchNorm for backbones fine-tuned with small batches, and RMSNorm."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["freeze_batch_norm", "RMSNorm"]


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below ``module`` by torchvision's FrozenBatchNorm2d (same statistics)."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(frozen, name).copy_(getattr(module, name).detach())
        return frozen
    for name, child in module.named_children():
        new = freeze_batch_norm(child)
        if new is not child:
            setattr(module, name, new)
    return module


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * scale``, computed in float32 and cast back, as DEIMv2's (and transformers'
    LlamaRMSNorm) do. Key: ``scale``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.scale
