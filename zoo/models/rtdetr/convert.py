"""RT-DETR and RT-DETRv2 checkpoint layouts.

- official RT-DETR (``{'ema': {'module': sd}}``): zoo keys are these keys;
- official RT-DETRv2: the same plus ``...cross_attn.num_points_scale``, with ``encoder.input_proj.k.{conv,norm}``,
  ``decoder.enc_output.{proj,norm}`` renamed and fixed-size ``decoder.anchors`` / ``decoder.valid_mask`` buffers
  (dropped: zoo computes anchors for each input size);
- Hugging Face transformers' ``RTDetrForObjectDetection`` / ``RTDetrV2ForObjectDetection`` (PekingU/* repos,
  ``save_pretrained``); v2 adds ``encoder_attn.n_points_scale``.

v1 and v2 layouts are told apart by the points-scale buffers, so a v2 checkpoint never loads silently into a v1
model (or the reverse): the strict load reports the buffers as unexpected (or missing).

``KEYS`` is the one transformers <-> zoo key table, read in both directions; ``to_transformers`` /
``from_transformers`` map the configs (``RTDetrConfig`` / ``RTDetrV2Config`` <-> zoo ``model_args``) for
``save_pretrained(format="transformers")`` and for loading transformers folders (zoo.weights.transformers_format).
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from zoo.weights.checkpoint import Layout, StateDict
from zoo.weights.keymap import KeyMap, KeyRule, fold_top_level_heads
from zoo.weights.transformers_format import TransformersMapping, UnrepresentableConfigError, require

__all__ = ["KEYS", "LAYOUTS", "TRANSFORMERS", "transformers_to_zoo", "zoo_to_transformers", "official_v2_to_zoo",
           "to_transformers", "from_transformers"]

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
    return KEYS.load(fold_top_level_heads(sd))


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


#: the layouts RT-DETR checkpoints come in besides zoo's (``RTDETR.checkpoint_layouts``)
LAYOUTS = (
    Layout("transformers-rtdetr", lambda sd: _is_transformers(sd) and not _is_v2(sd), transformers_to_zoo),
    Layout("transformers-rtdetrv2", lambda sd: _is_transformers(sd) and _is_v2(sd), transformers_to_zoo),
    Layout("official-rtdetr", lambda sd: _is_official(sd) and not _is_v2(sd), lambda sd: sd),
    Layout("official-rtdetrv2", lambda sd: _is_official(sd) and _is_v2(sd), official_v2_to_zoo),
)


# --------------------------------------------------------------------------------------------------
# transformers configs: RTDetrConfig / RTDetrV2Config <-> zoo model_args (zoo.weights.transformers_format)
# --------------------------------------------------------------------------------------------------

_HF_BLOCKS = 3  # transformers' CSPRepLayer always has 3 RepVGG blocks
#: a padding RepVGG block adds this to its input; act(x + 24) = x + 24 to < 1e-9 for x >= -0.28 (relu/silu/gelu)
_PAD_OFFSET = 24.0
_ACT_LOWER_BOUND = {"relu": 0.0, "silu": -0.2785, "gelu": -0.1700}
_PRESNET_DEPTHS = {("basic", (2, 2, 2, 2)): 18, ("basic", (3, 4, 6, 3)): 34,
                   ("bottleneck", (3, 4, 6, 3)): 50, ("bottleneck", (3, 4, 23, 3)): 101}


def to_transformers(model: torch.nn.Module) -> tuple[dict, StateDict]:
    """A zoo RT-DETR -> (RTDetrConfig / RTDetrV2Config as a dict, state dict in the transformers layout)."""
    args = model.config["model_args"]
    backbone, encoder, decoder = args["backbone"], args["encoder"], args["decoder"]
    v2 = bool(decoder.get("persistent_points_scale"))
    config = {"model_type": "rt_detr_v2" if v2 else "rt_detr",
              "architectures": ["RTDetrV2ForObjectDetection" if v2 else "RTDetrForObjectDetection"],
              **_backbone_config(backbone, model.backbone), **_encoder_config(encoder),
              **_decoder_config(decoder, encoder, model.encoder.out_channels, v2)}
    state = model.state_dict()
    require(not any(re.search(r"bottlenecks\.\d+\.conv\.weight$", k) for k in state), "deploy()",
            "the RepVGG blocks are fused; save before calling model.deploy()")
    blocks = round(3 * encoder.get("depth_mult", 1.0))
    if blocks < _HF_BLOCKS:
        state = _pad_rep_blocks(state, blocks, encoder.get("act", "silu"))
    return config, zoo_to_transformers(state)


def _backbone_config(spec: Mapping, module: torch.nn.Module) -> dict:
    common = {"feat_strides": list(module.strides), "encoder_in_channels": list(module.out_channels)}
    if spec["name"] == "presnet":
        from zoo.models.rtdetr.presnet import _DEPTHS

        depth, big = spec.get("depth", 50), spec.get("depth", 50) >= 50
        widths = [w * (4 if big else 1) for w in (64, 128, 256, 512)]
        return {**common, "freeze_backbone_batch_norms": bool(spec.get("freeze_norm", False)), "backbone_config": {
            "model_type": "rt_detr_resnet", "depths": _DEPTHS[depth], "layer_type": "bottleneck" if big else "basic",
            "hidden_sizes": widths, "embedding_size": 64, "hidden_act": spec.get("act", "relu"),
            "out_features": [f"stage{i + 1}" for i in spec.get("return_idx", (1, 2, 3))]}}
    if spec["name"] == "timm":
        extra = sorted(set(spec) - {"name", "model_name", "strides", "pretrained"})
        require(not extra, f"backbone.{extra[0] if extra else ''}", "timm arguments have no place in TimmBackboneConfig")
        # transformers' frozen BatchNorm would replace timm's BatchNormAct2d and drop its activation: keep timm's
        return {**common, "freeze_backbone_batch_norms": False, "backbone_config": {
            "model_type": "timm_backbone", "backbone": spec["model_name"], "features_only": True, "num_channels": 3,
            "out_indices": list(module.feature_indices)}}
    raise UnrepresentableConfigError(f"backbone.name: {spec['name']!r} has no transformers backbone (presnet, timm)")


def _encoder_config(spec: Mapping) -> dict:
    require(spec["name"] == "hybrid", "encoder.name", f"{spec['name']!r} is not the hybrid encoder transformers has")
    require(spec.get("fusion_block", "csp_rep") == "csp_rep" and not spec.get("fusion_args"), "encoder.fusion_block",
            "transformers' CCFM uses CSPRepLayer only (AKConv and other blocks have no transformers class)")
    require(spec.get("downsample_block", "conv_bn_act") == "conv_bn_act" and not spec.get("downsample_args"),
            "encoder.downsample_block", "transformers' CCFM downsamples with a 3x3 conv+BN+act only")
    require(spec.get("pe_layout", "transformers") == "transformers", "encoder.pe_layout",
            "transformers computes the AIFI position embedding in the corrected layout only")
    blocks, act = round(3 * spec.get("depth_mult", 1.0)), spec.get("act", "silu")
    hidden = spec.get("hidden_dim", 256)
    require(0 < blocks <= _HF_BLOCKS and (blocks == _HF_BLOCKS or (
        act in _ACT_LOWER_BOUND and int(hidden * spec.get("expansion", 1.0)) != hidden)), "encoder.depth_mult",
        f"{blocks} RepVGG blocks per CSP layer; transformers builds {_HF_BLOCKS}, and fewer are padded exactly only "
        f"with a relu/silu/gelu activation and expansion != 1")
    temperature = spec.get("pe_temperature", 10000.0)
    require(float(temperature).is_integer(), "encoder.pe_temperature", "transformers stores it as an int")
    return {"encoder_hidden_dim": hidden, "encoder_attention_heads": spec.get("num_heads", 8),
            "encoder_ffn_dim": spec.get("dim_feedforward", 1024), "dropout": spec.get("dropout", 0.0),
            "encoder_activation_function": spec.get("enc_act", "gelu"),
            "encode_proj_layers": list(spec.get("use_encoder_idx", (2,))),
            "encoder_layers": spec.get("num_encoder_layers", 1), "positional_encoding_temperature": int(temperature),
            "hidden_expansion": spec.get("expansion", 1.0), "activation_function": act}


def _decoder_config(spec: Mapping, encoder: Mapping, in_channels: list[int], v2: bool) -> dict:
    require(spec["name"] == "rtdetr", "decoder.name", f"{spec['name']!r} is not the RT-DETR decoder")
    layers = spec.get("num_decoder_layers", 6)
    require(spec.get("eval_idx", -1) % layers == layers - 1, "decoder.eval_idx",
            "transformers always evaluates the last decoder layer (e.g. r50vd_m's eval_idx=2 of 6 layers)")
    require(spec.get("anchor_eps", 1e-2) == 1e-2, "decoder.anchor_eps", "transformers uses 0.01")
    require(spec.get("dropout", 0.0) == encoder.get("dropout", 0.0), "decoder.dropout",
            "transformers has one dropout for the encoder and the decoder")
    points = spec.get("num_points", 4)
    points = list(points) if isinstance(points, (list, tuple)) else [points]
    require(len(set(points)) == 1, "decoder.num_points", f"{points}: transformers has one point count for all levels")
    config = {"d_model": spec.get("hidden_dim", 256), "num_queries": spec.get("num_queries", 300),
              "num_feature_levels": spec.get("num_levels", 3), "decoder_n_points": points[0],
              "decoder_attention_heads": spec.get("num_heads", 8), "decoder_layers": layers,
              "decoder_ffn_dim": spec.get("dim_feedforward", 1024),
              "decoder_activation_function": spec.get("activation", "relu"),
              "num_denoising": spec.get("num_denoising", 100), "label_noise_ratio": spec.get("label_noise_ratio", 0.5),
              "box_noise_scale": spec.get("box_noise_scale", 1.0), "decoder_in_channels": list(in_channels)}
    if v2:
        config.update(decoder_method=spec.get("cross_attn_method", "default"), decoder_n_levels=config["num_feature_levels"])
    else:
        require(spec.get("cross_attn_method", "default") == "default", "decoder.cross_attn_method",
                "RTDetrConfig has bilinear sampling only (discrete sampling is RT-DETRv2's)")
    return config


def _pad_rep_blocks(state: StateDict, blocks: int, act: str) -> StateDict:
    """Add RepVGG blocks ``blocks..2`` to every CSP layer as exact identities plus an offset (transformers always
    builds 3). The first padding block outputs ``act(x + 24)``: its input is an ``act`` output (>= -0.28), so that is
    ``x + 24`` to within 1e-9; later padding blocks pass it on unchanged, and conv3's BatchNorm subtracts the offset."""
    state = dict(state)
    layers = sorted({k.split(".bottlenecks.")[0] for k in state if ".bottlenecks." in k})
    for layer in layers:
        conv2 = state[f"{layer}.bottlenecks.0.conv2.conv.weight"]
        channels, dtype = conv2.shape[0], conv2.dtype
        for i in range(blocks, _HF_BLOCKS):
            block = f"{layer}.bottlenecks.{i}"
            state[f"{block}.conv1.conv.weight"] = torch.zeros(channels, channels, 3, 3, dtype=dtype)
            state[f"{block}.conv2.conv.weight"] = torch.eye(channels, dtype=dtype)[:, :, None, None]
            for conv, bias in (("conv1", _PAD_OFFSET if i == blocks else 0.0), ("conv2", 0.0)):
                norm = f"{block}.{conv}.norm"
                state[f"{norm}.weight"] = torch.ones(channels, dtype=dtype)
                state[f"{norm}.bias"] = torch.full((channels,), bias, dtype=dtype)
                state[f"{norm}.running_mean"] = torch.zeros(channels, dtype=dtype)
                state[f"{norm}.running_var"] = torch.full((channels,), 1 - 1e-5, dtype=dtype)  # + eps = 1
                state[f"{norm}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
        weight = state[f"{layer}.conv3.conv.weight"]
        mean = f"{layer}.conv3.norm.running_mean"
        state[mean] = state[mean] + _PAD_OFFSET * weight.sum(dim=(1, 2, 3)).to(state[mean].dtype)
    return state


def from_transformers(config: Mapping) -> tuple[str, dict]:
    """RTDetrConfig / RTDetrV2Config (config.json) -> ``(architecture, model_args)`` of the zoo model."""
    v2 = config["model_type"] == "rt_detr_v2"
    get = config.get
    # anchor_image_size (fixed anchors for one input size) needs no field: zoo computes the same anchors per size
    for name, value in (("normalize_before", False), ("eval_size", None), ("learn_initial_query", False),
                        ("with_box_refine", True), ("layer_norm_eps", 1e-5),
                        ("batch_norm_eps", 1e-5), ("decoder_offset_scale", 0.5)):
        require(get(name, value) == value, name, f"{get(name)!r}; zoo builds RT-DETR with {value!r}")
    dropout = get("dropout", 0.0)
    for name in ("attention_dropout", "activation_dropout"):
        require(get(name, 0.0) in (0.0, dropout), name, "zoo has one dropout rate per attention layer")
    levels = get("num_feature_levels", 3)
    require(get("decoder_n_levels", levels) == levels, "decoder_n_levels", f"must equal num_feature_levels {levels}")
    hidden = get("encoder_hidden_dim", 256)
    require(list(get("decoder_in_channels", [hidden] * 3)) == [hidden] * len(get("decoder_in_channels", [0] * 3)),
            "decoder_in_channels", f"{get('decoder_in_channels')}: the decoder reads the encoder's {hidden} channels")
    backbone, base = _backbone_from_config(config)
    points = get("decoder_n_points", 4)
    decoder = dict(name="rtdetr", hidden_dim=get("d_model", 256), num_queries=get("num_queries", 300),
                   num_levels=levels, num_points=[points] * levels if v2 else points,
                   num_heads=get("decoder_attention_heads", 8), num_decoder_layers=get("decoder_layers", 6),
                   dim_feedforward=get("decoder_ffn_dim", 1024), dropout=dropout,
                   activation=get("decoder_activation_function", "relu"), num_denoising=get("num_denoising", 100),
                   label_noise_ratio=get("label_noise_ratio", 0.5), box_noise_scale=get("box_noise_scale", 1.0),
                   eval_idx=-1)
    if v2:
        decoder.update(cross_attn_method=get("decoder_method", "default"), persistent_points_scale=True)
    encoder = dict(name="hybrid", hidden_dim=hidden, num_heads=get("encoder_attention_heads", 8),
                   dim_feedforward=get("encoder_ffn_dim", 1024), dropout=dropout,
                   enc_act=get("encoder_activation_function", "gelu"),
                   use_encoder_idx=list(get("encode_proj_layers", [2])), num_encoder_layers=get("encoder_layers", 1),
                   pe_temperature=float(get("positional_encoding_temperature", 10000)),
                   expansion=get("hidden_expansion", 1.0), depth_mult=1.0, act=get("activation_function", "silu"))
    return ("rtdetrv2_" if v2 else "rtdetr_") + base, dict(backbone=backbone, encoder=encoder, decoder=decoder)


def _backbone_from_config(config: Mapping) -> tuple[dict, str]:
    """The zoo backbone spec and the name of the zoo architecture it comes from (``r50vd``; timm: ``r18vd``)."""
    spec = config.get("backbone_config")
    require(isinstance(spec, Mapping), "backbone_config", "missing; zoo needs the backbone described")
    kind = spec.get("model_type")
    if kind == "rt_detr_resnet":
        layer_type, depths = spec.get("layer_type", "bottleneck"), tuple(spec.get("depths", (3, 4, 6, 3)))
        depth = _PRESNET_DEPTHS.get((layer_type, depths))
        require(depth is not None, "backbone_config.depths", f"{list(depths)} ({layer_type}) is not PResNet 18/34/50/101")
        widths = [w * (4 if depth >= 50 else 1) for w in (64, 128, 256, 512)]
        require(list(spec.get("hidden_sizes", widths)) == widths, "backbone_config.hidden_sizes", f"PResNet has {widths}")
        require(spec.get("embedding_size", 64) == 64, "backbone_config.embedding_size", "PResNet's stem has 64")
        for name in ("downsample_in_first_stage", "downsample_in_bottleneck"):
            require(not spec.get(name, False), f"backbone_config.{name}", "PResNet-vd does not")
        features = spec.get("out_features") or [f"stage{i}" for i in spec.get("out_indices", [2, 3, 4])]
        require(all(re.fullmatch(r"stage[1-4]", f) for f in features), "backbone_config.out_features",
                f"{features}: zoo returns PResNet stages stage1..stage4")
        return dict(name="presnet", depth=depth, return_idx=[int(f[5:]) - 1 for f in features],
                    freeze_at=0 if depth >= 50 else -1, freeze_norm=bool(config.get("freeze_backbone_batch_norms", True)),
                    act=spec.get("hidden_act", "relu")), f"r{depth}vd"
    if kind == "timm_backbone":
        require(not config.get("freeze_backbone_batch_norms", True), "freeze_backbone_batch_norms",
                "True with a timm backbone: transformers then replaces timm's BatchNormAct2d by a plain frozen "
                "BatchNorm and drops its activation, which zoo does not reproduce")
        require(spec.get("output_stride") in (None, 32), "backbone_config.output_stride", "zoo uses timm's default")
        require(spec.get("num_channels", 3) == 3, "backbone_config.num_channels", "RGB input only")
        return dict(name="timm", model_name=spec["backbone"], strides=list(config.get("feat_strides", [8, 16, 32]))), "r18vd"
    raise UnrepresentableConfigError(f"backbone_config.model_type: {kind!r} (zoo reads rt_detr_resnet, timm_backbone)")


def _check_built(model: torch.nn.Module, config: Mapping) -> None:
    spec = config["backbone_config"]
    if spec.get("model_type") == "timm_backbone":
        require(list(model.backbone.feature_indices) == list(spec.get("out_indices", [])), "backbone_config.out_indices",
                f"{spec.get('out_indices')} do not give the features at feat_strides {config.get('feat_strides')} "
                f"(zoo takes the timm features at indices {model.backbone.feature_indices})")


#: ``RTDetrForObjectDetection`` / ``RTDetrV2ForObjectDetection`` <-> zoo (``RTDETR.transformers``)
TRANSFORMERS = TransformersMapping(
    ("rt_detr", "rt_detr_v2"), "RTDetrImageProcessor", False, to_transformers, from_transformers,
    lambda config: "transformers-rtdetrv2" if config["model_type"] == "rt_detr_v2" else "transformers-rtdetr",
    _check_built)
