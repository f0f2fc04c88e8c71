"""DETR (Carion et al., 2020): ResNet -> transformer encoder/decoder -> 100 set predictions.

Reproduces facebookresearch/detr's ``DETR`` module: the backbone is a timm ResNet with frozen BatchNorm
(``detr_resnet``), the padding mask is resized to the feature map (nearest) and gives the sine position
embedding, the transformer is the post-norm DETR transformer (``encoder="detr"``, ``decoder="detr"``), and the
heads are a linear classifier over ``num_classes + 1`` (the last is "no object") and a 3-layer box MLP.
Parameter names follow the official checkpoints (``backbone.body`` stands for ``backbone.0.body``), so the
official weights load after that one rename and the transformers weights through :mod:`convert`.

COCO models use ``num_classes=91``: the class index *is* the COCO category id (1..90, with gaps; names in
``zoo.data.coco_names.COCO91_NAMES``), and index 91 is no-object.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers.mlp import MLP
from zoo.layers.position import PositionEmbeddingSine
from zoo.layers.topk import topk_lowest_index
from zoo.models.base import ClassHead, Detector, build_detector, check_pixel_values, detections_to_pixels
from zoo.models.detr import convert
from zoo.models.detr.backbone import DetrResNet
from zoo.models.detr.criterion import SetCriterion
from zoo.models.detr.transformer import DetrTransformer, DetrTransformerDecoder, DetrTransformerEncoder
from zoo.registry import register_family, register_model

__all__ = ["DETR", "pad_images"]


def pad_images(images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad ``[3, H_i, W_i]`` images at the bottom/right to the batch maximum, as DETR's
    ``nested_tensor_from_tensor_list`` does. Returns ``(pixel_values [B, 3, H, W], pixel_mask [B, H, W])`` with
    ``pixel_mask`` True on valid pixels (the transformers convention)."""
    if len(images) == 0:
        raise ValueError("pad_images needs at least one image")
    for i, img in enumerate(images):
        if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[0] != 3:
            shape = list(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(f"image {i} must be a tensor [3, H, W], got {shape}")
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    first = images[0]
    batch = first.new_zeros((len(images), 3, height, width))
    mask = torch.zeros((len(images), height, width), dtype=torch.bool, device=first.device)
    for img, padded, valid in zip(images, batch, mask):
        padded[:, : img.shape[1], : img.shape[2]].copy_(img)
        valid[: img.shape[1], : img.shape[2]] = True
    return batch, mask


@register_family
class DETR(Detector):
    """``forward(pixel_values, pixel_mask=None)`` -> ``{"pred_logits": [B, Q, C + 1], "pred_boxes": [B, Q, 4]}``.

    pixel_values: a float ``[B, 3, H, W]`` batch (normalised as ``pretrained_cfg`` says) with an optional
    ``pixel_mask [B, H, W]`` that is 1/True on valid pixels and 0 on padding; or a list of ``[3, H_i, W_i]``
    images, padded here with :func:`pad_images`. Any H and W work. Logits are softmax logits whose last column
    is no-object; boxes are normalised (cx, cy, w, h) relative to each image's *unpadded* size. In training
    mode (with ``aux_loss``) the output also has ``aux_outputs``: the same heads on decoder layers 1..L-1.
    """

    family = "detr"
    checkpoint_layouts = convert.LAYOUTS
    transformers = convert.TRANSFORMERS
    parts = {"encoder": DetrTransformerEncoder, "decoder": DetrTransformerDecoder}  # the backbone: registry
    class_heads = (ClassHead(r"class_embed", extra_rows=1),)
    #: facebookresearch/detr main.py: lr 1e-4, backbone 1e-5, weight decay 1e-4, gradient clipping 0.1
    train_defaults = {"lr": 1e-4, "backbone_lr_mult": 0.1, "weight_decay": 1e-4, "clip_max_norm": 0.1}

    def __init__(self, backbone: dict[str, Any], encoder: dict[str, Any], decoder: dict[str, Any],
                 num_classes: int = 91, num_queries: int = 100, hidden_dim: int = 256, aux_loss: bool = True):
        super().__init__()
        self.backbone = self.build_part("backbone", backbone)
        self.transformer = DetrTransformer(self.build_part("encoder", encoder, d_model=hidden_dim),
                                           self.build_part("decoder", decoder, d_model=hidden_dim))
        self.position_embedding = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.input_proj = nn.Conv2d(self.backbone.out_channels[-1], hidden_dim, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.aux_loss = aux_loss

    def forward(self, pixel_values: torch.Tensor | Sequence[torch.Tensor],
                pixel_mask: torch.Tensor | None = None) -> dict[str, Any]:
        pixel_values, padding = self._inputs(pixel_values, pixel_mask)
        features = self.backbone(pixel_values)[-1]
        # the mask follows the feature map by nearest resizing, as in the reference Joiner
        mask = F.interpolate(padding[None].float(), size=features.shape[-2:]).to(torch.bool)[0]
        pos = self.position_embedding(mask).to(features.dtype)
        # a copy, not a view: a view of the parameter would still require grad under no_grad
        query_pos = self.query_embed.weight.unsqueeze(0).repeat(features.shape[0], 1, 1)
        hs = self.transformer(self.input_proj(features), mask, query_pos, pos)
        with_aux = self.training and self.aux_loss
        if not with_aux:
            hs = hs[-1:]
        logits, boxes = self.class_embed(hs), self.bbox_embed(hs).sigmoid()
        out: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if with_aux:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out

    def criterion(self) -> SetCriterion:
        """DETR's SetCriterion: cross-entropy (no-object weight 0.1) + L1 + GIoU, Hungarian matching per layer."""
        return SetCriterion(self.num_classes)

    def training_inputs(self, pixel_values: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """The valid-pixel mask of a padded batch, from each target's ``size`` (all valid when none is given)."""
        b, _, h, w = pixel_values.shape
        mask = torch.ones((b, h, w), dtype=torch.bool, device=pixel_values.device)
        for valid, target in zip(mask, targets):
            if "size" in target:
                height, width = (int(v) for v in target["size"])
                valid[height:] = False
                valid[:, width:] = False
        return {"pixel_mask": mask}

    @staticmethod
    def _inputs(pixel_values: Any, pixel_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate the input and return ``(batch, padding mask True on padding)``."""
        if isinstance(pixel_values, (list, tuple)):
            if pixel_mask is not None:
                raise ValueError("pass either a list of images (padded here) or a batch with pixel_mask, not both")
            pixel_values, pixel_mask = pad_images(pixel_values)
        check_pixel_values(pixel_values, 1)
        b, _, h, w = pixel_values.shape
        if pixel_mask is None:
            return pixel_values, torch.zeros((b, h, w), dtype=torch.bool, device=pixel_values.device)
        if pixel_mask.shape != (b, h, w):
            raise ValueError(f"pixel_mask must have shape [B, H, W] = {[b, h, w]} (1 on valid pixels), "
                             f"got {list(pixel_mask.shape)}")
        return pixel_values, ~pixel_mask.to(device=pixel_values.device, dtype=torch.bool)

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, torch.Tensor], target_sizes: torch.Tensor, score_threshold: float = 0.0,
                    top_k: int | None = None) -> list[dict[str, torch.Tensor]]:
        """DETR's ``PostProcess``: softmax, drop no-object, best class per query, boxes to xyxy pixels.

        target_sizes: ``[B, 2]`` (height, width) of the original images. Returns per image ``boxes`` (xyxy,
        pixels), ``scores`` and ``labels`` (the class index: the COCO category id for COCO models), one per query
        in query order; ``top_k`` keeps the k best queries sorted by score.
        """
        return detections_to_pixels(*self.select_detections(outputs, top_k), target_sizes, score_threshold)

    @staticmethod
    def select_detections(outputs: dict[str, torch.Tensor], top_k: int | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batched part of :meth:`postprocess` (also what an exported ``postprocess=True`` graph runs):
        ``(boxes [B, K, 4] normalised cxcywh, scores [B, K], labels [B, K])``, every query in query order, or the
        ``top_k`` best sorted by score."""
        scores, labels = outputs["pred_logits"].softmax(-1)[..., :-1].max(-1)
        boxes = outputs["pred_boxes"]
        if top_k is not None:
            scores, index = topk_lowest_index(scores, min(top_k, scores.shape[1]))  # ties as exported graphs
            labels = labels.gather(1, index)
            boxes = boxes.gather(1, index.unsqueeze(-1).expand(-1, -1, 4))
        return boxes, scores, labels


# --------------------------------------------------------------------------------------------------
# Configurations (facebookresearch/detr main.py defaults and hubconf.py)
# --------------------------------------------------------------------------------------------------

#: DETR eval preprocessing: shortest side 800 (longest at most 1333), ImageNet mean/std.
DETR_PRETRAINED_CFG = dict(input_size=(3, 800, 1333), resize_mode="shortest_edge", shortest_edge=800,
                           longest_edge=1333, interpolation="bilinear",
                           mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

_TRANSFORMER = dict(nhead=8, dim_feedforward=2048, dropout=0.1, activation="relu")


def _detr(architecture: str, model_name: str, dilation: bool, overrides: dict) -> DETR:
    defaults = dict(
        backbone=dict(name=DetrResNet.component_name, model_name=model_name, dilation=dilation),
        encoder=dict(name=DetrTransformerEncoder.component_name, num_encoder_layers=6, **_TRANSFORMER),
        decoder=dict(name=DetrTransformerDecoder.component_name, num_decoder_layers=6, **_TRANSFORMER),
        num_classes=91, num_queries=100, hidden_dim=256, aux_loss=True,
    )
    return build_detector(DETR, architecture, defaults, overrides, DETR_PRETRAINED_CFG)


@register_model
def detr_resnet50(**kwargs: Any) -> DETR:
    """DETR R50, 500 epochs (COCO val 42.0 AP, 41.3M params)."""
    return _detr("detr_resnet50", "resnet50", False, kwargs)


@register_model
def detr_resnet50_dc5(**kwargs: Any) -> DETR:
    """DETR R50-DC5: dilated layer4, stride 16 (COCO val 43.3 AP, 41.3M params)."""
    return _detr("detr_resnet50_dc5", "resnet50", True, kwargs)


@register_model
def detr_resnet101(**kwargs: Any) -> DETR:
    """DETR R101 (COCO val 43.5 AP, 60.2M params)."""
    return _detr("detr_resnet101", "resnet101", False, kwargs)


@register_model
def detr_resnet101_dc5(**kwargs: Any) -> DETR:
    """DETR R101-DC5: dilated layer4, stride 16 (COCO val 44.9 AP, 60.2M params)."""
    return _detr("detr_resnet101_dc5", "resnet101", True, kwargs)
