"""DEIMv2 (Intellindust-AI-Lab/DEIMv2, Apache-2.0): D-FINE's lineage with a DINOv3 ViT + Spatial Tuning Adapter
backbone (S/M/L/X) or a pruned HGNetV2 (Atto/Femto/Pico with the LiteEncoder, N with the hybrid encoder), DEIM's
CCFM blocks fused by sums, and the DEIMv2 decoder (RMSNorm, SwiGLU; decoder.py).

Shared with D-FINE through its seams: the family class (``DEIMv2(DFINE)``: forward, postprocessing, denoising),
the FDR decoder (``DEIMv2Decoder(DFINEDecoder)``), HGNetV2 (zoo.models.hgnetv2, timm's blocks), the hybrid encoder
and its blocks (zoo.layers). DEIMv2's own: decoder.py, encoder.py (LiteEncoder), dinov3.py (ViT + STA; not timm's or
transformers' ViT: see its docstring), convert.py (official and transformers layouts). Configs: the official
``configs/deimv2/deimv2_{hgnetv2_atto,femto,pico,n; dinov3_s,m,l,x}_coco.yml`` at the bottom of this file.
"""
from __future__ import annotations

from typing import Any

from zoo.layers.elan import RepNCSPELAN4, RepNCSPELAN5, sc_down
from zoo.layers.hybrid_encoder import HybridEncoder
from zoo.models.base import build_detector
from zoo.models.deimv2 import convert
from zoo.models.deimv2.decoder import DEIMv2Decoder
from zoo.models.deimv2.dinov3 import DINOv3STA
from zoo.models.deimv2.encoder import LiteEncoder
from zoo.models.dfine.criterion import DEIMV2_LOSS, DEIMV2_MATCHER_CHANGE_EPOCH, DFINECriterion
from zoo.models.dfine.model import DFINE
from zoo.models.hgnetv2 import HGNetV2
from zoo.registry import register_family, register_model

__all__ = ["DEIMv2"]

