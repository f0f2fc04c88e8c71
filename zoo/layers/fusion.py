"""Inference rewrites used by ``Detector.deploy()``: the same function with fewer or faster ops.

- Folding eval-mode BatchNorm into the convolution before it (in ``nn.Sequential`` and in timm's ``ConvBNAct``,
  HGNetV2's block). Both BatchNorm2d and torchvision's FrozenBatchNorm2d fold; outputs move by float rounding only.
- HGNetV2's learnable affine block after a ReLU, ``s * relu(y) + b``: for ``s > 0`` it equals ``relu(s * y) + b``,
  so ``s`` folds into the convolution too and one multiplication per layer goes.
- A 2x2, stride-1 max pooling (HGNetV2's stem) as the maximum of four shifted views: the same values exactly, but
  PyTorch's ``max_pool2d`` kernel for that shape is slow (17 ms vs 0.8 ms at 16x321x321 in NCHW on 2 threads).

Training after folding is not supported (the statistics are gone), so this is for inference copies.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

__all__ = ["FOLDABLE_NORMS", "AddConstant", "ShiftedMaxPool2x2", "fold_conv_norm_act", "fold_norm_into_conv",
           "fold_sequential", "rewrite_for_deploy"]

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


class AddConstant(nn.Module):
    """``x + value``, in place where autograd allows it: it follows an activation whose output nobody else holds."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.value if x.requires_grad else x.add_(self.value)


def _conv_norm_act_blocks() -> tuple[type, ...]:
    """Block classes whose ``forward`` is ``lab(act(bn(conv(x))))``: timm's HGNetV2 ``ConvBNAct``."""
    from timm.models.hgnet import ConvBNAct

    return (ConvBNAct,)


@torch.no_grad()
def fold_conv_norm_act(block: nn.Module) -> None:
    """In a ``lab(act(bn(conv(x))))`` block: fold ``bn`` into ``conv``, and a learnable affine ``lab`` with a
    positive scale after a ReLU into ``conv`` as well (``s * relu(y) + b == relu(s * y) + b``), leaving ``+ b``."""
    if type(block.conv) is not nn.Conv2d or not _foldable(block.bn):
        return
    block.conv, block.bn = fold_norm_into_conv(block.conv, block.bn), nn.Identity()
    scale, bias = getattr(block.lab, "scale", None), getattr(block.lab, "bias", None)
    if type(block.act) is nn.ReLU and scale is not None and scale.numel() == 1 and scale.item() > 0:
        block.conv.weight.mul_(scale.to(block.conv.weight.dtype))
        block.conv.bias.mul_(scale.to(block.conv.bias.dtype))
        block.act, block.lab = nn.ReLU(inplace=True), AddConstant(bias.item())


class ShiftedMaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2, stride=1)`` (ceil_mode either way: with stride 1 it changes nothing) as the element-wise
    maximum of the four shifted views of the input: equal values, NaN propagating alike, without PyTorch's slow
    pooling kernel for this shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # runtimes have a fast MaxPool; slices would be copies there
            return nn.functional.max_pool2d(x, 2, 1)
        top = torch.maximum(x[..., :-1, :-1], x[..., :-1, 1:])
        bottom = torch.maximum(x[..., 1:, :-1], x[..., 1:, 1:])
        return torch.maximum(top, bottom)


def _is_max_pool_2x2_stride_1(module: nn.Module) -> bool:
    def pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
        return tuple(value) if isinstance(value, (tuple, list)) else (value, value)

    return (type(module) is nn.MaxPool2d and pair(module.kernel_size) == (2, 2) and pair(module.stride) == (1, 1)
            and pair(module.padding) == (0, 0) and pair(module.dilation) == (1, 1) and not module.return_indices)


def rewrite_for_deploy(module: nn.Module) -> None:
    """The rewrites above that apply to ``module`` itself or to its direct children."""
    if isinstance(module, nn.Sequential):
        fold_sequential(module)
    elif isinstance(module, _conv_norm_act_blocks()):
        fold_conv_norm_act(module)
    for name, child in list(module.named_children()):
        if _is_max_pool_2x2_stride_1(child):
            setattr(module, name, ShiftedMaxPool2x2())
