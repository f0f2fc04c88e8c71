"""The official LW-DETR / RF-DETR training recipe: optimiser parameter groups and per-model defaults.

Parameter groups (Atten4Vis/LW-DETR ``util/get_param_dicts.py`` + ``models/backbone/backbone.py``, the same in
roboflow/rf-detr), AdamW:

- ViT backbone: ``lr_encoder * layer_decay ** (num_layers + 1 - layer_id) * component_decay ** 2`` with
  ``layer_id`` 0 for the embeddings, ``i + 1`` for block ``i``, ``num_layers + 1`` for anything else (RF-DETR's
  final LayerNorm, which so trains at the top rate); ``num_layers`` is the block count for LW-DETR and the last
  output index + 1 (13 for RF-DETR's DINOv2-S, outputs after blocks 3/6/9/12) for RF-DETR. No weight decay on
  biases and norms, nor on LW-DETR's position embeddings and layer scales (``pos_embed``, ``gamma``) and on all of
  RF-DETR's embeddings (class token, positions, patch projection); RF-DETR's layer scales (``lambda1``) are decayed.
- decoder layers, their final norm and the reference-point head (official ``transformer.decoder``):
  ``lr * component_decay``, weight decay on every parameter;
- the rest (projector, query embeddings, class / box heads, two-stage heads): ``lr``, weight decay on every
  parameter (the official groups set no exclusion there).

The rules read zoo's parameter names (zoo.models.lwdetr.backbone.WindowedViT uses transformers' DINOv2 names:
``embeddings.*``, ``encoder.layer.{i}.*``, ``layernorm``); tests/models/lwdetr/test_training_recipe.py checks every
parameter's rate and decay against the official functions applied to the official names.

Per-model defaults (:data:`RECIPES`): the official training scripts (scripts/lwdetr_{size}_coco_train.sh, 8 GPUs)
and rfdetr/config.py ``TrainConfig`` (batch 4 x 4 accumulation). The trainer takes lr, the ViT's rate (as
``backbone_lr_mult``), weight decay, clipping, epochs (the official step schedule drops at the last epoch, so the
rate is constant: zoo's default schedule), warm-up and the EMA decay; ``batch_size`` is the official global batch,
for reference (a run's batch is the machine's choice). Not reproduced: rf-detr's EMA warm-up ``tau`` (zoo's EMA warms
up as timm's ``ModelEmaV3``), the official multi-scale list (zoo draws 0.75-1.25 x the size in multiples of 64 for
LW-DETR, the official 448-896) and drop path 0.1 of LW-DETR large / xlarge (a backbone setting).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["Recipe", "RECIPES", "recipe_for", "param_groups", "backbone_layer_id", "backbone_no_weight_decay"]

#: the official ``transformer.decoder``: the decoder layers, their final norm and the reference-point head
DECODER_COMPONENT = ("decoder.layers.", "decoder.norm.", "decoder.ref_point_head.")
_BLOCK = re.compile(r"^encoder\.layer\.(\d+)\.")


@dataclass(frozen=True)
class Recipe:
    """One model's official training settings."""

    lr: float = 1e-4
    lr_encoder: float = 1.5e-4      # the ViT's base rate (times the layer and component decays)
    weight_decay: float = 1e-4
    layer_decay: float = 0.8        # lr_vit_layer_decay
    component_decay: float = 0.7    # lr_component_decay
    epochs: int = 60                # lr_drop = epochs: the official step schedule never drops within a run
    warmup_steps: int = 0
    ema_decay: float = 0.9997
    clip_max_norm: float = 0.1
    batch_size: int = 32            # global (per-GPU batch x GPUs x accumulation)

    def train_defaults(self) -> dict[str, Any]:
        """The :class:`zoo.engine.trainer.TrainConfig` fields this recipe sets (the ViT's rate as a multiplier)."""
        return {"lr": self.lr, "backbone_lr_mult": round(self.lr_encoder / self.lr, 12),
                "weight_decay": self.weight_decay, "clip_max_norm": self.clip_max_norm, "epochs": self.epochs,
                "warmup_steps": self.warmup_steps, "ema_decay": self.ema_decay}