#: DEIMv2's official criterion weights (configs/base/deimv2.yml ``DEIMCriterion.weight_dict``); MAL takes VFL's place
DEIMV2_LOSS_WEIGHTS = {"loss_mal": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_fgl": 0.15, "loss_ddf": 1.5}


@register_family
class DEIMv2(DFINE):
    """DEIMv2. ``forward(pixel_values)`` -> ``{"pred_logits": [B, Q, C], "pred_boxes": [B, Q, 4]}`` as D-FINE's.
    pixel_values: float ``[B, 3, H, W]`` in [0, 1] (HGNetV2 variants) or ImageNet-normalised (DINOv3 variants;
    ``pretrained_cfg`` says which), H and W multiples of 32."""

    family = "deimv2"
    checkpoint_layouts = convert.LAYOUTS
    transformers = convert.TRANSFORMERS
    parts = {"decoder": DEIMv2Decoder}  # backbone (HGNetV2 / DINOv3+STA) and encoder (hybrid / lite): registry

    def criterion(self, **settings: Any) -> DFINECriterion:
        """DEIMv2's loss (configs/base/deimv2.yml ``DEIMCriterion``): MAL (gamma 1.5) + L1 + GIoU + FGL + DDF with
        the weights of :data:`DEIMV2_LOSS_WEIGHTS` on the union of all layers' matches; Atto/Femto/Pico only MAL +
        L1 + GIoU, each layer with its own matches (``losses: [mal, boxes]``, ``use_uni_set: False``). The matcher
        switches to the cost ``-(p * IoU**4)`` at the size's ``matcher_change_epoch``. ``settings``: other
        :class:`DFINECriterion` arguments (the trainer passes the recipe's, its change epoch scaled to the run)."""
        size = _size(self)
        weights = dict(DEIMV2_LOSS_WEIGHTS)
        light = size in LIGHT_SIZES
        if light:
            del weights["loss_fgl"], weights["loss_ddf"]
        defaults = dict(DEIMV2_LOSS, alpha=0.75, weight_dict=weights, matching="per_layer" if light else "union",
                        style="official", matcher_change_epoch=DEIMV2_MATCHER_CHANGE_EPOCH[size.split("_")[1]])
        return DFINECriterion(self.num_classes, reg_max=self.decoder.reg_max, **{**defaults, **settings})

    @property
    def backbone_lr_prefix(self) -> str:
        """Parameters trained at the backbone lr: the DINOv3 ViT (``backbone.dinov3``; its spatial tuning adapter
        and feature projections train at the main lr, as the official optimiser groups say), else the backbone."""
        return "backbone.dinov3." if isinstance(self.backbone, DINOv3STA) else "backbone."

    @property
    def train_defaults(self) -> dict[str, Any]:
        """The official training recipe of this size (configs/deimv2/deimv2_*_coco.yml)."""
        return TRAIN_DEFAULTS[_size(self)]

    @property
    def train_recipes(self) -> dict[str, dict[str, Any]]:
        """None besides the default: DEIMv2's own recipe is already DEIM's (D-FINE's ``deim`` is not for it)."""
        return {}


def _size(model: DEIMv2) -> str:
    """The size whose recipe and loss a model follows: its architecture's (deimv2_atto ... deimv2_x), else L's."""
    architecture = getattr(model, "config", {}).get("architecture", "")
    return architecture if architecture in TRAIN_DEFAULTS else "deimv2_l"


#: the sizes trained without FGL / DDF and without the union of matches
LIGHT_SIZES = ("deimv2_atto", "deimv2_femto", "deimv2_pico")


def _recipe(size: str, lr: float, backbone_lr: float, weight_decay: float, epochs: int, policy: tuple[int, int, int],
            flat_epochs: int, min_lr_ratio: float = 0.5, warmup: int = 2000, mosaic: float = 0.5, mixup: float = 0.5,
            multiscale: bool = True) -> dict[str, Any]:
    """configs/deimv2/deimv2_*_coco.yml over configs/base/deimv2.yml: AdamW, linear warm-up, flat-cosine lr down to
    ``lr * min_lr_ratio``; mosaic (p ``mosaic``) and mixup (p ``mixup``) in epochs [policy[0], policy[1]), no
    photometric / zoom-out / IoU-crop augmentation from policy[2] on; clip 0.1, EMA 0.9999. The matcher changes at
    the size's ``matcher_change_epoch`` (a criterion setting; scaled with ``--epochs`` like the epoch milestones)."""
    return dict(lr=lr, backbone_lr_mult=backbone_lr / lr, weight_decay=weight_decay, clip_max_norm=0.1, epochs=epochs,
                warmup_steps=warmup, schedule="flat_cosine", flat_epochs=min(flat_epochs, epochs),
                min_lr_ratio=min_lr_ratio, no_aug_epochs=epochs - policy[2], multiscale=multiscale, mosaic=mosaic,
                mixup=mixup, mosaic_epochs=policy[:2], mosaic_style="deim", ema_decay=0.9999,
                criterion={"matcher_change_epoch": DEIMV2_MATCHER_CHANGE_EPOCH[size.split("_")[1]]})


#: the official DEIMv2 recipes; Atto/Femto/Pico/N train at one size (``base_size_repeat: ~``), N keeps its lr flat
#: (``flat_epoch: 7800``, ``lr_gamma: 1.0``), Atto/Femto/Pico have no mixup (``mixup_epochs`` out of range)
TRAIN_DEFAULTS = {
    "deimv2_atto": _recipe("deimv2_atto", 2e-3, 1e-3, 1e-4, 500, (4, 250, 400), 250, warmup=4000, mosaic=0.3,
                           mixup=0.0, multiscale=False),
    "deimv2_femto": _recipe("deimv2_femto", 1.6e-3, 8e-4, 1e-4, 500, (4, 250, 400), 250, warmup=4000, mixup=0.0,
                            multiscale=False),
    "deimv2_pico": _recipe("deimv2_pico", 1.6e-3, 8e-4, 1e-4, 500, (4, 250, 400), 250, warmup=4000, mixup=0.0,
                           multiscale=False),
    "deimv2_n": _recipe("deimv2_n", 8e-4, 4e-4, 1e-4, 160, (4, 78, 148), 160, min_lr_ratio=1.0, multiscale=False),
    "deimv2_s": _recipe("deimv2_s", 5e-4, 2.5e-5, 1e-4, 132, (4, 64, 120), 64),
    "deimv2_m": _recipe("deimv2_m", 5e-4, 2.5e-5, 1e-4, 102, (4, 49, 90), 49),
    "deimv2_l": _recipe("deimv2_l", 5e-4, 1.25e-5, 1.25e-4, 68, (4, 34, 60), 34),
    "deimv2_x": _recipe("deimv2_x", 5e-4, 1e-5, 1.25e-4, 58, (4, 29, 50), 29),
}


# --------------------------------------------------------------------------------------------------
# Configurations: Intellindust-AI-Lab/DEIMv2 configs/base/deimv2.yml + configs/deimv2/deimv2_*_coco.yml
# --------------------------------------------------------------------------------------------------

def _cfg(size: int, normalised: bool) -> dict[str, Any]:
    """Eval preprocessing: stretch to ``size``, scale to [0, 1]; DINOv3 variants also ImageNet mean/std."""
    imagenet = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) if normalised else dict(mean=None, std=None)
    return dict(input_size=(3, size, size), resize_mode="stretch", interpolation="bilinear", **imagenet)


