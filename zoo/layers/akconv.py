"""AKConv: convolution with an arbitrary number of learnable sampling points (Zhang et al., arXiv 2311.11587).

AKConv samples ``num_param`` (N) points per output pixel: an initial shape ``p_n`` anchored at the top-left of the
output position ``p_0 = (i, j) * stride`` (no padding), moved by offsets that a zero-initialised 3x3 conv predicts.
The N bilinearly resampled values are stacked along the height (``b c h w n -> b c (h n) w``) and mixed by a column
conv with kernel and stride ``(N, 1)``, then BatchNorm and SiLU. Parameter names follow the official code
(``p_conv``, ``conv.0``/``conv.1``), so its checkpoints load unchanged.

Written from the paper's and the official code's semantics (the official repository has no license). By default the
outputs match the official code, border quirk included; docs/akconv.md lists each quirk and what we do about it.
Two implementations give the same outputs (to 1e-5 of the output scale): ``impl="grid_sample"`` (default, fast,
ONNX opset >= 16) and ``impl="gather"``, the official formulation (four gathers of the integer neighbours).

Also here: the YOLOv5-style ``Bottleneck_AKConv`` / ``C3_AKConv``, registered as CCFM blocks for the hybrid encoder
(``akconv`` as downsampling conv, ``c3_akconv`` as fusion block), and :func:`akconv_param_groups` /
:func:`scale_offset_lr`, the working, opt-in version of the official 0.1 learning-rate scaling of the offset conv.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo.layers.conv import ConvNormLayer, create_act
from zoo.registry import register_component

__all__ = ["AKConv", "Bottleneck_AKConv", "C3_AKConv", "akconv_initial_shape", "akconv_offset_parameters",
           "akconv_param_groups", "scale_offset_lr"]

Border = Literal["official", "replicate"]
Impl = Literal["grid_sample", "gather"]
_Pair = tuple[torch.Tensor, torch.Tensor]
_BORDERS = ("official", "replicate")
_IMPLS = ("grid_sample", "gather")


def akconv_initial_shape(num_param: int) -> torch.Tensor:
    """Initial sampling offsets of N points as ``[2, N]`` float: row 0 vertical (y), row 1 horizontal (x).

    ``round(sqrt(N))`` points per row, ``N // base`` full rows, then the ``N % base`` remaining points in one more
    row, anchored at (0, 0): N=5 gives y = [0, 0, 1, 1, 2], x = [0, 1, 0, 1, 0] (the official ``meshgrid`` with
    'ij' indexing). Point k is simply ``divmod(k, base)``.
    """
    if isinstance(num_param, bool) or not isinstance(num_param, int) or num_param < 1:
        raise ValueError(f"num_param must be a positive int (number of sampling points), got {num_param!r}")
    base = round(math.sqrt(num_param))
    k = torch.arange(num_param)
    return torch.stack([k // base, k % base]).float()


def _neighbours(p: torch.Tensor, size: int, border: Border) -> tuple[_Pair, _Pair]:
    """Both integer neighbours of coordinates ``p`` along an axis of ``size`` pixels and their bilinear weights.

    Indices are always in ``[0, size - 1]``, even for NaN or infinite ``p`` (no out-of-range gather, no device-side
    assert); NaN coordinates still give NaN weights, so a diverged offset shows up as NaN instead of being hidden.
    ``official``: the neighbours are clamped after flooring and ``p`` is clamped separately, so for ``p < 0`` or
    ``p >= size - 1`` both neighbours are the border pixel with weight 1 each (weights sum to 2).
    ``replicate``: ``p`` is clamped first, weights always sum to 1.
    """
    limit = size - 1
    clamped = p.clamp(0, limit)
    if border == "official":
        floor = p.detach().nan_to_num(0.0).floor()
        lo, hi = floor.clamp(0, limit), (floor + 1).clamp(0, limit)
        w_lo, w_hi = 1 + lo - clamped, 1 - hi + clamped
    else:
        lo = clamped.detach().nan_to_num(0.0).floor()
        hi = (lo + 1).clamp(max=limit)
        w_hi = clamped - lo
        w_lo = 1 - w_hi
    return (lo.long(), hi.long()), (w_lo, w_hi)


def _grid_axis(p: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``grid_sample`` coordinate (align_corners=False) for ``p`` and the mask of strictly interior positions.

    Outside ``[0, size - 1)`` the coordinate is the clamped, detached border, which is what the official gradient
    is there (zero); NaN and inf become finite coordinates (the caller marks NaN separately). The normalisation
    ``(2p + 1) / size - 1`` needs no special case for ``size == 1`` and traces with dynamic sizes.
    """
    inside = (p >= 0) & (p < size - 1)
    p = torch.where(inside, p, p.detach().nan_to_num(0.0).clamp(0, size - 1))
    return (2 * p + 1) / size - 1, inside


