"""LW-DETR / RF-DETR checkpoint layouts and the transformers mapping.

- ``official-rfdetr``: roboflow/rf-detr's ``LWDETR`` state dict (``{'model': sd, 'args': Namespace}`` .pth
  releases, read by zoo.weights.checkpoint). transformers' ``RfDetrForObjectDetection.save_pretrained`` writes the
  same keys (its files are stored in the official layout), so this one layout reads both; the DINOv2
  ``mask_token`` (unused for detection) is dropped on load and written as zeros on save;
- ``transformers-lwdetr``: transformers' ``LwDetrForObjectDetection`` files (``save_pretrained``).

Zoo keys are the official ones under three prefixes: ``backbone.`` (the ViT, with transformers' DINOv2 names),
``encoder.`` (the projector, official names) and ``decoder.`` (``transformer.decoder.*``, ``transformer.enc_*`` and
the top-level heads / queries). ``to_transformers`` / ``from_transformers`` map ``LwDetrConfig`` /
``RfDetrConfig`` <-> zoo ``model_args``.
"""
from __future__ import annotations

import argparse
from typing import Mapping

import torch

from zoo.weights.checkpoint import Layout, StateDict
from zoo.weights.keymap import KeyMap, KeyRule
from zoo.weights.transformers_format import TransformersMapping, require

__all__ = ["LAYOUTS", "TRANSFORMERS", "RF_KEYS", "LW_KEYS", "rfdetr_to_zoo", "zoo_to_rfdetr", "lwdetr_to_zoo",
           "zoo_to_lwdetr", "to_transformers", "from_transformers"]

# rf-detr's .pth releases hold their training arguments as an argparse.Namespace next to the weights; a Namespace
# only carries attributes (unpickling it runs no code), so torch.load(weights_only=True) may read it
torch.serialization.add_safe_globals([argparse.Namespace])

_DINO = "backbone.0.encoder.encoder."
_MASK_TOKEN = _DINO + "embeddings.mask_token"

#: official rf-detr (and transformers' RfDetr files) <-> zoo
RF_KEYS = KeyMap([
    KeyRule(_DINO + "encoder.layer.", "backbone.encoder.layer."),
    KeyRule(_DINO + "embeddings.", "backbone.embeddings."),
    KeyRule(_DINO + "layernorm.", "backbone.layernorm."),
    KeyRule("backbone.0.projector.", "encoder."),
    *(KeyRule(f"transformer.decoder.{n}.", f"decoder.{n}.") for n in ("layers", "norm", "ref_point_head")),
    *(KeyRule(f"transformer.{n}.", f"decoder.{n}.")
      for n in ("enc_output", "enc_output_norm", "enc_out_class_embed", "enc_out_bbox_embed")),
    *(KeyRule(f"{n}.", f"decoder.{n}.") for n in ("class_embed", "bbox_embed", "query_feat", "refpoint_embed")),
])

_LWB, _LWL = "model.backbone.backbone.", "model.backbone.backbone.encoder.layer.{i}."
_SCALE = "model.backbone.projector.scale_layers.{s}."
_NORM = {"n": {"conv": "conv", "norm": "bn"}}
_C2F = {"c": {"conv1": "cv1", "conv2": "cv2"}, **_NORM}

