"""PResNet-vd: the ResNet-D backbone of the official RT-DETR (deep stem, avg-pool shortcuts).

Key layout follows the official checkpoints (``conv1.conv1_1``, ``res_layers.{i}.blocks.{j}.branch2a`` ...).
Quirk kept on purpose: the first block of stage 0 always has a 1x1 conv+BN shortcut, even for
R18/R34 where channels do not change (64 -> 64); this is why timm's resnet18d cannot hold these weights.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers.conv import ConvNormLayer, create_act
from zoo.layers.norm import freeze_batch_norm
from zoo.registry import register_component

__all__ = ["PResNet"]

_DEPTHS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 2:  # "vd": average-pool then 1x1 conv, keys short.conv.{conv,norm}
        return nn.Sequential(OrderedDict([("pool", nn.AvgPool2d(2, 2, 0, ceil_mode=True)),
                                          ("conv", ConvNormLayer(in_channels, out_channels, 1, 1))]))
    return ConvNormLayer(in_channels, out_channels, 1, stride)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, shortcut: bool, act: str = "relu"):
        super().__init__()
        self.branch2a = ConvNormLayer(in_channels, channels, 3, stride, act=act)
        self.branch2b = ConvNormLayer(channels, channels, 3, 1)
        self.short = None if shortcut else _shortcut(in_channels, channels, stride)
        self.act = create_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch2b(self.branch2a(x))
        return self.act(out + (x if self.short is None else self.short(x)))


class BottleNeck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int, shortcut: bool, act: str = "relu"):
        super().__init__()
        self.branch2a = ConvNormLayer(in_channels, channels, 1, 1, act=act)
        self.branch2b = ConvNormLayer(channels, channels, 3, stride, act=act)
        self.branch2c = ConvNormLayer(channels, channels * self.expansion, 1, 1)
        self.short = None if shortcut else _shortcut(in_channels, channels * self.expansion, stride)
        self.act = create_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch2c(self.branch2b(self.branch2a(x)))
        return self.act(out + (x if self.short is None else self.short(x)))


class Blocks(nn.Module):
    def __init__(self, block: type, in_channels: int, channels: int, count: int, stage: int, act: str):
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in range(count):
            stride = 2 if i == 0 and stage != 0 else 1
            self.blocks.append(block(in_channels, channels, stride, shortcut=i != 0, act=act))
            in_channels = channels * block.expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


@register_component("backbone", "presnet")
class PResNet(nn.Module):
    """ResNet-vd returning the stages in ``return_idx`` (default strides 8/16/32).

    ``freeze_at``: -1 freezes nothing, 0 freezes the stem, k > 0 also stages ``0..k-1``.
    ``freeze_norm``: replace all BatchNorm by FrozenBatchNorm2d (R50/R101 in the official configs).
    """

    def __init__(self, depth: int = 50, return_idx: tuple[int, ...] = (1, 2, 3), freeze_at: int = -1,
                 freeze_norm: bool = False, act: str = "relu"):
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"PResNet depth must be one of {sorted(_DEPTHS)}, got {depth}")
        self.conv1 = nn.Sequential(OrderedDict([
            ("conv1_1", ConvNormLayer(3, 32, 3, 2, act=act)),
            ("conv1_2", ConvNormLayer(32, 32, 3, 1, act=act)),
            ("conv1_3", ConvNormLayer(32, 64, 3, 1, act=act)),
        ]))
        block = BottleNeck if depth >= 50 else BasicBlock
        widths = [64, 128, 256, 512]
        in_channels = 64
        self.res_layers = nn.ModuleList()
        for stage, (count, width) in enumerate(zip(_DEPTHS[depth], widths)):
            self.res_layers.append(Blocks(block, in_channels, width, count, stage, act))
            in_channels = width * block.expansion
        self.return_idx = list(return_idx)
        self.out_channels = [widths[i] * block.expansion for i in self.return_idx]
        self.strides = [[4, 8, 16, 32][i] for i in self.return_idx]
        if freeze_at >= 0:
            for module in [self.conv1, *self.res_layers[:freeze_at]]:
                module.requires_grad_(False)
        if freeze_norm:
            freeze_batch_norm(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)
        outs = []
        for idx, stage in enumerate(self.res_layers):
            x = stage(x)
            if idx in self.return_idx:
                outs.append(x)
        return outs
