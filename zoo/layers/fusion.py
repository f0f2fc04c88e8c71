"""Folding eval-mode BatchNorm into the convolution before it: the same function with one op less per layer.

Used by ``Detector.deploy()``. Both BatchNorm2d and torchvision's FrozenBatchNorm2d fold; outputs move by float
rounding only. Training after folding is not supported (the statistics are gone), so this is for inference copies.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["FOLDABLE_NORMS", "fold_norm_into_conv", "fold_sequential"]

#: norms with fixed per-channel scale and shift in eval mode; subclasses (timm's BatchNormAct2d) are excluded
#: on purpose: they add an activation after the affine part.
FOLDABLE_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _foldable(norm: nn.Module) -> bool:
    return type(norm) in FOLDABLE_NORMS and (not isinstance(norm, nn.BatchNorm2d) or norm.running_var is not None)


@torch.no_grad()
def fold_norm_into_conv(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A new Conv2d (with bias) computing ``norm(conv(x))`` with ``norm``'s running statistics."""
    def f64(t: torch.Tensor | None) -> torch.Tensor | None:  # fold in float64, round once (matters for bf16)
        return None if t is None else t.detach().double()

    weight, bias = fuse_conv_bn_weights(f64(conv.weight), f64(conv.bias), f64(norm.running_mean),
                                        f64(norm.running_var), norm.eps, f64(norm.weight), f64(norm.bias))
    dtype = conv.weight.dtype
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    fused.weight = nn.Parameter(weight.detach().to(dtype), requires_grad=False)
    fused.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False)
    return fused


def fold_sequential(seq: nn.Sequential) -> None:
    """Fold every ``Conv2d`` directly followed by a foldable norm in ``seq``; the norm becomes ``Identity``."""
    names = list(seq._modules)
    for first, second in zip(names, names[1:]):
        conv, norm = seq._modules[first], seq._modules[second]
        if type(conv) is nn.Conv2d and _foldable(norm):
            seq._modules[first] = fold_norm_into_conv(conv, norm)
            seq._modules[second] = nn.Identity()