#: transformers' LwDetr files <-> zoo
LW_KEYS = KeyMap([
    KeyRule(_LWB + "embeddings.projection.", "backbone.embeddings.patch_embeddings.projection."),
    KeyRule(_LWB + "embeddings.", "backbone.embeddings."),
    KeyRule(_LWL + "attention.output.", "backbone.encoder.layer.{i}.attention.output.dense."),
    KeyRule(_LWL + "attention.attention.", "backbone.encoder.layer.{i}.attention.attention."),
    KeyRule(_LWL + "gamma_1", "backbone.encoder.layer.{i}.layer_scale1.lambda1"),
    KeyRule(_LWL + "gamma_2", "backbone.encoder.layer.{i}.layer_scale2.lambda1"),
    KeyRule(_LWL + "intermediate.", "backbone.encoder.layer.{i}.mlp."),
    KeyRule(_LWL + "layernorm_before.", "backbone.encoder.layer.{i}.norm1."),
    KeyRule(_LWL + "layernorm_after.", "backbone.encoder.layer.{i}.norm2."),
    KeyRule(_SCALE + "sampling_layers.{i}.layers.{k}.{n}.", "encoder.stages_sampling.{s}.{i}.{k}.{n}.", _NORM),
    KeyRule(_SCALE + "sampling_layers.{i}.layers.{k}.", "encoder.stages_sampling.{s}.{i}.{k}."),
    KeyRule(_SCALE + "projector_layer.bottlenecks.{j}.{c}.{n}.", "encoder.stages.{s}.0.m.{j}.{c}.{n}.", _C2F),
    KeyRule(_SCALE + "projector_layer.{c}.{n}.", "encoder.stages.{s}.0.{c}.{n}.", _C2F),
    KeyRule(_SCALE + "layer_norm.", "encoder.stages.{s}.1."),
    *(KeyRule("model.decoder.layers.{i}." + theirs, "decoder.layers.{i}." + ours)
      for theirs, ours in (("self_attn.o_proj.", "self_attn.out_proj."), ("self_attn_layer_norm.", "norm1."),
                           ("self_attn.", "self_attn."), ("cross_attn_layer_norm.", "norm2."),
                           ("cross_attn.", "cross_attn."), ("mlp.fc1.", "linear1."), ("mlp.fc2.", "linear2."),
                           ("layer_norm.", "norm3."))),
    KeyRule("model.decoder.layernorm.", "decoder.norm."),
    KeyRule("model.decoder.ref_point_head.", "decoder.ref_point_head."),
    *(KeyRule(f"model.{n}.", f"decoder.{n}.")
      for n in ("enc_output", "enc_output_norm", "enc_out_class_embed", "enc_out_bbox_embed", "query_feat")),
    KeyRule("model.reference_point_embed.", "decoder.refpoint_embed."),
    KeyRule("class_embed.", "decoder.class_embed."),
    KeyRule("bbox_embed.", "decoder.bbox_embed."),
])


def _is_rfdetr(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(_DINO) for k in sd) and any(k.startswith("transformer.decoder.") for k in sd)


def _is_lwdetr_transformers(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("model.backbone.projector.scale_layers.") for k in sd)


def rfdetr_to_zoo(sd: StateDict) -> StateDict:
    """Official rf-detr / transformers RfDetr keys -> zoo keys (the unused DINOv2 mask token dropped)."""
    return {RF_KEYS.to_ours(k) or k: v for k, v in sd.items() if k != _MASK_TOKEN}


def zoo_to_rfdetr(sd: StateDict) -> StateDict:
    """Zoo RF-DETR keys -> the official / transformers RfDetr layout (with a zero mask token)."""
    out, unmapped = {}, []
    for key, value in sd.items():  # the official layout keeps nn.MultiheadAttention's packed in_proj
        theirs = RF_KEYS.to_theirs(key)
        unmapped += [key] if theirs is None else []
        out[theirs or key] = value.contiguous()
    if unmapped:
        raise KeyError(f"{len(unmapped)} keys have no counterpart in the rf-detr layout: {', '.join(unmapped[:8])}")
    dim = sd["backbone.embeddings.position_embeddings"].shape[-1]
    out[_MASK_TOKEN] = torch.zeros(1, dim, dtype=sd["backbone.embeddings.position_embeddings"].dtype)
    return out


def lwdetr_to_zoo(sd: StateDict) -> StateDict:
    """transformers LwDetr keys -> zoo keys (the decoder's q/k/v packed)."""
    return LW_KEYS.load(sd)


def zoo_to_lwdetr(sd: StateDict) -> StateDict:
    """Zoo LW-DETR keys -> transformers' LwDetr layout."""
    return LW_KEYS.save(sd)


#: the layouts LW-DETR / RF-DETR checkpoints come in besides zoo's (``LWDETR.checkpoint_layouts``)
LAYOUTS = (
    Layout("official-rfdetr", _is_rfdetr, rfdetr_to_zoo),
    Layout("transformers-lwdetr", _is_lwdetr_transformers, lwdetr_to_zoo),
)


# --------------------------------------------------------------------------------------------------
# transformers configs: LwDetrConfig / RfDetrConfig <-> zoo model_args
# --------------------------------------------------------------------------------------------------

_SCALE_OF = {"P3": 2.0, "P4": 1.0, "P5": 0.5}
_LEVEL_OF = {v: k for k, v in _SCALE_OF.items()}