def _sample_grid(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, border: Border) -> torch.Tensor:
    """Bilinear samples ``[b, c, (n h), w]`` at ``(rows, cols)`` ``[b, n, h, w]`` with one ``grid_sample`` call.

    The official border rule is separable: along an axis where ``p`` is outside ``[0, size - 1)`` it equals twice
    the border-clamped sample, so it is a per-point factor of 1, 2 or 4 on top of ``padding_mode="border"``.
    """
    gy, inside_y = _grid_axis(rows, x.shape[-2])
    gx, inside_x = _grid_axis(cols, x.shape[-1])
    grid = rearrange(torch.stack([gx, gy], dim=-1), "b n h w two -> b (n h) w two")
    out = F.grid_sample(x.to(grid.dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)
    if border == "official":
        scale = (2 - inside_y.to(rows.dtype)) * (2 - inside_x.to(rows.dtype))
    else:
        scale = torch.ones_like(rows)
    scale = torch.where(rows.isnan() | cols.isnan(), float("nan"), scale)
    return out * rearrange(scale, "b n h w -> b 1 (n h) w")


def _sample_gather(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, border: Border) -> torch.Tensor:
    """The official formulation: gather the 4 integer neighbours, weight and sum; returns ``[b, c, h, w, n]``."""
    b, c, height, width = x.shape
    h, w = rows.shape[-2:]
    (y_lo, y_hi), (wy_lo, wy_hi) = _neighbours(rows, height, border)
    (x_lo, x_hi), (wx_lo, wx_hi) = _neighbours(cols, width, border)
    flat = x.to(rows.dtype).flatten(2)
    out = 0
    for yi, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
        for xi, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
            index = rearrange(yi * width + xi, "b n h w -> b 1 (h w n)").expand(-1, c, -1)
            values = rearrange(flat.gather(2, index), "b c (h w n) -> b c h w n", h=h, w=w)
            out = out + values * rearrange(wy * wx, "b n h w -> b 1 h w n")
    return out


@register_component("block", "akconv")
class AKConv(nn.Module):
    """Arbitrary-kernel convolution: N learnable sampling points, then a ``(N, 1)`` column conv + BN + activation.

    Args:
        in_channels, out_channels: channels in and out.
        num_param: number of sampling points N (any positive int; the paper uses 1 to 13).
        stride: output stride (the offset conv and the sampling grid use it; no padding).
        bias: bias of the column conv (official default ``None``: no bias).
        act: activation after BN (official: SiLU).
        border: ``"official"`` reproduces the official border handling (samples on or beyond the last row/column,
            or before the first, count twice per axis); ``"replicate"`` is ordinary border-clamped bilinear sampling.
        impl: ``"grid_sample"`` (default) or ``"gather"`` (the official formulation); outputs agree to 1e-5.

    Input ``[B, in_channels, H, W]`` -> output ``[B, out_channels, (H - 1) // stride + 1, (W - 1) // stride + 1]``.
    Sampling coordinates are computed in float32 (float64 for float64 inputs), also for bf16/fp16 inputs.
    """

    def __init__(self, in_channels: int, out_channels: int, num_param: int, stride: int = 1, bias: bool | None = None,
                 act: str | None = "silu", *, border: Border = "official", impl: Impl = "grid_sample"):
        super().__init__()
        if border not in _BORDERS:
            raise ValueError(f"border must be one of {_BORDERS}, got {border!r}")
        if impl not in _IMPLS:
            raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be a positive int, got {stride!r}")
        self.register_buffer("p_n", akconv_initial_shape(num_param), persistent=False)
        self.num_param = num_param
        self.stride = stride
        self.border = border
        self.impl = impl
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, (num_param, 1), stride=(num_param, 1), bias=bool(bias)),
            nn.BatchNorm2d(out_channels),
            create_act(act),
        )
        self.p_conv = nn.Conv2d(in_channels, 2 * num_param, 3, padding=1, stride=stride)
        nn.init.zeros_(self.p_conv.weight)  # start from the initial shape (+ the bias, which keeps its default init)

    def extra_repr(self) -> str:
        return f"num_param={self.num_param}, stride={self.stride}, border={self.border!r}, impl={self.impl!r}"

    def sampling_positions(self, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Absolute sampling rows and columns ``[B, N, h, w]``: ``p_0 + p_n + offset`` (offset ``[B, 2N, h, w]``)."""
        dtype = torch.promote_types(offset.dtype, torch.float32)
        offset = offset.to(dtype)
        h, w = offset.shape[-2:]
        p_n = self.p_n.to(dtype)[:, :, None, None]
        p_0y = (torch.arange(h, device=offset.device, dtype=dtype) * self.stride)[:, None]
        p_0x = (torch.arange(w, device=offset.device, dtype=dtype) * self.stride)[None, :]
        dy, dx = offset.chunk(2, dim=1)
        return p_0y + p_n[0] + dy, p_0x + p_n[1] + dx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = self.sampling_positions(self.p_conv(x))
        column_conv = self.conv[0]
        if self.impl == "gather":
            samples = _sample_gather(x, rows, cols, self.border)
            y = column_conv(rearrange(samples, "b c h w n -> b c (h n) w").to(x.dtype))
        else:
            # the (N, 1) column conv over stacked samples == a 1x1 conv over the N samples as channels
            samples = rearrange(_sample_grid(x, rows, cols, self.border), "b c (n h) w -> b (c n) h w",
                                n=self.num_param)
            weight = rearrange(column_conv.weight, "o c n 1 -> o (c n) 1 1")
            y = F.conv2d(samples.to(x.dtype), weight, column_conv.bias)
        return self.conv[2](self.conv[1](y))


class Bottleneck_AKConv(nn.Module):  # noqa: N801 (the paper's name)
    """YOLOv5 Bottleneck with its 3x3 conv replaced by ``AKConv(hidden, out, num_param, 1)``.

    ``cv1`` is a 1x1 conv (no bias) + BN + SiLU to ``int(out_channels * expansion)`` channels; the residual is added
    when ``shortcut`` and the channels match.
    """

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = True, expansion: float = 0.5,
                 num_param: int = 3, act: str | None = "silu", **akconv_args: Any):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.cv1 = ConvNormLayer(in_channels, hidden, 1, 1, act=act)
        self.cv2 = AKConv(hidden, out_channels, num_param, 1, act=act, **akconv_args)
        self.add = shortcut and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


@register_component("block", "c3_akconv")
class C3_AKConv(nn.Module):  # noqa: N801 (the paper's name)
    """YOLOv5 C3 (CSP with 3 convs) whose bottlenecks are ``Bottleneck_AKConv(hidden, hidden, expansion=1.0)``.

    ``cv3(cat(m(cv1(x)), cv2(x)))`` with ``hidden = int(out_channels * expansion)``. Positional order matches
    YOLOv5's ``C3(c1, c2, n, shortcut, ...)``; as CCFM fusion block (``fusion_block="c3_akconv"``) the hybrid encoder
    passes ``num_blocks``/``expansion``/``act`` by keyword. YOLOv5 necks use ``shortcut=False``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 1, shortcut: bool = True,
                 expansion: float = 0.5, num_param: int = 3, act: str | None = "silu", **akconv_args: Any):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.cv1 = ConvNormLayer(in_channels, hidden, 1, 1, act=act)
        self.cv2 = ConvNormLayer(in_channels, hidden, 1, 1, act=act)
        self.cv3 = ConvNormLayer(2 * hidden, out_channels, 1, 1, act=act)
        self.m = nn.Sequential(*(Bottleneck_AKConv(hidden, hidden, shortcut, 1.0, num_param, act, **akconv_args)
                                 for _ in range(num_blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], dim=1))


