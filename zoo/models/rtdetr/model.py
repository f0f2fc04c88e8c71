"""RT-DETR v1 and v2 (and their AKConv variants): backbone -> HybridEncoder -> RTDETRDecoder.

The parts are in this folder (presnet.py, hybrid_encoder.py, decoder.py; training: denoising.py, criterion.py;
checkpoint layouts: convert.py). Each part is registered under a short name (``PResNet.component_name``) so that a
JSON config can name it and users can swap one in. Any timm backbone plugs in without a new class:
``create_model("rtdetr_r18vd", backbone="resnet50d")`` (a string that is not a registered backbone is a timm
model name) or
``backbone={"name": "timm", "model_name": "convnext_tiny", "strides": (8, 16, 32)}``.
"""
from __future__ import annotations

from typing import Any

import torch

from zoo.layers.akconv import AKConv, C3_AKConv
from zoo.layers.denoising import DenoisingQueries, build_denoising_queries
from zoo.layers.hybrid_encoder import HybridEncoder
from zoo.models.base import AnchorQueries, ClassHead, Detector, SigmoidTopK, build_detector, check_pixel_values
from zoo.models.rtdetr import convert
from zoo.models.rtdetr.criterion import RTDETRCriterion
from zoo.models.rtdetr.decoder import RTDETRDecoder
from zoo.models.rtdetr.presnet import PResNet
from zoo.models.timm_backbone import TimmBackbone
from zoo.registry import register_family, register_model

__all__ = ["RTDETR"]


