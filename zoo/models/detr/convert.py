"""DETR checkpoint layouts -> zoo keys.

- official (facebookresearch/detr, ``{'model': state_dict}``): zoo keys are the official keys except
  ``backbone.0.body.`` -> ``backbone.body.``.
- transformers ``DetrForObjectDetection`` (``facebook/detr-resnet-50`` family, timm backbone): the files on the
  Hub and ``save_pretrained`` use the legacy names (``model.backbone.conv_encoder.model``, ``out_proj``, ``fc1``);
  transformers 5.x renames them at load time (``model.backbone.model``, ``o_proj``, ``mlp.fc1``), and both
  spellings are accepted here. Separate q/k/v projections are concatenated into ``in_proj_{weight,bias}``.

FrozenBatchNorm has no ``num_batches_tracked``; such counters in a checkpoint are dropped.
"""
from __future__ import annotations

from typing import Mapping

import torch

from zoo.weights.checkpoint import StateDict, register_format
from zoo.weights.keymap import KeyMap, KeyRule

__all__ = ["KEYS", "official_to_zoo", "transformers_to_zoo", "zoo_to_transformers"]

_OFFICIAL_BACKBONE = "backbone.0.body."


def official_to_zoo(sd: StateDict) -> StateDict:
    """Official DETR keys -> zoo keys (the backbone prefix is the only difference)."""
    return {("backbone.body." + k[len(_OFFICIAL_BACKBONE):] if k.startswith(_OFFICIAL_BACKBONE) else k): v
            for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def _is_official(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(_OFFICIAL_BACKBONE) for k in sd) and any(k.startswith("transformer.") for k in sd)


_PART = {"part": {"encoder": "encoder", "decoder": "decoder"}}
_ENC, _DEC, _ANY = "model.encoder.layers.{i}.", "model.decoder.layers.{i}.", "model.{part}.layers.{i}."

#: transformers ``DetrForObjectDetection`` (legacy names, as saved; ``read_also``: 5.x names) <-> zoo keys
KEYS = KeyMap([
    KeyRule("model.backbone.conv_encoder.model.", "backbone.body.", read_also=("model.backbone.model.",)),
    KeyRule("model.input_projection.", "input_proj."),
    KeyRule("model.query_position_embeddings.", "query_embed."),
    KeyRule("model.decoder.layernorm.", "transformer.decoder.norm."),
    KeyRule("class_labels_classifier.", "class_embed."),
    KeyRule("bbox_predictor.", "bbox_embed."),
    *(KeyRule(_ANY + f"fc{n}.", f"transformer.{{part}}.layers.{{i}}.linear{n}.", _PART,
              read_also=(_ANY + f"mlp.fc{n}.",)) for n in (1, 2)),
    KeyRule(_ANY + "self_attn_layer_norm.", "transformer.{part}.layers.{i}.norm1.", _PART),
    KeyRule(_ENC + "final_layer_norm.", "transformer.encoder.layers.{i}.norm2."),
    KeyRule(_DEC + "encoder_attn_layer_norm.", "transformer.decoder.layers.{i}.norm2."),
    KeyRule(_DEC + "final_layer_norm.", "transformer.decoder.layers.{i}.norm3."),
    KeyRule(_ANY + "self_attn.out_proj.", "transformer.{part}.layers.{i}.self_attn.out_proj.", _PART,
            read_also=(_ANY + "self_attn.o_proj.",)),
    KeyRule(_DEC + "encoder_attn.out_proj.", "transformer.decoder.layers.{i}.multihead_attn.out_proj.",
            read_also=(_DEC + "encoder_attn.o_proj.",)),
    KeyRule(_ANY + "self_attn.", "transformer.{part}.layers.{i}.self_attn.", _PART),
    KeyRule(_DEC + "encoder_attn.", "transformer.decoder.layers.{i}.multihead_attn."),
])


def transformers_to_zoo(sd: StateDict) -> StateDict:
    """``DetrForObjectDetection`` keys (legacy or 5.x names) -> zoo keys; q/k/v concatenated in that order."""
    return KEYS.load({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")})


def zoo_to_transformers(sd: StateDict) -> StateDict:
    """Zoo DETR keys -> the transformers layout (the legacy names ``save_pretrained`` writes)."""
    return KEYS.save(sd)


def _is_transformers(sd: Mapping[str, torch.Tensor]) -> bool:
    return "class_labels_classifier.weight" in sd or any(
        k.startswith(("model.backbone.conv_encoder.", "model.backbone.model.")) for k in sd)


register_format("detr", "official-detr", _is_official, official_to_zoo)
register_format("detr", "transformers-detr", _is_transformers, transformers_to_zoo)