_LW_BIG = dict(batch_size=16)
RECIPES: dict[str, Recipe] = {
    # Atten4Vis/LW-DETR scripts/lwdetr_{size}_coco_train.sh (batch per GPU x 8 GPUs; ema_decay main.py default)
    "lwdetr_tiny": Recipe(layer_decay=0.8, component_decay=0.7),
    "lwdetr_small": Recipe(layer_decay=0.8, component_decay=0.7),
    "lwdetr_medium": Recipe(layer_decay=0.7, component_decay=0.7, **_LW_BIG),
    "lwdetr_large": Recipe(layer_decay=0.7, component_decay=0.5, **_LW_BIG),
    "lwdetr_xlarge": Recipe(layer_decay=0.75, component_decay=0.5, weight_decay=1e-3, **_LW_BIG),
    # roboflow/rf-detr rfdetr/config.py TrainConfig (EMA 0.993 with tau 100; zoo's EMA warms up its own way)
    **{f"rfdetr_{size}": Recipe(epochs=100, ema_decay=0.993, batch_size=16)
       for size in ("nano", "small", "medium", "large")},
}


def recipe_for(model: nn.Module) -> Recipe:
    """The model's official recipe by its architecture name; a model built otherwise gets its lineage's
    (LW-DETR small for the CAE ViT, RF-DETR for DINOv2)."""
    name = getattr(model, "config", {}).get("architecture")
    if name in RECIPES:
        return RECIPES[name]
    return RECIPES["rfdetr_small" if model.backbone.style == "dinov2" else "lwdetr_small"]


def backbone_num_layers(backbone: nn.Module) -> int:
    """The official ``num_layers`` of the layer decay: LW-DETR's block count, RF-DETR's last output index + 1."""
    return backbone.out_indices[-1] + 1 if backbone.style == "dinov2" else len(backbone.encoder.layer)


def backbone_layer_id(name: str, num_layers: int) -> int:
    """0 for the embeddings, ``i + 1`` for block ``i``, ``num_layers + 1`` otherwise (``name`` inside the ViT)."""
    if name.startswith("embeddings."):
        return 0
    block = _BLOCK.match(name)
    return int(block.group(1)) + 1 if block else num_layers + 1


def backbone_no_weight_decay(name: str, style: str) -> bool:
    """The official exclusions (``name`` inside the ViT): biases and norms; LW-DETR (``cae``) also its position
    embeddings and layer scales, RF-DETR (``dinov2``) every embedding parameter."""
    if "bias" in name or "norm" in name:
        return True
    if style == "dinov2":
        return name.startswith("embeddings.")
    return name == "embeddings.position_embeddings" or ".layer_scale" in name


def param_groups(model: nn.Module, lr: float, lr_encoder: float, weight_decay: float, layer_decay: float,
                 component_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups of the official recipe (module doc), parameters of one rate and decay together;
    named ``backbone_layer{id}[_no_decay]``, ``decoder`` and ``rest`` (the trainer logs ``lr_<name>``)."""
    backbone = model.backbone
    num_layers = backbone_num_layers(backbone)
    groups: dict[str, dict[str, Any]] = {}

    def add(name: str, p: nn.Parameter, rate: float, decay: float, order: int) -> None:
        group = groups.setdefault(name, {"params": [], "lr": rate, "weight_decay": decay, "name": name,
                                         "order": order})
        group["params"].append(p)

    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("backbone."):
            inner = name[len("backbone."):]
            layer = backbone_layer_id(inner, num_layers)
            no_decay = backbone_no_weight_decay(inner, backbone.style)
            add(f"backbone_layer{layer}" + ("_no_decay" if no_decay else ""), p,
                lr_encoder * layer_decay ** (num_layers + 1 - layer) * component_decay ** 2,
                0.0 if no_decay else weight_decay, -layer)
        elif name.startswith(DECODER_COMPONENT):
            add("decoder", p, lr * component_decay, weight_decay, -1000)
        else:
            add("rest", p, lr, weight_decay, -2000)
    ordered = sorted(groups.values(), key=lambda g: (g["order"], g["name"]))  # rest, decoder, top layer first
    for g in ordered:
        del g["order"]
    return ordered
