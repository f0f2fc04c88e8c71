"""LW-DETR (Atten4Vis/LW-DETR, Apache-2.0) and RF-DETR (roboflow/rf-detr, Apache-2.0 for N/S/M/L): a plain ViT with
windowed attention -> multi-scale projector -> two-stage deformable decoder trained with Group DETR.

RF-DETR is LW-DETR with a DINOv2 backbone (windowed, a class token per window), a LayerNorm projector at P4 only and
its own sizes, so both are configs of one family here: the backbone is zoo.models.lwdetr.backbone.WindowedViT
(``style="cae"`` / ``"dinov2"``), the projector zoo.models.lwdetr.projector.Projector, the decoder
zoo.models.lwdetr.decoder.LWDETRDecoder; checkpoint layouts in convert.py. Configs at the bottom: the official
scripts/lwdetr_{size}_coco_*.sh and rfdetr/config.py (RFDETR{Nano,Small,Medium,Large}Config).
"""
from __future__ import annotations

from typing import Any

import torch

from zoo.models.base import AnchorQueries, ClassHead, Detector, SigmoidTopK, build_detector, check_pixel_values
from zoo.models.lwdetr import convert, recipe
from zoo.models.lwdetr.criterion import LWDETRCriterion
from zoo.models.lwdetr.backbone import WindowedViT
from zoo.models.lwdetr.decoder import LWDETRDecoder
from zoo.models.lwdetr.projector import Projector
from zoo.registry import register_family, register_model

__all__ = ["LWDETR"]


