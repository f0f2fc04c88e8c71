"""RT-DETR with AKConv in the CCFM: AKConv downsampling convs and C3_AKConv fusion blocks.

Same backbone, AIFI and decoder as the plain RT-DETR entry points; only the hybrid encoder's pluggable blocks
change (see zoo.necks.hybrid_encoder): each stride-2 ``conv_bn_act`` becomes ``AKConv(hidden, hidden, 5, 2)`` and
each ``CSPRepLayer`` a YOLOv5-style ``C3_AKConv`` (neck semantics: no residual) whose bottlenecks use
``AKConv(hidden, hidden, 3, 1)``. The number of sampling points is an argument:
``create_model("rtdetr_r18vd_akconv", encoder={"downsample_args": {"num_param": 9}})``.
No pretrained weights exist for these architectures; they are meant to be trained.
"""
from __future__ import annotations

from typing import Any

import zoo.layers.akconv  # noqa: F401  (registers the "akconv" and "c3_akconv" blocks)
from zoo.models.rtdetr import (IMAGENET_PRETRAINED_CFG, RTDETR, _decoder, _encoder, _presnet, _rtdetr, _timm)
from zoo.registry import register_model

__all__: list[str] = []


def _akconv_encoder(expansion: float, downsample_points: int = 5, fusion_points: int = 3) -> dict[str, Any]:
    return dict(_encoder(expansion), downsample_block="akconv", downsample_args={"num_param": downsample_points},
                fusion_block="c3_akconv", fusion_args={"num_param": fusion_points, "shortcut": False})


@register_model
def rtdetr_r18vd_akconv(**kwargs: Any) -> RTDETR:
    """RT-DETR R18-vd (3 decoder layers) with an AKConv CCFM: AKConv N=5 downsampling, C3_AKConv N=3 fusion."""
    return _rtdetr("rtdetr_r18vd_akconv", _presnet(18), _akconv_encoder(0.5), _decoder(3), kwargs)


@register_model
def rtdetr_mobilenetv3_large_akconv(**kwargs: Any) -> RTDETR:
    """RT-DETR on timm's MobileNetV3-Large 1.0 (3 decoder layers) with an AKConv CCFM (N=5 down, N=3 fusion)."""
    return _rtdetr("rtdetr_mobilenetv3_large_akconv", _timm("mobilenetv3_large_100"), _akconv_encoder(0.5),
                   _decoder(3), kwargs, IMAGENET_PRETRAINED_CFG)