def _hgnetv2(variant: str, return_idx: tuple[int, ...]) -> dict[str, Any]:
    return dict(name=HGNetV2.component_name, variant=variant, use_lab=True, return_idx=return_idx, freeze_at=-1,
                freeze_stem_only=True, freeze_norm=False)


def _dinov3(kind: str, return_layers: tuple[int, ...], sta_channels: int = 16,
            hidden_dim: int | None = None) -> dict[str, Any]:
    """The official ViT names: vit_tiny / vit_tinyplus (DINOv3-distilled, DEIMv2 S/M), dinov3_vits16 / vits16plus."""
    vit = {"vit_tiny": dict(embed_dim=192, num_heads=3, ffn_hidden=768),
           "vit_tinyplus": dict(embed_dim=256, num_heads=4, ffn_hidden=1024),
           "dinov3_vits16": dict(embed_dim=384, num_heads=6, ffn_hidden=1536, ffn="mlp"),
           "dinov3_vits16plus": dict(embed_dim=384, num_heads=6, ffn_hidden=1536, ffn="swiglu")}[kind]
    if kind.startswith("dinov3"):  # 4 registers, LayerScale 1e-5, LayerNorm eps 1e-5, masked key bias, normed feats
        vit.update(num_register_tokens=4, layer_scale=1e-5, key_bias=False, eps=1e-5, feature_norm="all")
    else:
        vit.update(ffn="mlp", feature_norm="none")
    spec = dict(name=DINOv3STA.component_name, vit=dict(vit, depth=12, return_layers=return_layers),
                sta_channels=sta_channels)
    return spec if hidden_dim is None else dict(spec, hidden_dim=hidden_dim)


def _hybrid(hidden_dim: int, dim_feedforward: int, expansion: float, depth_mult: float, deim: bool = True,
            use_encoder_idx: tuple[int, ...] = (2,)) -> dict[str, Any]:
    """``version: deim`` (RepNCSPELAN5) for the DINOv3 variants, ``version: dfine`` (RepNCSPELAN4, csp2) for N;
    both fuse by sums (``fuse_op: sum``)."""
    fusion = dict(fusion_block=RepNCSPELAN5.component_name) if deim else dict(
        fusion_block=RepNCSPELAN4.component_name, fusion_args={"csp_type": "csp2"})
    return dict(name=HybridEncoder.component_name, hidden_dim=hidden_dim, num_heads=8, dim_feedforward=dim_feedforward,
                dropout=0.0, enc_act="gelu", use_encoder_idx=use_encoder_idx, num_encoder_layers=1,
                pe_temperature=10000.0, expansion=expansion, depth_mult=depth_mult, act="silu",
                downsample_block=sc_down.component_name, lateral_act=None, fuse_op="sum", identity_proj=True, **fusion)


def _lite(hidden_dim: int) -> dict[str, Any]:
    return dict(name=LiteEncoder.component_name, hidden_dim=hidden_dim, expansion=0.34, depth_mult=0.5, act="silu")


def _decoder(hidden_dim: int, num_layers: int, dim_feedforward: int, num_levels: int = 3,
             num_points: tuple[int, ...] = (3, 6, 3), num_queries: int = 300, lite: bool = False) -> dict[str, Any]:
    """``DEIMTransformer`` (activation and mlp_act SiLU); Atto/Femto/Pico: no gateway, one shared box head."""
    return dict(name=DEIMv2Decoder.component_name, hidden_dim=hidden_dim, num_queries=num_queries,
                num_levels=num_levels, num_points=num_points, num_heads=8, num_decoder_layers=num_layers,
                dim_feedforward=dim_feedforward, dropout=0.0, activation="silu", num_denoising=100,
                label_noise_ratio=0.5, box_noise_scale=1.0, eval_idx=-1, cross_attn_method="default", reg_max=32,
                reg_scale=4.0, use_gateway=not lite, share_bbox_head=lite, mlp_act="silu", head_act="silu",
                lqe_act="silu", enc_projection=False, query_pos_per_layer=False)


