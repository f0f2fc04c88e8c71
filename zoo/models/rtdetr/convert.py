"""RT-DETR and RT-DETRv2 checkpoint layouts.

- official RT-DETR (``{'ema': {'module': sd}}``): zoo keys are these keys;
- official RT-DETRv2: the same plus ``...cross_attn.num_points_scale``, with ``encoder.input_proj.k.{conv,norm}``,
  ``decoder.enc_output.{proj,norm}`` renamed and fixed-size ``decoder.anchors`` / ``decoder.valid_mask`` buffers
  (dropped: zoo computes anchors for each input size);
- Hugging Face transformers' ``RTDetrForObjectDetection`` / ``RTDetrV2ForObjectDetection`` (PekingU/* repos,
  ``save_pretrained``); v2 adds ``encoder_attn.n_points_scale``.

v1 and v2 layouts are told apart by the points-scale buffers, so a v2 checkpoint never loads silently into a v1
model (or the reverse): the strict load reports the buffers as unexpected (or missing).
"""
from __future__ import annotations

from typing import Mapping

import torch

from zoo.weights.checkpoint import StateDict, register_format
from zoo.weights.keymap import KeyMap, KeyRule

__all__ = ["KEYS", "transformers_to_zoo", "zoo_to_transformers", "official_v2_to_zoo"]

_BACKBONE = "model.backbone.model."
_LAYER = _BACKBONE + "encoder.stages.{s}.layers.{l}."
_STEM = {"k": {"0": "1", "1": "2", "2": "3"}}
_BRANCH = {"b": {"0": "a", "1": "b", "2": "c"}}
_DEC = "model.decoder.layers.{i}."

#: transformers ``RTDetr(V2)ForObjectDetection`` <-> zoo (= official) keys, both directions (zoo.weights.keymap)
KEYS = KeyMap([
    KeyRule(_BACKBONE + "_backbone.", "backbone.model."),  # transformers hosting a timm backbone
    KeyRule(_BACKBONE + "embedder.embedder.{k}.convolution.", "backbone.conv1.conv1_{k}.conv.", _STEM),
    KeyRule(_BACKBONE + "embedder.embedder.{k}.normalization.", "backbone.conv1.conv1_{k}.norm.", _STEM),
    KeyRule(_LAYER + "layer.{b}.convolution.", "backbone.res_layers.{s}.blocks.{l}.branch2{b}.conv.", _BRANCH),
    KeyRule(_LAYER + "layer.{b}.normalization.", "backbone.res_layers.{s}.blocks.{l}.branch2{b}.norm.", _BRANCH),
    # stages 1-3 shortcut: avg-pool then conv (short.conv.{conv,norm}); stage 0: conv only (short.{conv,norm})
    KeyRule(_LAYER + "shortcut.1.convolution.", "backbone.res_layers.{s}.blocks.{l}.short.conv.conv."),
    KeyRule(_LAYER + "shortcut.1.normalization.", "backbone.res_layers.{s}.blocks.{l}.short.conv.norm."),
    KeyRule(_LAYER + "shortcut.convolution.", "backbone.res_layers.{s}.blocks.{l}.short.conv."),
    KeyRule(_LAYER + "shortcut.normalization.", "backbone.res_layers.{s}.blocks.{l}.short.norm."),
    KeyRule("model.encoder_input_proj.", "encoder.input_proj."),
    KeyRule("model.encoder.encoder.{i}.layers.{j}.fc1.", "encoder.encoder.{i}.layers.{j}.linear1."),
    KeyRule("model.encoder.encoder.{i}.layers.{j}.fc2.", "encoder.encoder.{i}.layers.{j}.linear2."),
    KeyRule("model.encoder.encoder.{i}.layers.{j}.self_attn_layer_norm.", "encoder.encoder.{i}.layers.{j}.norm1."),
    KeyRule("model.encoder.encoder.{i}.layers.{j}.final_layer_norm.", "encoder.encoder.{i}.layers.{j}.norm2."),
    KeyRule("model.encoder.", "encoder."),  # AIFI attention and the CCFM keep their names
    KeyRule("model.decoder_input_proj.{i}.0.", "decoder.input_proj.{i}.conv."),
    KeyRule("model.decoder_input_proj.{i}.1.", "decoder.input_proj.{i}.norm."),
    KeyRule(_DEC + "self_attn_layer_norm.", "decoder.decoder.layers.{i}.norm1."),
    KeyRule(_DEC + "encoder_attn_layer_norm.", "decoder.decoder.layers.{i}.norm2."),
    KeyRule(_DEC + "final_layer_norm.", "decoder.decoder.layers.{i}.norm3."),
    KeyRule(_DEC + "encoder_attn.n_points_scale", "decoder.decoder.layers.{i}.cross_attn.num_points_scale"),
    KeyRule(_DEC + "encoder_attn.", "decoder.decoder.layers.{i}.cross_attn."),
    KeyRule(_DEC + "fc1.", "decoder.decoder.layers.{i}.linear1."),
    KeyRule(_DEC + "fc2.", "decoder.decoder.layers.{i}.linear2."),
    KeyRule(_DEC + "self_attn.", "decoder.decoder.layers.{i}.self_attn."),
    KeyRule("model.decoder.class_embed.", "decoder.dec_score_head.", read_also=("class_embed.",)),
    KeyRule("model.decoder.bbox_embed.", "decoder.dec_bbox_head.", read_also=("bbox_embed.",)),
    KeyRule("model.decoder.query_pos_head.", "decoder.query_pos_head."),
    *(KeyRule(f"model.{name}.", f"decoder.{name}.")
      for name in ("denoising_class_embed", "enc_output", "enc_score_head", "enc_bbox_head")),
])