def akconv_offset_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every AKConv offset conv (``p_conv``) in ``model``."""
    names = {f"{prefix}.p_conv" if prefix else "p_conv" for prefix, m in model.named_modules() if isinstance(m, AKConv)}
    return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[0] in names]


def scale_offset_lr(param_groups: list[dict[str, Any]], model: nn.Module,
                    offset_lr_scale: float = 0.1) -> list[dict[str, Any]]:
    """Move the AKConv offset-conv parameters of every group into a copy of that group at ``lr * offset_lr_scale``.

    Composes with any existing grouping (backbone multipliers, no weight decay on norms, ...): each group keeps its
    settings, only its learning rate is scaled for the ``p_conv`` parameters. Every group holding offset parameters
    needs an explicit ``"lr"``.
    """
    offsets = {id(p) for _, p in akconv_offset_parameters(model)}
    groups = []
    for group in param_groups:
        params = list(group["params"])
        rest = [p for p in params if id(p) not in offsets]
        moved = [p for p in params if id(p) in offsets]
        if rest:
            groups.append({**group, "params": rest})
        if moved:
            if "lr" not in group:
                raise ValueError("a parameter group with AKConv offset parameters has no 'lr'; give every group an "
                                 "explicit learning rate so that it can be scaled")
            groups.append({**group, "params": moved, "lr": group["lr"] * offset_lr_scale})
    return groups


def akconv_param_groups(model: nn.Module, lr: float, offset_lr_scale: float = 0.1,
                        **group_args: Any) -> list[dict[str, Any]]:
    """Optimizer parameter groups that train AKConv offset convs at ``lr * offset_lr_scale`` (opt-in).

    This is what the official backward hook meant to do (its hook returns nothing, so it changes nothing). A
    learning rate, unlike a gradient hook, also works with Adam/AdamW, which are invariant to gradient scale.
    ``group_args`` (e.g. ``weight_decay``) go into both groups; frozen parameters are left out. To add the scaling
    to groups you already have, use :func:`scale_offset_lr`.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return scale_offset_lr([{"params": params, "lr": lr, **group_args}], model, offset_lr_scale)