def _decoder_config(decoder: Mapping) -> dict:
    return {"d_model": decoder.get("hidden_dim", 256), "num_queries": decoder.get("num_queries", 300),
            "decoder_layers": decoder.get("num_decoder_layers", 3),
            "decoder_self_attention_heads": decoder.get("sa_heads", 8),
            "decoder_cross_attention_heads": decoder.get("ca_heads", 16),
            "decoder_n_points": decoder.get("num_points", 2), "decoder_ffn_dim": decoder.get("dim_feedforward", 2048),
            "dropout": decoder.get("dropout", 0.0), "group_detr": decoder.get("group_detr", 13),
            "decoder_activation_function": "relu", "attention_bias": True}


def to_transformers(model: torch.nn.Module) -> tuple[dict, StateDict]:
    """A zoo LW-DETR / RF-DETR -> (LwDetrConfig / RfDetrConfig as a dict, state dict in that layout)."""
    args = model.config["model_args"]
    backbone, encoder, decoder = args["backbone"], args["encoder"], args["decoder"]
    require(backbone["name"] == "windowed_vit", "backbone.name", "transformers' LW-DETR / RF-DETR have a windowed ViT")
    vit = model.backbone
    common = {"hidden_expansion": encoder.get("expansion", 0.5), "c2f_num_blocks": encoder.get("num_blocks", 3),
              "activation_function": encoder.get("act", "silu"), **_decoder_config(decoder)}
    state = model.state_dict()
    if vit.style == "dinov2":
        require(model.encoder.levels == ["P4"] and encoder.get("norm") == "layer", "encoder",
                "transformers' RF-DETR projects to P4 only, with LayerNorm")
        grid = model.backbone.embeddings.position_embeddings.shape[1] - 1
        side = int(round(grid ** 0.5))
        config = {"model_type": "rf_detr", "architectures": ["RfDetrForObjectDetection"], **common,
                  "backbone_config": {"model_type": "rf_detr_dinov2", "hidden_size": vit.dim,
                                      "num_hidden_layers": len(vit.encoder.layer),
                                      "num_attention_heads": vit.encoder.layer[0].attention.attention.num_heads,
                                      "mlp_ratio": 4, "patch_size": vit.patch_size, "image_size": side * vit.patch_size,
                                      "num_windows": vit.windows_side, "out_indices": list(vit.out_indices),
                                      "layerscale_value": 1.0}}
        require(vit.window_blocks == sorted(set(range(vit.out_indices[-1] + 1)) - set(vit.out_indices)),
                "backbone.window_blocks", "transformers' RF-DETR windows every block up to the last output "
                "except the outputs")
        return config, zoo_to_rfdetr(state)
    require(encoder.get("norm", "batch") == "batch", "encoder.norm", "transformers' LW-DETR projector uses BatchNorm")
    config = {"model_type": "lw_detr", "architectures": ["LwDetrForObjectDetection"], **common,
              "projector_scale_factors": [_SCALE_OF[level] for level in model.encoder.levels],
              "backbone_config": {"model_type": "lw_detr_vit", "hidden_size": vit.dim,
                                  "num_hidden_layers": len(vit.encoder.layer),
                                  "num_attention_heads": vit.encoder.layer[0].attention.attention.num_heads,
                                  "mlp_ratio": 4, "patch_size": vit.patch_size,
                                  "image_size": model.pretrained_cfg["input_size"][-1],
                                  "pretrain_image_size": (vit.embeddings.position_embeddings.shape[1] - 1) ** 0.5
                                  * vit.patch_size, "num_windows": vit.windows_side ** 2,
                                  "window_block_indices": list(vit.window_blocks),
                                  "out_indices": [i + 1 for i in vit.out_indices]}}
    config["backbone_config"]["pretrain_image_size"] = int(config["backbone_config"]["pretrain_image_size"])
    return config, zoo_to_lwdetr(state)


