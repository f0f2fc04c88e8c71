"""D-FINE's CCFM blocks (Peterande/D-FINE ``hybrid_encoder.py``): the GELAN fusion block ``RepNCSPELAN4`` and the
separable ``SCDown`` downsampling, registered as blocks for :class:`zoo.layers.hybrid_encoder.HybridEncoder`; and
DEIM/DEIMv2's variants (Intellindust-AI-Lab/DEIMv2 ``engine/deim/hybrid_encoder.py``): ``csp_type="csp2"`` (one 1x1
conv split in two instead of two 1x1 convs) and ``RepNCSPELAN5`` (no 3x3 conv after each CSP branch).
Parameter names follow the official code (``cv1``..``cv4``; ``downsample_convs.{i}.0.cv1``)."""
from __future__ import annotations

import torch
from torch import nn

from zoo.layers.conv import ConvNormLayer, CSPRepLayer, RepVggBlock
from zoo.registry import register_component

__all__ = ["RepNCSPELAN4", "RepNCSPELAN5", "CSPRepLayer2", "SCDown", "sc_down"]


class CSPRepLayer2(nn.Module):
    """DEIM's ``CSPLayer2``: one 1x1 conv whose output halves are the shortcut and the RepVGG path (expansion 1:
    no output conv)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3, act: str = "silu"):
        super().__init__()
        self.conv1 = ConvNormLayer(in_channels, out_channels * 2, 1, 1, act=act)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(out_channels, out_channels, act=act) for _ in range(num_blocks)])
        self.conv3 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut, y = self.conv1(x).chunk(2, 1)
        return self.conv3(shortcut + self.bottlenecks(y))


def _csp(csp_type: str, in_channels: int, out_channels: int, num_blocks: int, act: str) -> nn.Module:
    if csp_type == "csp":
        return CSPRepLayer(in_channels, out_channels, num_blocks, 1.0, act)
    if csp_type == "csp2":
        return CSPRepLayer2(in_channels, out_channels, num_blocks, act)
    raise ValueError(f"csp_type must be 'csp' (D-FINE) or 'csp2' (DEIM), got {csp_type!r}")


@register_component("block", "rep_ncsp_elan4")
class RepNCSPELAN4(nn.Module):
    """Split a 1x1 conv's output (``2 * out_channels`` wide) in two halves; the second goes through two
    (CSP-RepVGG -> 3x3 conv) branches in series; all four are concatenated and fused by a 1x1 conv. Called by the
    CCFM as ``block(2 * hidden, hidden, num_blocks=n, expansion=e, act=act)`` (DEIMv2's sum fusion: ``hidden``
    in); the branch width is ``round(e * hidden // 2)`` as in the official configs. ``csp_type``: "csp" (D-FINE)
    or "csp2" (DEIM, :class:`CSPRepLayer2`)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3, expansion: float = 1.0,
                 act: str = "silu", csp_type: str = "csp"):
        super().__init__()
        c3, c4 = 2 * out_channels, round(expansion * out_channels // 2)
        self.c = c3 // 2
        self.cv1 = ConvNormLayer(in_channels, c3, 1, 1, act=act)
        self.cv2 = nn.Sequential(_csp(csp_type, c3 // 2, c4, num_blocks, act), ConvNormLayer(c4, c4, 3, 1, act=act))
        self.cv3 = nn.Sequential(_csp(csp_type, c4, c4, num_blocks, act), ConvNormLayer(c4, c4, 3, 1, act=act))
        self.cv4 = ConvNormLayer(c3 + 2 * c4, out_channels, 1, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in (self.cv2, self.cv3))
        return self.cv4(torch.cat(y, 1))


@register_component("block", "rep_ncsp_elan5")
class RepNCSPELAN5(RepNCSPELAN4):
    """DEIMv2's fusion block (DINOv3 variants): :class:`RepNCSPELAN4` with DEIM's CSP layers and no 3x3 conv
    after them (keys ``cv2.0.*``, ``cv3.0.*`` as officially)."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3, expansion: float = 1.0,
                 act: str = "silu"):
        super().__init__(in_channels, out_channels, num_blocks, expansion, act, csp_type="csp2")
        del self.cv2[1], self.cv3[1]


class SCDown(nn.Module):
    """Pointwise conv+BN, then a depthwise ``kernel_size`` conv+BN with ``stride`` (no activations)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 2):
        super().__init__()
        self.cv1 = ConvNormLayer(in_channels, out_channels, 1, 1)
        self.cv2 = ConvNormLayer(out_channels, out_channels, kernel_size, stride, groups=out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(x))


@register_component("block", "sc_down")
def sc_down(in_channels: int, out_channels: int, stride: int = 2, act: str | None = None,
            kernel_size: int = 3) -> nn.Sequential:
    """The CCFM's downsampling block of D-FINE (``act`` is accepted for the block interface; SCDown has none)."""
    return nn.Sequential(SCDown(in_channels, out_channels, kernel_size, stride))
