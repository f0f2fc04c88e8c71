"""LW-DETR's multi-scale projector (registered as the ``encoder`` part, ``lwdetr_projector``): the ViT's maps,
resampled to each output scale (P3 = x2 by a transposed conv, P4 as they are, P5 = /2 by a strided conv), joined
by channel, fused by a C2f block and LayerNorm-ed. RF-DETR uses it at P4 only, with LayerNorm instead of
BatchNorm in its convolutions (``norm="layer"``). Parameter names are the official ones (Atten4Vis/LW-DETR and
roboflow/rf-detr ``models/backbone/projector.py``: ``stages_sampling``, ``stages.{i}.0.cv1.conv``, ``...bn``)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers.conv import create_act
from zoo.layers.fusion import fold_norm_into_conv
from zoo.registry import register_component

__all__ = ["Projector", "SCALES"]

#: projector level name -> resampling factor of the ViT's stride-``patch`` maps
SCALES = {"P3": 2.0, "P4": 1.0, "P5": 0.5}


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a ``[B, C, H, W]`` map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvX(nn.Module):
    """Conv (no bias) -> BatchNorm or channels-first LayerNorm (both named ``bn``) -> activation."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, act: str | None = "silu",
                 norm: str = "batch"):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out) if norm == "batch" else ChannelsFirstLayerNorm(c_out, eps=1e-5)
        self.act = create_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse_for_deploy(self) -> None:
        """Fold an eval-mode BatchNorm into the convolution (a LayerNorm cannot be folded)."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv, self.bn = fold_norm_into_conv(self.conv, self.bn), nn.Identity()


class Bottleneck(nn.Module):
    """Two 3x3 ConvX, no shortcut (as the official C2f builds them)."""

    def __init__(self, c: int, act: str, norm: str):
        super().__init__()
        self.cv1, self.cv2 = ConvX(c, c, 3, act=act, norm=norm), ConvX(c, c, 3, act=act, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's C2f: 1x1 to 2c, the second half through ``n`` bottlenecks in sequence, every piece joined, 1x1."""

    def __init__(self, c_in: int, c_out: int, n: int = 3, expansion: float = 0.5, act: str = "silu",
                 norm: str = "batch"):
        super().__init__()
        self.c = int(c_out * expansion)
        self.cv1 = ConvX(c_in, 2 * self.c, 1, act=act, norm=norm)
        self.cv2 = ConvX((2 + n) * self.c, c_out, 1, act=act, norm=norm)
        self.m = nn.ModuleList(Bottleneck(self.c, act, norm) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split(self.c, 1))
        for block in self.m:
            y.append(block(y[-1]))
        return self.cv2(torch.cat(y, 1))


def _sampling(channels: int, scale: float, norm: str) -> nn.Sequential:
    if scale == 2.0:
        if channels > 512:
            return nn.Sequential(ConvX(channels, channels // 2, 1, act="relu", norm=norm),
                                 nn.ConvTranspose2d(channels // 2, channels // 4, 2, 2))
        return nn.Sequential(nn.ConvTranspose2d(channels, channels // 2, 2, 2))
    if scale == 0.5:
        return nn.Sequential(ConvX(channels, channels, 3, 2, act="relu", norm=norm))
    return nn.Sequential()


@register_component("encoder", "lwdetr_projector")
class Projector(nn.Module):
    """``levels`` (of P3/P4/P5) maps of ``hidden_dim`` channels from the backbone's equal-stride maps."""

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], hidden_dim: int = 256,
                 levels: Sequence[str] = ("P4",), num_blocks: int = 3, expansion: float = 0.5, act: str = "silu",
                 norm: str = "batch"):
        super().__init__()
        if not levels or any(level not in SCALES for level in levels):
            raise ValueError(f"levels must be some of {sorted(SCALES)}, got {levels}")
        if len(set(strides)) != 1:
            raise ValueError(f"the projector reads maps of one stride, got strides {strides}")
        if norm not in ("batch", "layer"):
            raise ValueError(f"norm must be 'batch' or 'layer', got {norm!r}")
        self.levels = list(levels)
        scales = [SCALES[level] for level in levels]
        self.stages_sampling = nn.ModuleList(
            nn.ModuleList(_sampling(c, scale, norm) for c in in_channels) for scale in scales)
        stages = []
        for scale in scales:
            c = in_channels[-1]
            c = (c // 4 if c > 512 else c // 2) if scale == 2.0 else c
            stages.append(nn.Sequential(C2f(c * len(in_channels), hidden_dim, num_blocks, expansion, act, norm),
                                        ChannelsFirstLayerNorm(hidden_dim, eps=1e-6)))
        self.stages = nn.ModuleList(stages)
        self.out_channels = [hidden_dim] * len(levels)
        self.strides = [int(strides[0] / scale) for scale in scales]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [stage(torch.cat([sample(f) for sample, f in zip(sampling, features)], 1))
                for sampling, stage in zip(self.stages_sampling, self.stages)]