def _is_transformers(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("model.backbone.model.") or k.startswith("model.decoder.layers.") for k in sd)


def _is_v2(sd: Mapping[str, torch.Tensor]) -> bool:
    """RT-DETRv2 checkpoints (official and transformers) store each cross-attention's points scale."""
    return any(k.endswith(("cross_attn.num_points_scale", "encoder_attn.n_points_scale")) for k in sd)


def transformers_to_zoo(sd: StateDict) -> StateDict:
    """Map ``RTDetrForObjectDetection`` / ``RTDetrV2ForObjectDetection`` keys to zoo (= official) keys;
    q/k/v projections are concatenated. Heads duplicated at the top level (older saves) are read when the
    ``model.decoder.*`` copies are absent."""
    top = {k: v for k, v in sd.items() if k.split(".")[0] in ("class_embed", "bbox_embed")}
    body = {k: v for k, v in sd.items() if k not in top}
    for key, value in top.items():
        if f"model.decoder.{key}" not in body:
            body[key] = value
    return KEYS.load(body)


def zoo_to_transformers(sd: StateDict) -> StateDict:
    """Zoo RT-DETR keys -> the transformers layout (what ``RTDetrForObjectDetection.save_pretrained`` writes)."""
    return KEYS.save(sd)


def _is_official(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("backbone.res_layers.") for k in sd) and any(k.startswith("decoder.decoder.") for k in sd)


#: official RT-DETRv2 names <-> zoo names (the official RT-DETR ones)
_V2_KEYS = KeyMap([
    KeyRule("encoder.input_proj.{i}.conv.", "encoder.input_proj.{i}.0."),
    KeyRule("encoder.input_proj.{i}.norm.", "encoder.input_proj.{i}.1."),
    KeyRule("decoder.enc_output.proj.", "decoder.enc_output.0."),
    KeyRule("decoder.enc_output.norm.", "decoder.enc_output.1."),
])
#: buffers of official v2 models built with a fixed eval_spatial_size; zoo recomputes them for every input size
_V2_RECOMPUTED = ("decoder.anchors", "decoder.valid_mask")


def official_v2_to_zoo(sd: StateDict) -> StateDict:
    """Official ``RTDETRTransformerv2`` checkpoint -> zoo keys: rename the v2 names, drop the anchor buffers."""
    return {_V2_KEYS.to_ours(k) or k: v for k, v in sd.items() if k not in _V2_RECOMPUTED}


register_format("rtdetr", "transformers-rtdetr", lambda sd: _is_transformers(sd) and not _is_v2(sd),
                transformers_to_zoo)
register_format("rtdetr", "transformers-rtdetrv2", lambda sd: _is_transformers(sd) and _is_v2(sd),
                transformers_to_zoo)
register_format("rtdetr", "official-rtdetr", lambda sd: _is_official(sd) and not _is_v2(sd), lambda sd: sd)
register_format("rtdetr", "official-rtdetrv2", lambda sd: _is_official(sd) and _is_v2(sd), official_v2_to_zoo)