def _deimv2(architecture: str, backbone: dict, encoder: dict, decoder: dict, overrides: dict, size: int) -> DEIMv2:
    defaults = dict(backbone=backbone, encoder=encoder, decoder=decoder, num_classes=80)
    return build_detector(DEIMv2, architecture, defaults, overrides,
                          _cfg(size, backbone["name"] == DINOv3STA.component_name))


@register_model
def deimv2_atto(**kwargs: Any) -> DEIMv2:
    """DEIMv2-Atto: HGNetV2-Atto, LiteEncoder 64, 3 layers, 100 queries, 320x320 (COCO 23.8 AP, 0.5M, 0.8 GFLOPs)."""
    return _deimv2("deimv2_atto", _hgnetv2("Atto", (2,)), _lite(64),
                   _decoder(64, 3, 160, 2, (4, 2), num_queries=100, lite=True), kwargs, 320)


@register_model
def deimv2_femto(**kwargs: Any) -> DEIMv2:
    """DEIMv2-Femto: HGNetV2-Femto, LiteEncoder 96, 3 layers, 150 queries, 416x416 (COCO 31.0 AP, 1.0M, 1.7 GFLOPs)."""
    return _deimv2("deimv2_femto", _hgnetv2("Femto", (2,)), _lite(96),
                   _decoder(96, 3, 256, 2, (4, 2), num_queries=150, lite=True), kwargs, 416)


@register_model
def deimv2_pico(**kwargs: Any) -> DEIMv2:
    """DEIMv2-Pico: HGNetV2-Pico, LiteEncoder 112, 3 layers, 200 queries, 640x640 (COCO 38.5 AP, 1.5M, 5.2 GFLOPs)."""
    return _deimv2("deimv2_pico", _hgnetv2("Pico", (2,)), _lite(112),
                   _decoder(112, 3, 320, 2, (4, 2), num_queries=200, lite=True), kwargs, 640)


@register_model
def deimv2_n(**kwargs: Any) -> DEIMv2:
    """DEIMv2-N: HGNetV2-B0 (strides 16/32), hybrid encoder 128, 3 layers, 640x640 (COCO 43.0 AP, 3.6M, 6.8 GFLOPs)."""
    return _deimv2("deimv2_n", _hgnetv2("B0", (2, 3)), _hybrid(128, 512, 0.34, 0.5, deim=False, use_encoder_idx=(1,)),
                   _decoder(128, 3, 512, 2, (6, 6)), kwargs, 640)


@register_model
def deimv2_s(**kwargs: Any) -> DEIMv2:
    """DEIMv2-S: distilled ViT-Tiny + STA, width 192, 4 layers (COCO 50.9 AP, 9.7M, 25.6 GFLOPs w/o ViT attention)."""
    return _deimv2("deimv2_s", _dinov3("vit_tiny", (3, 7, 11)), _hybrid(192, 512, 0.34, 0.67),
                   _decoder(192, 4, 512), kwargs, 640)


@register_model
def deimv2_m(**kwargs: Any) -> DEIMv2:
    """DEIMv2-M: distilled ViT-Tiny+ + STA, width 256, 4 layers (COCO 53.0 AP, 18.1M, 52.2 GFLOPs w/o ViT attention)."""
    return _deimv2("deimv2_m", _dinov3("vit_tinyplus", (3, 7, 11)), _hybrid(256, 512, 0.67, 1.0),
                   _decoder(256, 4, 512), kwargs, 640)


@register_model
def deimv2_l(**kwargs: Any) -> DEIMv2:
    """DEIMv2-L: DINOv3 ViT-S/16 + STA, width 224, 4 layers (COCO 56.0 AP, 32.2M, 96.7 GFLOPs w/o ViT attention)."""
    return _deimv2("deimv2_l", _dinov3("dinov3_vits16", (5, 8, 11), 32, 224), _hybrid(224, 896, 1.0, 1.0),
                   _decoder(224, 4, 1792), kwargs, 640)


@register_model
def deimv2_x(**kwargs: Any) -> DEIMv2:
    """DEIMv2-X: DINOv3 ViT-S+/16 + STA, width 256, 6 layers (COCO 57.8 AP, 50.3M, 151.6 GFLOPs w/o ViT attention)."""
    return _deimv2("deimv2_x", _dinov3("dinov3_vits16plus", (5, 8, 11), 64, 256), _hybrid(256, 1024, 1.25, 1.37),
                   _decoder(256, 6, 2048), kwargs, 640)