@register_family
class RTDETR(SigmoidTopK, AnchorQueries, Detector):
    """Real-time DETR. ``forward(pixel_values)`` -> ``{"pred_logits": [B, Q, C], "pred_boxes": [B, Q, 4]}``.

    pixel_values: float ``[B, 3, H, W]`` preprocessed as ``pretrained_cfg`` says; H and W multiples of
    the largest backbone stride (32). Boxes are normalised (cx, cy, w, h); logits are per-class sigmoid logits.
    In training mode the output also has ``aux_outputs`` (per earlier decoder layer), ``enc_outputs``
    (encoder top-k) and, when ``denoising`` queries are passed, ``dn_outputs`` and ``dn_meta``.
    """

    family = "rtdetr"
    checkpoint_layouts = convert.LAYOUTS
    transformers = convert.TRANSFORMERS
    parts = {"encoder": HybridEncoder, "decoder": RTDETRDecoder}  # the backbone has alternatives: registry
    class_heads = (ClassHead(r"decoder\.enc_score_head"), ClassHead(r"decoder\.dec_score_head\.\d+"),
                   ClassHead(r"decoder\.denoising_class_embed", extra_rows=1))

    def __init__(self, backbone: dict[str, Any], encoder: dict[str, Any], decoder: dict[str, Any],
                 num_classes: int = 80):
        super().__init__()
        self.build_parts(backbone, encoder, decoder, num_classes)
        self.size_divisor = max(self.backbone.strides)

    def forward(self, pixel_values: torch.Tensor, denoising: DenoisingQueries | None = None) -> dict[str, Any]:
        check_pixel_values(pixel_values, self.size_divisor)
        return self.decoder(self.encoder(self.backbone(pixel_values)), denoising)

    def criterion(self) -> RTDETRCriterion:
        """Varifocal + L1 + GIoU on the last layer, the auxiliary layers, the encoder top-k and denoising groups."""
        return RTDETRCriterion(self.num_classes)

    def training_inputs(self, pixel_values: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Denoising queries built from the targets (contrastive denoising training)."""
        return {"denoising": build_denoising_queries(targets, self.decoder)}



# --------------------------------------------------------------------------------------------------
# Configurations (official widths/depths from lyuwenyu/RT-DETR rtdetr_pytorch/configs and
# rtdetrv2_pytorch/configs/rtdetrv2)
# --------------------------------------------------------------------------------------------------

#: RT-DETR eval preprocessing: resize to 640x640, scale to [0, 1], no mean/std.
RTDETR_PRETRAINED_CFG = dict(input_size=(3, 640, 640), resize_mode="stretch", interpolation="bilinear",
                             mean=None, std=None)
#: timm backbones were trained on ImageNet-normalised inputs, so detectors built on them use mean/std.
IMAGENET_PRETRAINED_CFG = dict(RTDETR_PRETRAINED_CFG, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _presnet(depth: int) -> dict[str, Any]:
    big = depth >= 50
    return dict(name=PResNet.component_name, depth=depth, return_idx=(1, 2, 3), freeze_at=0 if big else -1,
                freeze_norm=big)


def _encoder(expansion: float, hidden_dim: int = 256, dim_feedforward: int = 1024) -> dict[str, Any]:
    return dict(name=HybridEncoder.component_name, hidden_dim=hidden_dim, num_heads=8,
                dim_feedforward=dim_feedforward, dropout=0.0, enc_act="gelu", use_encoder_idx=(2,),
                num_encoder_layers=1, pe_temperature=10000.0,
                expansion=expansion, depth_mult=1.0, act="silu")


def _decoder(num_layers: int, eval_idx: int = -1) -> dict[str, Any]:
    return dict(name=RTDETRDecoder.component_name, hidden_dim=256, num_queries=300, num_levels=3, num_points=4,
                num_heads=8, num_decoder_layers=num_layers, dim_feedforward=1024, dropout=0.0, activation="relu",
                num_denoising=100, label_noise_ratio=0.5, box_noise_scale=1.0, eval_idx=eval_idx)


def _decoder_v2(num_layers: int, eval_idx: int = -1) -> dict[str, Any]:
    """RTDETRTransformerv2: per-level points [4, 4, 4], bilinear sampling ("discrete" is the deployment option)."""
    return dict(_decoder(num_layers, eval_idx), num_points=[4, 4, 4], cross_attn_method="default",
                persistent_points_scale=True)


def _timm(model_name: str) -> dict[str, Any]:
    return dict(name=TimmBackbone.component_name, model_name=model_name, strides=(8, 16, 32))


def _rtdetr(architecture: str, backbone: dict, encoder: dict, decoder: dict, overrides: dict,
            pretrained_cfg: dict = RTDETR_PRETRAINED_CFG) -> RTDETR:
    defaults = dict(backbone=backbone, encoder=encoder, decoder=decoder, num_classes=80)
    return build_detector(RTDETR, architecture, defaults, overrides, pretrained_cfg)


@register_model
def rtdetr_r18vd(**kwargs: Any) -> RTDETR:
    """RT-DETR R18-vd, 3 decoder layers (COCO 46.5 AP, 20M params, 60 GFLOPs)."""
    return _rtdetr("rtdetr_r18vd", _presnet(18), _encoder(0.5), _decoder(3), kwargs)


@register_model
def rtdetr_r34vd(**kwargs: Any) -> RTDETR:
    """RT-DETR R34-vd, 4 decoder layers (COCO 48.9 AP, 31M params, 92 GFLOPs)."""
    return _rtdetr("rtdetr_r34vd", _presnet(34), _encoder(0.5), _decoder(4), kwargs)


@register_model
def rtdetr_r50vd_m(**kwargs: Any) -> RTDETR:
    """RT-DETR R50-vd-m: expansion 0.5, 6 decoder layers evaluated at layer 2 (COCO 51.3 AP)."""
    return _rtdetr("rtdetr_r50vd_m", _presnet(50), _encoder(0.5), _decoder(6, eval_idx=2), kwargs)


@register_model
def rtdetr_r50vd(**kwargs: Any) -> RTDETR:
    """RT-DETR R50-vd, 6 decoder layers (COCO 53.1 AP, 42M params, 136 GFLOPs)."""
    return _rtdetr("rtdetr_r50vd", _presnet(50), _encoder(1.0), _decoder(6), kwargs)


@register_model
def rtdetr_r101vd(**kwargs: Any) -> RTDETR:
    """RT-DETR R101-vd: encoder width 384, FFN 2048, 6 decoder layers (COCO 54.3 AP, 76M params)."""
    return _rtdetr("rtdetr_r101vd", _presnet(101), _encoder(1.0, hidden_dim=384, dim_feedforward=2048),
                   _decoder(6), kwargs)


@register_model(aliases=("rtdetr_mnv3",))
def rtdetr_mobilenetv3_large(**kwargs: Any) -> RTDETR:
    """RT-DETR on timm's MobileNetV3-Large 1.0 (strides 8/16/32) with the R18-sized encoder, 3 decoder layers."""
    return _rtdetr("rtdetr_mobilenetv3_large", _timm("mobilenetv3_large_100"), _encoder(0.5), _decoder(3), kwargs,
                   IMAGENET_PRETRAINED_CFG)


@register_model
def rtdetr_mobilenetv3_small(**kwargs: Any) -> RTDETR:
    """RT-DETR on timm's MobileNetV3-Small 1.0 with the R18-sized encoder, 3 decoder layers."""
    return _rtdetr("rtdetr_mobilenetv3_small", _timm("mobilenetv3_small_100"), _encoder(0.5), _decoder(3), kwargs,
                   IMAGENET_PRETRAINED_CFG)


@register_model
def rtdetr_mobilenetv2_100(**kwargs: Any) -> RTDETR:
    """RT-DETR on timm's MobileNetV2 1.0 with the R18-sized encoder, 3 decoder layers."""
    return _rtdetr("rtdetr_mobilenetv2_100", _timm("mobilenetv2_100"), _encoder(0.5), _decoder(3), kwargs,
                   IMAGENET_PRETRAINED_CFG)


# RT-DETRv2 ("bag of freebies"): the v1 architectures with the v2 decoder; same preprocessing.
# ``cross_attn_method="discrete"`` gives the GridSample-free variant (official *_dsp_* configs).


@register_model
def rtdetrv2_r18vd(**kwargs: Any) -> RTDETR:
    """RT-DETRv2-S: R18-vd, 3 decoder layers (COCO 48.1 AP, 20M params, 60 GFLOPs)."""
    return _rtdetr("rtdetrv2_r18vd", _presnet(18), _encoder(0.5), _decoder_v2(3), kwargs)


@register_model
def rtdetrv2_r34vd(**kwargs: Any) -> RTDETR:
    """RT-DETRv2-M*: R34-vd, 4 decoder layers (COCO 49.9 AP, 31M params, 92 GFLOPs)."""
    return _rtdetr("rtdetrv2_r34vd", _presnet(34), _encoder(0.5), _decoder_v2(4), kwargs)


@register_model
def rtdetrv2_r50vd_m(**kwargs: Any) -> RTDETR:
    """RT-DETRv2-M: R50-vd, expansion 0.5, 6 decoder layers evaluated at layer 2 (COCO 51.9 AP, 36M params)."""
    return _rtdetr("rtdetrv2_r50vd_m", _presnet(50), _encoder(0.5), _decoder_v2(6, eval_idx=2), kwargs)


@register_model
def rtdetrv2_r50vd(**kwargs: Any) -> RTDETR:
    """RT-DETRv2-L: R50-vd, 6 decoder layers (COCO 53.4 AP, 42M params, 136 GFLOPs)."""
    return _rtdetr("rtdetrv2_r50vd", _presnet(50), _encoder(1.0), _decoder_v2(6), kwargs)


@register_model
def rtdetrv2_r101vd(**kwargs: Any) -> RTDETR:
    """RT-DETRv2-X: R101-vd, encoder width 384, FFN 2048, 6 decoder layers (COCO 54.3 AP, 76M params)."""
    return _rtdetr("rtdetrv2_r101vd", _presnet(101), _encoder(1.0, hidden_dim=384, dim_feedforward=2048),
                   _decoder_v2(6), kwargs)


# RT-DETR with AKConv in the CCFM (zoo.layers.akconv): same backbone, AIFI and decoder as above; each stride-2
# downsampling conv of the hybrid encoder becomes ``AKConv(hidden, hidden, 5, 2)`` and each CSPRepLayer a
# YOLOv5-style ``C3_AKConv`` (neck semantics: no residual) whose bottlenecks use ``AKConv(hidden, hidden, 3, 1)``.
# The number of sampling points is an argument:
# ``create_model("rtdetr_r18vd_akconv", encoder={"downsample_args": {"num_param": 9}})``.
# No pretrained weights exist for these architectures; they are meant to be trained.


def _akconv_encoder(expansion: float, downsample_points: int = 5, fusion_points: int = 3) -> dict[str, Any]:
    return dict(_encoder(expansion), downsample_block=AKConv.component_name,
                downsample_args={"num_param": downsample_points}, fusion_block=C3_AKConv.component_name,
                fusion_args={"num_param": fusion_points, "shortcut": False})


@register_model
def rtdetr_r18vd_akconv(**kwargs: Any) -> RTDETR:
    """RT-DETR R18-vd (3 decoder layers) with an AKConv CCFM: AKConv N=5 downsampling, C3_AKConv N=3 fusion."""
    return _rtdetr("rtdetr_r18vd_akconv", _presnet(18), _akconv_encoder(0.5), _decoder(3), kwargs)


@register_model
def rtdetr_mobilenetv3_large_akconv(**kwargs: Any) -> RTDETR:
    """RT-DETR on timm's MobileNetV3-Large 1.0 (3 decoder layers) with an AKConv CCFM (N=5 down, N=3 fusion)."""
    return _rtdetr("rtdetr_mobilenetv3_large_akconv", _timm("mobilenetv3_large_100"), _akconv_encoder(0.5),
                   _decoder(3), kwargs, IMAGENET_PRETRAINED_CFG)