@register_family
class LWDETR(SigmoidTopK, AnchorQueries, Detector):
    """LW-DETR / RF-DETR. ``forward(pixel_values)`` -> ``{"pred_logits": [B, Q, C], "pred_boxes": [B, Q, 4]}``
    (sigmoid logits, normalised cxcywh); ``pixel_values``: ``[B, 3, H, W]`` normalised with the ImageNet mean/std,
    H and W multiples of ``size_divisor`` (patch size x windows per side).

    In training mode the ``group_detr`` query groups all run (Group DETR) and the outputs are
    ``{"pred_logits": [B, Q*G, C], "pred_boxes": [B, Q*G, 4], "aux_outputs": [{"pred_logits", "pred_boxes"}, ...]
    (every decoder layer but the last, same shapes), "enc_outputs": {"pred_logits": [B, Q*G, C],
    "pred_boxes": [B, Q*G, 4]}`` (the two-stage proposals each group selected), queries group-major (group g is
    ``[g*Q:(g+1)*Q]``), the same dict shape as zoo's RT-DETR and D-FINE; a criterion matches each group on its own.
    """

    family = "lwdetr"
    checkpoint_layouts = convert.LAYOUTS
    transformers = convert.TRANSFORMERS
    parts = {"backbone": WindowedViT, "encoder": Projector, "decoder": LWDETRDecoder}
    class_heads = (ClassHead(r"decoder\.class_embed"), ClassHead(r"decoder\.enc_out_class_embed\.\d+"))

    def __init__(self, backbone: dict[str, Any], encoder: dict[str, Any], decoder: dict[str, Any],
                 num_classes: int = 91):
        super().__init__()
        self.build_parts(backbone, encoder, decoder, num_classes)
        self.size_divisor = self.backbone.size_divisor

    def forward(self, pixel_values: torch.Tensor) -> dict[str, Any]:
        check_pixel_values(pixel_values, self.size_divisor)
        return self.decoder(self.encoder(self.backbone(pixel_values)))

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) of each projector level for an input of ``height`` x ``width`` (padded to ``size_divisor``)."""
        d = self.size_divisor
        height, width = -(-height // d) * d, -(-width // d) * d
        return [(height // s, width // s) for s in self.encoder.strides]

    def criterion(self) -> LWDETRCriterion:
        """The LW-DETR loss (IoU-aware BCE, L1, GIoU on every layer and the two-stage proposals, per group)."""
        return LWDETRCriterion(self.num_classes, group_detr=self.decoder.group_detr)

    @property
    def train_defaults(self) -> dict[str, Any]:
        """This model's official recipe (lr, the ViT's rate as ``backbone_lr_mult``, epochs, EMA; recipe.py)."""
        return recipe.recipe_for(self).train_defaults()

    def param_groups(self, lr: float, backbone_lr_mult: float, weight_decay: float) -> list[dict[str, Any]]:
        """The official optimiser groups: layer-wise decay in the ViT, component decay (recipe.param_groups)."""
        r = recipe.recipe_for(self)
        return recipe.param_groups(self, lr, lr * backbone_lr_mult, weight_decay, r.layer_decay, r.component_decay)



# --------------------------------------------------------------------------------------------------
# Configurations: Atten4Vis/LW-DETR scripts/lwdetr_{tiny,small,medium,large,xlarge}_coco_eval.sh and
# roboflow/rf-detr rfdetr/config.py (RFDETRNano/Small/Medium/LargeConfig)
# --------------------------------------------------------------------------------------------------

_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _pretrained_cfg(size: int) -> dict[str, Any]:
    """Both resize to a square and normalise with the ImageNet mean/std."""
    return dict(input_size=(3, size, size), resize_mode="stretch", interpolation="bilinear", **_IMAGENET)


#: LW-DETR ViTs (CAE-pretrained): (dim, heads)
_LW_VITS = {"vit_tiny": (192, 12), "vit_small": (384, 12), "vit_base": (768, 12)}


def _lw_backbone(vit: str, depth: int = 10, window_blocks: tuple[int, ...] = (0, 1, 3, 6, 7, 9),
                 out_indices: tuple[int, ...] = (2, 4, 5, 9)) -> dict[str, Any]:
    dim, heads = _LW_VITS[vit]
    return dict(name=WindowedViT.component_name, style="cae", dim=dim, depth=depth, num_heads=heads, patch_size=16,
                num_windows=16, out_indices=out_indices, window_blocks=window_blocks, pos_grid=14)


def _projector(levels: tuple[str, ...] = ("P4",), hidden_dim: int = 256, norm: str = "batch") -> dict[str, Any]:
    return dict(name=Projector.component_name, hidden_dim=hidden_dim, levels=levels, num_blocks=3, expansion=0.5,
                act="silu", norm=norm)


def _decoder(num_layers: int = 3, hidden_dim: int = 256, heads: tuple[int, int] = (8, 16), num_points: int = 2,
             num_queries: int = 300) -> dict[str, Any]:
    return dict(name=LWDETRDecoder.component_name, hidden_dim=hidden_dim, num_queries=num_queries,
                num_decoder_layers=num_layers, sa_heads=heads[0], ca_heads=heads[1], num_points=num_points,
                dim_feedforward=2048, dropout=0.0, group_detr=13)


def _build(architecture: str, backbone: dict, encoder: dict, decoder: dict, size: int, overrides: dict) -> LWDETR:
    defaults = dict(backbone=backbone, encoder=encoder, decoder=decoder, num_classes=91)
    return build_detector(LWDETR, architecture, defaults, overrides, _pretrained_cfg(size))


_BIG = dict(hidden_dim=384, heads=(12, 24), num_points=4)


@register_model
def lwdetr_tiny(**kwargs: Any) -> LWDETR:
    """LW-DETR-tiny: 6-block ViT-tiny, 100 queries (COCO 42.6 AP, 12.1M params, 11.2 GFLOPs, 640 px)."""
    return _build("lwdetr_tiny", _lw_backbone("vit_tiny", 6, (0, 2, 4), (1, 3, 5)), _projector(),
                  _decoder(num_queries=100), 640, kwargs)


@register_model
def lwdetr_small(**kwargs: Any) -> LWDETR:
    """LW-DETR-small: 10-block ViT-tiny (COCO 48.0 AP, 14.6M params, 16.6 GFLOPs, 640 px)."""
    return _build("lwdetr_small", _lw_backbone("vit_tiny"), _projector(), _decoder(), 640, kwargs)


@register_model
def lwdetr_medium(**kwargs: Any) -> LWDETR:
    """LW-DETR-medium: 10-block ViT-small (COCO 52.5 AP, 28.2M params, 42.8 GFLOPs, 640 px)."""
    return _build("lwdetr_medium", _lw_backbone("vit_small"), _projector(), _decoder(), 640, kwargs)


@register_model
def lwdetr_large(**kwargs: Any) -> LWDETR:
    """LW-DETR-large: 10-block ViT-small, P3 + P5, width 384 (COCO 56.1 AP, 46.8M params, 71.6 GFLOPs, 640 px)."""
    return _build("lwdetr_large", _lw_backbone("vit_small"), _projector(("P3", "P5"), 384),
                  _decoder(**_BIG), 640, kwargs)


@register_model
def lwdetr_xlarge(**kwargs: Any) -> LWDETR:
    """LW-DETR-xlarge: 10-block ViT-base, P3 + P5, width 384 (COCO 58.3 AP, 118.0M params, 174.1 GFLOPs, 640 px)."""
    return _build("lwdetr_xlarge", _lw_backbone("vit_base"), _projector(("P3", "P5"), 384),
                  _decoder(**_BIG), 640, kwargs)


def _rf_backbone(resolution: int) -> dict[str, Any]:
    """DINOv2-S (no registers), patch 16, 2 x 2 windows, outputs after blocks 3/6/9/12, a position grid of
    ``resolution / 16``."""
    return dict(name=WindowedViT.component_name, style="dinov2", dim=384, depth=12, num_heads=6, patch_size=16,
                num_windows=2, out_indices=(3, 6, 9, 12), window_blocks=None, pos_grid=resolution // 16)


def _rfdetr(architecture: str, resolution: int, num_layers: int, overrides: dict) -> LWDETR:
    return _build(architecture, _rf_backbone(resolution), _projector(norm="layer"), _decoder(num_layers),
                  resolution, overrides)


@register_model
def rfdetr_nano(**kwargs: Any) -> LWDETR:
    """RF-DETR-N: DINOv2-S windowed, 384 px, 2 decoder layers (COCO 48.4 AP, 30.5M params)."""
    return _rfdetr("rfdetr_nano", 384, 2, kwargs)


@register_model
def rfdetr_small(**kwargs: Any) -> LWDETR:
    """RF-DETR-S: DINOv2-S windowed, 512 px, 3 decoder layers (COCO 53.0 AP, 32.1M params)."""
    return _rfdetr("rfdetr_small", 512, 3, kwargs)


@register_model
def rfdetr_medium(**kwargs: Any) -> LWDETR:
    """RF-DETR-M: DINOv2-S windowed, 576 px, 4 decoder layers (COCO 54.7 AP, 33.7M params)."""
    return _rfdetr("rfdetr_medium", 576, 4, kwargs)


@register_model
def rfdetr_large(**kwargs: Any) -> LWDETR:
    """RF-DETR-L: DINOv2-S windowed, 704 px, 4 decoder layers (COCO 56.5 AP, 33.9M params)."""
    return _rfdetr("rfdetr_large", 704, 4, kwargs)
