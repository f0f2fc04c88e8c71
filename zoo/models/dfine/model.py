"""D-FINE (Peterande/D-FINE, Apache-2.0): HGNetV2 -> HybridEncoder with GELAN fusion -> FDR decoder.

The parts shared with RT-DETR (hybrid encoder, query selection, contrastive denoising, deformable attention) are in
zoo.layers; D-FINE's own are here (decoder.py, criterion.py; checkpoint layouts: convert.py) and its CCFM blocks in
zoo.layers.elan. The backbone is zoo.models.hgnetv2 (timm's HGNetV2). Configs: the official
``configs/dfine/dfine_hgnetv2_{n,s,m,l,x}_coco.yml`` at the bottom of this file.
"""
from __future__ import annotations

from typing import Any

import torch

from zoo.layers.denoising import DenoisingQueries, build_denoising_queries
from zoo.layers.elan import RepNCSPELAN4, sc_down
from zoo.layers.hybrid_encoder import HybridEncoder
from zoo.models.base import (AnchorQueries, ClassHead, Detector, build_detector, check_pixel_values,
                             detections_to_pixels, sigmoid_topk)
from zoo.models.dfine import convert
from zoo.models.dfine.criterion import DFINECriterion
from zoo.models.dfine.decoder import DFINEDecoder
from zoo.models.hgnetv2 import HGNetV2
from zoo.registry import register_family, register_model

__all__ = ["DFINE"]


