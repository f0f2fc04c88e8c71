"""HGNetV2 (PP-HGNetV2 B0-B6) as a multi-scale backbone, built by timm.

timm's ``hgnetv2_b*`` reproduces the official D-FINE backbone (Peterande/D-FINE ``src/nn/backbone/hgnetv2.py``)
exactly, with the same parameter names (``stem.stem1.conv``, ``stages.2.blocks.0.layers.0.conv1.bn``, ``...lab``),
checked in float64 for B0/B2 (use_lab) and B4/B5: outputs equal to the last bit. So zoo does not hand-write it; it
keeps timm's ``stem`` and ``stages`` (keys ``backbone.stem.*``, ``backbone.stages.*`` as in official checkpoints)
and drops the classifier. Registered here, outside a family folder, so that D-FINE, DEIM and DEIMv2 can all use it.
DEIMv2's pruned three-stage variants (``Atto``, ``Femto``, ``Pico``: B0's stem and first two stages, a narrower
third stage, no fourth; Intellindust-AI-Lab/DEIMv2 ``engine/backbone/hgnetv2.py``) are built from timm's blocks too.
"""
from __future__ import annotations

import torch
from torch import nn

from zoo.layers.norm import freeze_batch_norm
from zoo.registry import register_component

__all__ = ["HGNetV2"]

_NAMES = ("Atto", "Femto", "Pico", "B0", "B1", "B2", "B3", "B4", "B5", "B6")
#: DEIMv2's third stages (in, mid, out, blocks, downsample, light, kernel, layers); stages 1-2 and stem are B0's
_PRUNED = {"Atto": [256, 64, 256, 1, True, True, 3, 3], "Femto": [256, 64, 512, 1, True, True, 5, 3],
           "Pico": [256, 64, 512, 2, True, True, 5, 3]}


@register_component("backbone", "hgnetv2")
class HGNetV2(nn.Module):
    """HGNetV2 ``variant`` (B0..B6, or DEIMv2's three-stage Atto/Femto/Pico) returning the stages in ``return_idx``
    (of strides 4/8/16/32).

    ``use_lab``: the learnable affine blocks after each activation (D-FINE N/S/M use them; L/X do not).
    ``freeze_at`` >= 0 freezes the stem (and with ``freeze_stem_only=False`` also stages ``0..freeze_at``);
    ``freeze_norm`` replaces every BatchNorm by a frozen one (D-FINE L/X), as the official options do.
    """

    def __init__(self, variant: str = "B4", use_lab: bool = False, return_idx: tuple[int, ...] = (1, 2, 3),
                 freeze_at: int = -1, freeze_stem_only: bool = True, freeze_norm: bool = False):
        super().__init__()
        if variant not in _NAMES:
            raise ValueError(f"HGNetV2 variant must be one of {_NAMES}, got {variant!r}")
        num_stages = 3 if variant in _PRUNED else 4
        if not return_idx or any(i not in range(num_stages) for i in return_idx):
            raise ValueError(f"return_idx must list stages among 0..{num_stages - 1} for HGNetV2-{variant}, "
                             f"got {return_idx}")
        from timm.models.hgnet import HighPerfGpuNet, model_cfgs

        if variant in _PRUNED:  # timm builds four stages: a minimal fourth is built and dropped
            third = _PRUNED[variant]
            cfg = dict(model_cfgs["hgnetv2_b0"], stage3=third, stage4=[third[2], 8, 8, 1, True, True, 3, 1])
        else:
            cfg = model_cfgs[f"hgnetv2_{variant.lower()}"]
        # the class, not timm.create_model: timm's hgnetv2_b0..b3 entry points fix use_lab=True
        net = HighPerfGpuNet(cfg, num_classes=0, use_lab=use_lab)
        self.stem, self.stages = net.stem, net.stages[:num_stages]
        self.return_idx = list(return_idx)
        channels = [stage.blocks[-1].aggregation[-1].conv.out_channels for stage in self.stages]
        self.out_channels = [channels[i] for i in self.return_idx]
        self.strides = [[4, 8, 16, 32][i] for i in self.return_idx]
        if freeze_at >= 0:
            self.stem.requires_grad_(False)
            if not freeze_stem_only:
                for stage in self.stages[:freeze_at + 1]:
                    stage.requires_grad_(False)
        if freeze_norm:
            freeze_batch_norm(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for idx, stage in enumerate(self.stages):
            x = stage(x)
            if idx in self.return_idx:
                outs.append(x)
        return outs
