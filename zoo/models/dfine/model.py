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
from zoo.models.base import AnchorQueries, ClassHead, Detector, SigmoidTopK, build_detector, check_pixel_values
from zoo.models.dfine import convert
from zoo.models.dfine.criterion import DEIM_LOSS, DFINECriterion
from zoo.models.dfine.decoder import DFINEDecoder
from zoo.models.hgnetv2 import HGNetV2
from zoo.registry import register_family, register_model

__all__ = ["DFINE"]


@register_family
class DFINE(SigmoidTopK, AnchorQueries, Detector):
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
        self.build_parts(backbone, encoder, decoder, num_classes)
        self.size_divisor = 32

    def forward(self, pixel_values: torch.Tensor, denoising: DenoisingQueries | None = None) -> dict[str, Any]:
        check_pixel_values(pixel_values, self.size_divisor)
        return self.decoder(self.encoder(self.backbone(pixel_values)), denoising)

    def criterion(self, **settings: Any) -> DFINECriterion:
        """VFL + L1 + GIoU + FGL + DDF (official weights) on every layer, the first layer's boxes, the encoder
        top-k and the denoising groups; ``settings``: other :class:`DFINECriterion` arguments (the DEIM recipe's
        MAL)."""
        return DFINECriterion(self.num_classes, reg_max=self.decoder.reg_max, **settings)

    @property
    def train_defaults(self) -> dict[str, Any]:
        """The official training recipe of this size (configs/dfine/dfine_hgnetv2_*_coco.yml)."""
        return TRAIN_DEFAULTS[_size(self)]

    @property
    def train_recipes(self) -> dict[str, dict[str, Any]]:
        """``"deim"``: DEIM's recipe for this size (ShihuaHuang95/DEIM configs/deim_dfine/deim_hgnetv2_*_coco.yml)."""
        return {"deim": DEIM_RECIPES[_size(self)]}

    def training_inputs(self, pixel_values: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Denoising queries built from the targets (contrastive denoising training)."""
        return {"denoising": build_denoising_queries(targets, self.decoder)}



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


# --------------------------------------------------------------------------------------------------
# Training recipes (zoo.engine.trainer TrainConfig fields; ``criterion``: DFINECriterion arguments)
# --------------------------------------------------------------------------------------------------

def _size(model: DFINE) -> str:
    """The size whose recipe a model follows: its architecture's (dfine_n ... dfine_x), else the L recipe."""
    architecture = getattr(model, "config", {}).get("architecture", "")
    return architecture if architecture in TRAIN_DEFAULTS else "dfine_l"


def _dfine_recipe(lr: float, backbone_lr: float, weight_decay: float, epochs: int, no_aug: int,
                  multiscale: bool = True) -> dict[str, Any]:
    """Peterande/D-FINE: AdamW, 500 linear warm-up steps then constant (MultiStepLR at 500 epochs), clip 0.1; the
    last ``no_aug`` epochs without photometric / zoom-out / IoU-crop augmentation and multi-scale (policy epoch)."""
    return dict(lr=lr, backbone_lr_mult=backbone_lr / lr, weight_decay=weight_decay, clip_max_norm=0.1,
                epochs=epochs, warmup_steps=500, schedule="constant", no_aug_epochs=no_aug, multiscale=multiscale)


#: the official D-FINE recipes (configs/dfine/dfine_hgnetv2_{n,s,m,l,x}_coco.yml); N has no multi-scale
#: (``base_size_repeat: ~``)
TRAIN_DEFAULTS = {
    "dfine_n": _dfine_recipe(8e-4, 4e-4, 1e-4, 160, 12, multiscale=False),
    "dfine_s": _dfine_recipe(2e-4, 1e-4, 1e-4, 132, 12),
    "dfine_m": _dfine_recipe(2e-4, 2e-5, 1e-4, 132, 12),
    "dfine_l": _dfine_recipe(2.5e-4, 1.25e-5, 1.25e-4, 80, 8),
    "dfine_x": _dfine_recipe(2.5e-4, 2.5e-6, 1.25e-4, 80, 8),
}


def _deim_recipe(size: str, lr: float, backbone_lr: float, weight_decay: float, epochs: int, policy: tuple[int, ...],
                 flat_epochs: int, min_lr_ratio: float = 0.5) -> dict[str, Any]:
    """DEIM (configs/base/deim.yml + deim_hgnetv2_*_coco.yml): Dense O2O (mosaic p 0.5 and mixup p 0.5 in epochs
    [policy[0], policy[1]), flips only before, no augmentation or multi-scale from policy[2] on), MAL (gamma 1.5),
    flat-cosine lr with 2000 quadratic warm-up steps. ``policy`` is the configs' ``policy: epoch``."""
    return {**TRAIN_DEFAULTS[size], **dict(
        lr=lr, backbone_lr_mult=backbone_lr / lr, weight_decay=weight_decay, epochs=epochs, warmup_steps=2000,
        schedule="flat_cosine", flat_epochs=flat_epochs, min_lr_ratio=min_lr_ratio, no_aug_epochs=epochs - policy[2],
        mosaic=0.5, mixup=0.5, mosaic_epochs=policy[:2], mosaic_style="deim", criterion=dict(DEIM_LOSS))}


#: DEIM's recipes for the D-FINE sizes (ShihuaHuang95/DEIM configs/deim_dfine/deim_hgnetv2_{n,s,m,l,x}_coco.yml;
#: N keeps its lr flat, ``flat_epoch: 7800``, ``lr_gamma: 1.0``)
DEIM_RECIPES = {
    "dfine_n": _deim_recipe("dfine_n", 8e-4, 4e-4, 1e-4, 160, (4, 78, 148), 160, min_lr_ratio=1.0),
    "dfine_s": _deim_recipe("dfine_s", 4e-4, 2e-4, 1e-4, 132, (4, 64, 120), 64),
    "dfine_m": _deim_recipe("dfine_m", 4e-4, 4e-5, 1e-4, 102, (4, 49, 90), 49),
    "dfine_l": _deim_recipe("dfine_l", 5e-4, 2.5e-5, 1.25e-4, 58, (4, 29, 50), 29),
    "dfine_x": _deim_recipe("dfine_x", 5e-4, 5e-6, 1.25e-4, 58, (4, 29, 50), 29),
}
