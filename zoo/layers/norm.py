"""Normalisation helpers: frozen BatchNorm for backbones fine-tuned with small batches."""
from __future__ import annotations

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["freeze_batch_norm"]


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