@register_family
class DFINE(AnchorQueries, Detector):
    """D-FINE. ``forward(pixel_values)`` -> ``{"pred_logits": [B, Q, C], "pred_boxes": [B, Q, 4]}`` (sigmoid
    logits, normalised cxcywh); in training mode also the FDR outputs the criterion needs (see DFINEDecoder).
    pixel_values: float ``[B, 3, H, W]`` in [0, 1] (no mean/std), H and W multiples of 32."""

    family = "dfine"
    checkpoint_layouts = convert.LAYOUTS
    transformers = convert.TRANSFORMERS
    parts = {"encoder": HybridEncoder, "decoder": DFINEDecoder}  # the backbone has alternatives: registry
    class_heads = (ClassHead(r"decoder\.enc_score_head"), ClassHead(r"decoder\.dec_score_head\.\d+"),
                   ClassHead(r"decoder\.denoising_class_embed", extra_rows=1))

    def __init__(self, backbone: dict[str, Any], encoder: dict[str, Any], decoder: dict[str, Any],
                 num_classes: int = 80):
        super().__init__()
        self.backbone = self.build_part("backbone", backbone)
        self.encoder = self.build_part("encoder", encoder, in_channels=self.backbone.out_channels,
                                       strides=self.backbone.strides)
        self.decoder = self.build_part("decoder", decoder, in_channels=self.encoder.out_channels,
                                       num_classes=num_classes)
        self.size_divisor = 32

    def forward(self, pixel_values: torch.Tensor, denoising: DenoisingQueries | None = None) -> dict[str, Any]:
        check_pixel_values(pixel_values, self.size_divisor)
        return self.decoder(self.encoder(self.backbone(pixel_values)), denoising)

    def criterion(self) -> DFINECriterion:
        """VFL + L1 + GIoU + FGL + DDF (official weights) on every layer, the first layer's boxes, the encoder
        top-k and the denoising groups."""
        return DFINECriterion(self.num_classes, reg_max=self.decoder.reg_max)

    def training_inputs(self, pixel_values: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Denoising queries built from the targets (contrastive denoising training)."""
        return {"denoising": build_denoising_queries(targets, self.decoder)}

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, torch.Tensor], target_sizes: torch.Tensor, score_threshold: float = 0.0,
                    top_k: int = 300) -> list[dict[str, torch.Tensor]]:
        """Official ``DFINEPostProcessor``: sigmoid, top-k over queries x classes, boxes to xyxy pixels of
        ``target_sizes`` ``[B, 2]`` (height, width); per image ``boxes``, ``scores``, ``labels``, sorted."""
        return detections_to_pixels(*self.select_detections(outputs, top_k), target_sizes, score_threshold)

    @staticmethod
    def select_detections(outputs: dict[str, torch.Tensor], top_k: int = 300
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batched part of :meth:`postprocess` (what an exported ``postprocess=True`` graph runs)."""
        return sigmoid_topk(outputs, top_k)


# --------------------------------------------------------------------------------------------------
# Configurations: Peterande/D-FINE configs/dfine/include/dfine_hgnetv2.yml + dfine_hgnetv2_{n,s,m,l,x}_coco.yml
# --------------------------------------------------------------------------------------------------

#: D-FINE eval preprocessing: resize to 640x640, scale to [0, 1], no mean/std.
DFINE_PRETRAINED_CFG = dict(input_size=(3, 640, 640), resize_mode="stretch", interpolation="bilinear",
                            mean=None, std=None)


def _backbone(name: str, return_idx: tuple[int, ...] = (1, 2, 3), big: bool = False) -> dict[str, Any]:
    """N/S/M: learnable affine blocks, nothing frozen; L/X: the stem frozen and frozen BatchNorm."""
    return dict(name=HGNetV2.component_name, variant=name, use_lab=not big, return_idx=return_idx,
                freeze_at=0 if big else -1, freeze_stem_only=True, freeze_norm=big)


def _encoder(hidden_dim: int = 256, dim_feedforward: int = 1024, expansion: float = 1.0, depth_mult: float = 1.0,
             use_encoder_idx: tuple[int, ...] = (2,)) -> dict[str, Any]:
    return dict(name=HybridEncoder.component_name, hidden_dim=hidden_dim, num_heads=8, dim_feedforward=dim_feedforward,
                dropout=0.0, enc_act="gelu", use_encoder_idx=use_encoder_idx, num_encoder_layers=1,
                pe_temperature=10000.0, expansion=expansion, depth_mult=depth_mult, act="silu",
                fusion_block=RepNCSPELAN4.component_name, downsample_block=sc_down.component_name, lateral_act=None)


def _decoder(num_layers: int, hidden_dim: int = 256, dim_feedforward: int = 1024, num_levels: int = 3,
             num_points: tuple[int, ...] = (3, 6, 3), reg_scale: float = 4.0) -> dict[str, Any]:
    return dict(name=DFINEDecoder.component_name, hidden_dim=hidden_dim, num_queries=300, num_levels=num_levels,
                num_points=num_points, num_heads=8, num_decoder_layers=num_layers, dim_feedforward=dim_feedforward,
                dropout=0.0, activation="relu", num_denoising=100, label_noise_ratio=0.5, box_noise_scale=1.0,
                eval_idx=-1, cross_attn_method="default", reg_max=32, reg_scale=reg_scale)


def _dfine(architecture: str, backbone: dict, encoder: dict, decoder: dict, overrides: dict) -> DFINE:
    defaults = dict(backbone=backbone, encoder=encoder, decoder=decoder, num_classes=80)
    return build_detector(DFINE, architecture, defaults, overrides, DFINE_PRETRAINED_CFG)


@register_model
def dfine_n(**kwargs: Any) -> DFINE:
    """D-FINE-N: HGNetV2-B0 on two levels (strides 16/32), width 128, 3 decoder layers (COCO 42.8 AP, 4M, 7 GFLOPs)."""
    return _dfine("dfine_n", _backbone("B0", (2, 3)),
                  _encoder(128, 512, expansion=0.34, depth_mult=0.5, use_encoder_idx=(1,)),
                  _decoder(3, 128, 512, num_levels=2, num_points=(6, 6)), kwargs)


@register_model
def dfine_s(**kwargs: Any) -> DFINE:
    """D-FINE-S: HGNetV2-B0, 3 decoder layers (COCO 48.5 AP, 10M params, 25 GFLOPs)."""
    return _dfine("dfine_s", _backbone("B0"), _encoder(expansion=0.5, depth_mult=0.34), _decoder(3), kwargs)


@register_model
def dfine_m(**kwargs: Any) -> DFINE:
    """D-FINE-M: HGNetV2-B2, 4 decoder layers (COCO 52.3 AP, 19M params, 57 GFLOPs)."""
    return _dfine("dfine_m", _backbone("B2"), _encoder(depth_mult=0.67), _decoder(4), kwargs)


@register_model
def dfine_l(**kwargs: Any) -> DFINE:
    """D-FINE-L: HGNetV2-B4 (frozen stem and norms), 6 decoder layers (COCO 54.0 AP, 31M params, 91 GFLOPs)."""
    return _dfine("dfine_l", _backbone("B4", big=True), _encoder(), _decoder(6), kwargs)


@register_model
def dfine_x(**kwargs: Any) -> DFINE:
    """D-FINE-X: HGNetV2-B5, encoder width 384 / FFN 2048, 6 decoder layers (COCO 55.8 AP, 62M, 202 GFLOPs)."""
    return _dfine("dfine_x", _backbone("B5", big=True), _encoder(384, 2048), _decoder(6, reg_scale=8.0), kwargs)