def from_transformers(config: Mapping) -> tuple[str, dict]:
    """LwDetrConfig / RfDetrConfig (config.json) -> ``(architecture, model_args)`` of the zoo model."""
    get = config.get
    bb = get("backbone_config") or {}
    rf = get("model_type") == "rf_detr"
    require(get("decoder_activation_function", "relu") == "relu", "decoder_activation_function", "zoo uses relu")
    require(bb.get("hidden_act", "gelu") == "gelu" and bb.get("mlp_ratio", 4) == 4 and not bb.get("use_swiglu_ffn"),
            "backbone_config", "zoo's ViT has a GELU MLP of ratio 4")
    require(bb.get("qkv_bias", True), "backbone_config.qkv_bias", "zoo's ViT has q/v biases")
    patch = bb.get("patch_size", 16 if not rf else 14)
    decoder = dict(name="lwdetr", hidden_dim=get("d_model", 256), num_queries=get("num_queries", 300),
                   num_decoder_layers=get("decoder_layers", 3), sa_heads=get("decoder_self_attention_heads", 8),
                   ca_heads=get("decoder_cross_attention_heads", 16), num_points=get("decoder_n_points", 4),
                   dim_feedforward=get("decoder_ffn_dim", 2048), dropout=get("dropout", 0.0),
                   group_detr=get("group_detr", 13))
    projector = dict(name="lwdetr_projector", hidden_dim=get("d_model", 256), num_blocks=get("c2f_num_blocks", 3),
                     expansion=get("hidden_expansion", 0.5), act=get("activation_function", "silu"))
    if rf:
        out = list(bb.get("out_indices") or [int(f[5:]) for f in bb.get("out_features", [])])
        image = bb.get("image_size", 518)
        backbone = dict(name="windowed_vit", style="dinov2", dim=bb.get("hidden_size", 384),
                        depth=bb.get("num_hidden_layers", 12), num_heads=bb.get("num_attention_heads", 6),
                        patch_size=patch, num_windows=bb.get("num_windows", 4), out_indices=out, window_blocks=None,
                        pos_grid=image // patch)
        projector.update(levels=["P4"], norm="layer")
        resolution = {24: "rfdetr_nano", 32: "rfdetr_small", 36: "rfdetr_medium", 44: "rfdetr_large"}
        return resolution.get(image // patch, "rfdetr_small"), dict(backbone=backbone, encoder=projector,
                                                                     decoder=decoder)
    # transformers' LwDetrViTBackbone counts the embedding as stage 0, so its stage i is the output of block i - 1;
    # zoo (like the official ViT) numbers the blocks' outputs from 0
    out = [i - 1 for i in (bb.get("out_indices") or [int(f[5:]) for f in bb.get("out_features", [])])]
    require(all(i >= 0 for i in out), "backbone_config.out_indices", "zoo returns block outputs, not the embedding")
    require(bb.get("use_absolute_position_embeddings", True), "backbone_config.use_absolute_position_embeddings",
            "zoo's LW-DETR ViT has absolute position embeddings")
    backbone = dict(name="windowed_vit", style="cae", dim=bb.get("hidden_size", 192),
                    depth=bb.get("num_hidden_layers", 10), num_heads=bb.get("num_attention_heads", 12),
                    patch_size=patch, num_windows=bb.get("num_windows", 16), out_indices=out,
                    window_blocks=list(bb.get("window_block_indices", [])),
                    pos_grid=bb.get("pretrain_image_size", 224) // patch)
    scales = get("projector_scale_factors") or [1.0]
    require(all(s in _LEVEL_OF for s in scales), "projector_scale_factors", f"{scales}: zoo reads 0.5, 1.0, 2.0")
    projector.update(levels=[_LEVEL_OF[s] for s in scales], norm="batch")
    widths = {192: "lwdetr_small" if backbone["depth"] >= 10 else "lwdetr_tiny", 384: "lwdetr_medium",
              768: "lwdetr_xlarge"}
    arch = widths.get(backbone["dim"], "lwdetr_small")
    if arch == "lwdetr_medium" and len(scales) == 2:
        arch = "lwdetr_large"
    return arch, dict(backbone=backbone, encoder=projector, decoder=decoder)


#: ``LwDetrForObjectDetection`` / ``RfDetrForObjectDetection`` <-> zoo (``LWDETR.transformers``)
TRANSFORMERS = TransformersMapping(
    ("lw_detr", "rf_detr"), "DeformableDetrImageProcessor", False, to_transformers, from_transformers,
    lambda config: "official-rfdetr" if config.get("model_type") == "rf_detr" else "transformers-lwdetr")
