"""Convolution building blocks of RT-DETR: conv+norm+act, RepVGG and the CSP-RepVGG layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers.fusion import fold_norm_into_conv

from zoo.registry import register_component

__all__ = ["ConvNormLayer", "RepVggBlock", "CSPRepLayer", "create_act"]

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


def create_act(name: str | None) -> nn.Module:
    """Activation module by name (``None`` -> identity)."""
    if name is None:
        return nn.Identity()
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)} or None")
    return _ACTIVATIONS[name](inplace=True) if name != "gelu" else nn.GELU()


class ConvNormLayer(nn.Module):
    """Conv2d (``same`` padding for odd kernels) -> BatchNorm2d -> activation. Keys: ``conv``, ``norm``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None, bias: bool = False, act: str | None = None, groups: int = 1):
        super().__init__()
        padding = (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias, groups=groups)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = create_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))

    @torch.no_grad()
    def fuse_for_deploy(self) -> None:
        """Fold the norm's eval-mode statistics into the convolution (the norm becomes Identity)."""
        if not isinstance(self.norm, nn.Identity):
            self.conv, self.norm = fold_norm_into_conv(self.conv, self.norm), nn.Identity()


class RepVggBlock(nn.Module):
    """3x3 conv+BN plus 1x1 conv+BN, summed, then an activation; fuses into one 3x3 conv for deployment."""

    def __init__(self, in_channels: int, out_channels: int, act: str = "relu"):
        super().__init__()
        self.conv1 = ConvNormLayer(in_channels, out_channels, 3, 1, padding=1)
        self.conv2 = ConvNormLayer(in_channels, out_channels, 1, 1, padding=0)
        self.act = create_act(act)
        self.conv: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            return self.act(self.conv(x))
        return self.act(self.conv1(x) + self.conv2(x))

    @torch.no_grad()
    def fuse_for_deploy(self) -> None:
        """Replace both branches by the single equivalent 3x3 convolution (eval-mode BN statistics)."""
        if self.conv is not None:
            return
        kernels, biases = [], []
        for branch in (self.conv1, self.conv2):
            branch.fuse_for_deploy()
            kernels.append(branch.conv.weight)
            biases.append(branch.conv.bias)
        kernel = kernels[0] + F.pad(kernels[1], [1, 1, 1, 1])
        conv = nn.Conv2d(kernel.shape[1], kernel.shape[0], 3, 1, 1, bias=True).to(kernel)
        conv.weight.copy_(kernel)
        conv.bias.copy_(biases[0] + biases[1])
        self.conv = conv
        del self.conv1, self.conv2


@register_component("block", "csp_rep")
class CSPRepLayer(nn.Module):
    """Cross-stage-partial layer with RepVGG bottlenecks (CCFM fusion block of RT-DETR)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3, expansion: float = 1.0,
                 act: str = "silu"):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvNormLayer(in_channels, hidden, 1, 1, act=act)
        self.conv2 = ConvNormLayer(in_channels, hidden, 1, 1, act=act)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden, hidden, act=act) for _ in range(num_blocks)])
        self.conv3 = ConvNormLayer(hidden, out_channels, 1, 1, act=act) if hidden != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


@register_component("block", "conv_bn_act")
def conv_bn_act(in_channels: int, out_channels: int, stride: int = 1, act: str | None = "silu",
                kernel_size: int = 3) -> ConvNormLayer:
    """Plain conv+BN+act block: the default downsampling conv of the CCFM."""
    return ConvNormLayer(in_channels, out_channels, kernel_size, stride, act=act)
