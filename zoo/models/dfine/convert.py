"""D-FINE checkpoint layouts.

- zoo keys are the official ``DFINE`` keys (Peterande/D-FINE; DEIM's D-FINE models are the same classes) except
  the hybrid encoder's ``input_proj.{i}.{0,1}`` (RT-DETR's names; official ``conv``/``norm``);
- official release files (``{'ema': {'module': sd}}`` / ``{'model': sd}``, read by zoo.weights.checkpoint): the
  fixed-size ``decoder.anchors`` / ``decoder.valid_mask`` buffers are dropped (derived; zoo computes them for each
  input size, Peterande/D-FINE#82) and ``decoder.decoder.{up,reg_scale}`` (the same tensors as ``decoder.up`` /
  ``decoder.reg_scale``, shared by reference) are checked equal and dropped;
- Hugging Face transformers' ``DFineForObjectDetection`` (ustc-community/dfine-* repos, ``save_pretrained``).
  Files converted before huggingface/transformers#40257 have each decoder self-attention's ``k_proj`` equal to its
  ``v_proj`` (the converter sliced ``in_proj`` wrongly, #40253): such a file is refused.

``KEYS`` is the one transformers <-> zoo key table, read in both directions; ``to_transformers`` /
``from_transformers`` map ``DFineConfig`` <-> zoo ``model_args``.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from zoo.weights.checkpoint import CheckpointError, Layout, StateDict
from zoo.weights.keymap import KeyMap, KeyRule, fold_top_level_heads
from zoo.weights.transformers_format import TransformersMapping, UnrepresentableConfigError, require

__all__ = ["KEYS", "LAYOUTS", "TRANSFORMERS", "transformers_to_zoo", "zoo_to_transformers", "official_to_zoo", "to_transformers",
           "from_transformers", "HGNETV2_ARCHS"]

_BB = "model.backbone.model."
_STEM = {"s": {n: n for n in ("stem1", "stem2a", "stem2b", "stem3", "stem4")}}
_CONV = {"c": {"conv1": "conv1", "conv2": "conv2"}}
_BLOCK = _BB + "encoder.stages.{s}.blocks.{b}."
_ELAN = (("conv1.", "cv1."), ("csp_rep1.", "cv2.0."), ("conv2.", "cv2.1."), ("csp_rep2.", "cv3.0."),
         ("conv3.", "cv3.1."), ("conv4.", "cv4."))
_DEC = "model.decoder.layers.{i}."
#: the AIFI layers as ``save_pretrained`` writes them (and as the Hub files have them) / as the module names them
_AIFI, _AIFI_MEM = "model.encoder.encoder.{i}.layers.{j}.", "model.encoder.aifi.{i}.layers.{j}."


def _conv_bn(theirs: str, ours: str, values: Mapping = {}) -> list[KeyRule]:
    return [KeyRule(theirs + "convolution.", ours + "conv.", values),
            KeyRule(theirs + "normalization.", ours + "bn.", values)]


#: transformers ``DFineForObjectDetection`` files <-> zoo keys, both directions (zoo.weights.keymap); transformers 5
#: renames some modules in memory (``aifi``, ``mlp.layers``, ``o_proj``) but reads and writes files with these names
KEYS = KeyMap([
    *_conv_bn(_BB + "embedder.{s}.", "backbone.stem.{s}.", _STEM),
    KeyRule(_BB + "embedder.", "backbone.stem."),  # learnable affine blocks (lab) keep their names
    *_conv_bn(_BB + "encoder.stages.{s}.downsample.", "backbone.stages.{s}.downsample."),
    *_conv_bn(_BLOCK + "layers.{l}.{c}.", "backbone.stages.{s}.blocks.{b}.layers.{l}.{c}.", _CONV),
    *_conv_bn(_BLOCK + "layers.{l}.", "backbone.stages.{s}.blocks.{b}.layers.{l}."),
    *_conv_bn(_BLOCK + "aggregation.{a}.", "backbone.stages.{s}.blocks.{b}.aggregation.{a}."),
    KeyRule(_BB + "encoder.stages.", "backbone.stages."),
    KeyRule("model.encoder_input_proj.", "encoder.input_proj."),
    *(KeyRule(_AIFI + theirs, "encoder.encoder.{i}.layers.{j}." + ours, read_also=(_AIFI_MEM + mem,))
      for theirs, ours, mem in (("self_attn.out_proj.", "self_attn.out_proj.", "self_attn.o_proj."),
                                ("self_attn.", "self_attn.", "self_attn."),
                                ("self_attn_layer_norm.", "norm1.", "self_attn_layer_norm."),
                                ("fc1.", "linear1.", "mlp.layers.0."), ("fc2.", "linear2.", "mlp.layers.1."),
                                ("final_layer_norm.", "norm2.", "final_layer_norm."))),
    *(KeyRule(f"model.encoder.{blocks}.{{i}}.{theirs}", f"encoder.{blocks}.{{i}}.{ours}")
      for blocks in ("fpn_blocks", "pan_blocks") for theirs, ours in _ELAN),
    KeyRule("model.encoder.downsample_convs.{i}.conv1.", "encoder.downsample_convs.{i}.0.cv1."),
    KeyRule("model.encoder.downsample_convs.{i}.conv2.", "encoder.downsample_convs.{i}.0.cv2."),
    KeyRule("model.encoder.", "encoder."),  # lateral convs keep their names
    KeyRule("model.decoder_input_proj.{i}.0.", "decoder.input_proj.{i}.conv."),
    KeyRule("model.decoder_input_proj.{i}.1.", "decoder.input_proj.{i}.norm."),
    KeyRule(_DEC + "self_attn.out_proj.", "decoder.decoder.layers.{i}.self_attn.out_proj.",
            read_also=(_DEC + "self_attn.o_proj.",)),
    KeyRule(_DEC + "self_attn.", "decoder.decoder.layers.{i}.self_attn."),
    KeyRule(_DEC + "self_attn_layer_norm.", "decoder.decoder.layers.{i}.norm1."),
    KeyRule(_DEC + "encoder_attn.", "decoder.decoder.layers.{i}.cross_attn."),
    KeyRule(_DEC + "gateway.", "decoder.decoder.layers.{i}.gateway."),
    KeyRule(_DEC + "fc1.", "decoder.decoder.layers.{i}.linear1.", read_also=(_DEC + "mlp.layers.0.",)),
    KeyRule(_DEC + "fc2.", "decoder.decoder.layers.{i}.linear2.", read_also=(_DEC + "mlp.layers.1.",)),
    KeyRule(_DEC + "final_layer_norm.", "decoder.decoder.layers.{i}.norm3."),
    KeyRule("model.decoder.lqe_layers.", "decoder.decoder.lqe_layers."),
    KeyRule("model.decoder.class_embed.", "decoder.dec_score_head.", read_also=("class_embed.",)),
    KeyRule("model.decoder.bbox_embed.", "decoder.dec_bbox_head.", read_also=("bbox_embed.",)),
    *(KeyRule(f"model.decoder.{name}", f"decoder.{name}")
      for name in ("query_pos_head.", "pre_bbox_head.", "up", "reg_scale")),
    KeyRule("model.enc_output.0.", "decoder.enc_output.proj."),
    KeyRule("model.enc_output.1.", "decoder.enc_output.norm."),
    *(KeyRule(f"model.{name}.", f"decoder.{name}.")
      for name in ("denoising_class_embed", "enc_score_head", "enc_bbox_head")),
])

_SELF_ATTN_K = re.compile(r"^model\.decoder\.layers\.(\d+)\.self_attn\.k_proj\.weight$")


def _is_transformers(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("model.decoder.lqe_layers.") for k in sd)


def _check_k_proj(sd: Mapping[str, torch.Tensor]) -> None:
    for key in sd:
        m = _SELF_ATTN_K.match(key)
        if m and torch.equal(sd[key], sd.get(key.replace("k_proj", "v_proj"), torch.empty(0))):
            raise CheckpointError(
                f"{key} equals its v_proj: this D-FINE file was converted by transformers' converter before the fix "
                "of huggingface/transformers#40253 (k_proj took the v slice of in_proj), so its decoder attention is "
                "wrong. Download a revision uploaded after the fix (Aug 2025), or convert the official checkpoint "
                "with zoo.create_model(name, checkpoint_path='<official .pth>')")


def transformers_to_zoo(sd: StateDict) -> StateDict:
    """``DFineForObjectDetection`` keys -> zoo keys (q/k/v packed); refuses files with the k_proj == v_proj bug.
    Heads duplicated at the top level (tied copies) are read when the ``model.decoder.*`` ones are absent."""
    _check_k_proj(sd)
    return KEYS.load(fold_top_level_heads(sd))


def zoo_to_transformers(sd: StateDict) -> StateDict:
    """Zoo D-FINE keys -> the transformers layout (what ``DFineForObjectDetection.save_pretrained`` writes)."""
    return KEYS.save(sd)


def _is_official(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("decoder.decoder.lqe_layers.") for k in sd) and any(
        re.match(r"encoder\.input_proj\.\d+\.conv\.", k) for k in sd)


#: official names <-> zoo names
_OFFICIAL_KEYS = KeyMap([KeyRule("encoder.input_proj.{i}.conv.", "encoder.input_proj.{i}.0."),
                         KeyRule("encoder.input_proj.{i}.norm.", "encoder.input_proj.{i}.1.")])
_DERIVED = ("decoder.anchors", "decoder.valid_mask")
_SHARED = {"decoder.decoder.up": "decoder.up", "decoder.decoder.reg_scale": "decoder.reg_scale"}


def official_to_zoo(sd: StateDict) -> StateDict:
    """Official ``DFINE`` state dict (D-FINE or DEIM release) -> zoo keys."""
    for copy, key in _SHARED.items():
        if copy in sd and key in sd and not torch.equal(sd[copy], sd[key]):
            raise CheckpointError(f"{copy} ({sd[copy].tolist()}) differs from {key} ({sd[key].tolist()}); the official "
                                  "model shares one tensor between them, so this checkpoint is inconsistent")
    return {_OFFICIAL_KEYS.to_ours(k) or k: v for k, v in sd.items() if k not in _DERIVED and k not in _SHARED}


def zoo_to_official(sd: StateDict) -> StateDict:
    """Zoo keys -> the official layout (without the derived anchors), e.g. to check a model against the official code."""
    out = {_OFFICIAL_KEYS.to_theirs(k) or k: v for k, v in sd.items()}
    out.update({copy: sd[key] for copy, key in _SHARED.items() if key in sd})
    return out


#: the layouts D-FINE checkpoints come in besides zoo's (``DFINE.checkpoint_layouts``)
LAYOUTS = (
    Layout("transformers-dfine", _is_transformers, transformers_to_zoo),
    Layout("official-dfine", _is_official, official_to_zoo),
)


# --------------------------------------------------------------------------------------------------
# transformers configs: DFineConfig <-> zoo model_args (zoo.weights.transformers_format)
# --------------------------------------------------------------------------------------------------

#: official HGNetv2.arch_configs: stem channels and per stage (in, mid, out, blocks, downsample, light, kernel, layers)
HGNETV2_ARCHS = {
    "B0": ([3, 16, 16], [(16, 16, 64, 1, False, False, 3, 3), (64, 32, 256, 1, True, False, 3, 3),
                         (256, 64, 512, 2, True, True, 5, 3), (512, 128, 1024, 1, True, True, 5, 3)]),
    "B1": ([3, 24, 32], [(32, 32, 64, 1, False, False, 3, 3), (64, 48, 256, 1, True, False, 3, 3),
                         (256, 96, 512, 2, True, True, 5, 3), (512, 192, 1024, 1, True, True, 5, 3)]),
    "B2": ([3, 24, 32], [(32, 32, 96, 1, False, False, 3, 4), (96, 64, 384, 1, True, False, 3, 4),
                         (384, 128, 768, 3, True, True, 5, 4), (768, 256, 1536, 1, True, True, 5, 4)]),
    "B3": ([3, 24, 32], [(32, 32, 128, 1, False, False, 3, 5), (128, 64, 512, 1, True, False, 3, 5),
                         (512, 128, 1024, 3, True, True, 5, 5), (1024, 256, 2048, 1, True, True, 5, 5)]),
    "B4": ([3, 32, 48], [(48, 48, 128, 1, False, False, 3, 6), (128, 96, 512, 1, True, False, 3, 6),
                         (512, 192, 1024, 3, True, True, 5, 6), (1024, 384, 2048, 1, True, True, 5, 6)]),
    "B5": ([3, 32, 64], [(64, 64, 128, 1, False, False, 3, 6), (128, 128, 512, 2, True, False, 3, 6),
                         (512, 256, 1024, 5, True, True, 5, 6), (1024, 512, 2048, 2, True, True, 5, 6)]),
    "B6": ([3, 48, 96], [(96, 96, 192, 2, False, False, 3, 6), (192, 192, 512, 3, True, False, 3, 6),
                         (512, 384, 1024, 6, True, True, 5, 6), (1024, 768, 2048, 3, True, True, 5, 6)]),
}
_STAGE_FIELDS = ("stage_in_channels", "stage_mid_channels", "stage_out_channels", "stage_num_blocks",
                 "stage_downsample", "stage_light_block", "stage_kernel_size", "stage_numb_of_layers")


def _hgnet_config(variant: str, use_lab: bool, return_idx: list[int]) -> dict:
    stem, stages = HGNETV2_ARCHS[variant]
    config = {"model_type": "hgnet_v2", "stem_channels": stem, "use_learnable_affine_block": use_lab,
              "hidden_act": "relu", "embedding_size": stem[-1], "depths": [s[3] for s in stages],
              "hidden_sizes": [s[2] for s in stages], "out_features": [f"stage{i + 1}" for i in return_idx]}
    config.update({field: [s[i] for s in stages] for i, field in enumerate(_STAGE_FIELDS)})
    return config


def to_transformers(model: torch.nn.Module) -> tuple[dict, StateDict]:
    """A zoo D-FINE -> (DFineConfig as a dict, state dict in the transformers layout)."""
    args = model.config["model_args"]
    backbone, encoder, decoder = args["backbone"], args["encoder"], args["decoder"]
    require(backbone["name"] == "hgnetv2", "backbone.name", f"{backbone['name']!r}: transformers' D-FINE has HGNetV2")
    require(not backbone.get("freeze_at", -1) >= 0 or backbone.get("freeze_stem_only", True), "backbone.freeze_at",
            "transformers' D-FINE freezes no backbone stage")
    require(encoder.get("fusion_block") == "rep_ncsp_elan4" and encoder.get("downsample_block") == "sc_down"
            and encoder.get("lateral_act", "same") is None and not encoder.get("fusion_args")
            and not encoder.get("downsample_args"), "encoder", "transformers' D-FINE CCFM is RepNCSPELAN4 + SCDown "
            "with activation-free lateral convs")
    require(encoder.get("pe_layout", "transformers") == "transformers", "encoder.pe_layout",
            "transformers computes the AIFI position embedding in the corrected layout only")
    layers = decoder.get("num_decoder_layers", 6)
    require(decoder.get("anchor_eps", 1e-2) == 1e-2, "decoder.anchor_eps", "transformers uses 0.01")
    for option, value in (("head_act", "relu"), ("lqe_act", "relu"), ("enc_projection", True),
                          ("query_pos_per_layer", True)):
        require(decoder.get(option, value) == value, f"decoder.{option}", f"transformers' D-FINE has {value!r}")
    require(decoder.get("dropout", 0.0) == encoder.get("dropout", 0.0), "decoder.dropout",
            "transformers has one dropout for the encoder and the decoder")
    points = decoder.get("num_points", (3, 6, 3))
    config = {
        "model_type": "d_fine", "architectures": ["DFineForObjectDetection"],
        "backbone_config": _hgnet_config(backbone["variant"], backbone.get("use_lab", False),
                                         list(backbone.get("return_idx", (1, 2, 3)))),
        "freeze_backbone_batch_norms": bool(backbone.get("freeze_norm", False)),
        "encoder_in_channels": list(model.backbone.out_channels), "feat_strides": list(model.backbone.strides),
        "encoder_hidden_dim": encoder.get("hidden_dim", 256), "encoder_attention_heads": encoder.get("num_heads", 8),
        "encoder_ffn_dim": encoder.get("dim_feedforward", 1024), "dropout": encoder.get("dropout", 0.0),
        "encoder_activation_function": encoder.get("enc_act", "gelu"),
        "encode_proj_layers": list(encoder.get("use_encoder_idx", (2,))),
        "encoder_layers": encoder.get("num_encoder_layers", 1),
        "positional_encoding_temperature": int(encoder.get("pe_temperature", 10000)),
        "hidden_expansion": encoder.get("expansion", 1.0), "depth_mult": encoder.get("depth_mult", 1.0),
        "activation_function": encoder.get("act", "silu"),
        "d_model": decoder.get("hidden_dim", 256), "num_queries": decoder.get("num_queries", 300),
        "decoder_in_channels": list(model.encoder.out_channels), "num_feature_levels": decoder.get("num_levels", 3),
        "decoder_n_points": list(points) if isinstance(points, (list, tuple)) else points,
        "decoder_attention_heads": decoder.get("num_heads", 8), "decoder_layers": layers,
        "decoder_ffn_dim": decoder.get("dim_feedforward", 1024),
        "decoder_activation_function": decoder.get("activation", "relu"),
        "num_denoising": decoder.get("num_denoising", 100), "label_noise_ratio": decoder.get("label_noise_ratio", 0.5),
        "box_noise_scale": decoder.get("box_noise_scale", 1.0), "eval_idx": decoder.get("eval_idx", -1),
        "decoder_method": decoder.get("cross_attn_method", "default"), "max_num_bins": decoder.get("reg_max", 32),
        "reg_scale": float(decoder.get("reg_scale", 4.0)), "up": float(decoder.get("up", 0.5)), "layer_scale": 1.0}
    require(float(encoder.get("pe_temperature", 10000)).is_integer(), "encoder.pe_temperature",
            "transformers stores it as an int")
    state = model.state_dict()
    require(not any(k.endswith(".bottlenecks.0.conv.weight") or ".conv_bn_fused" in k for k in state), "deploy()",
            "the RepVGG blocks are fused; save before calling model.deploy()")
    return config, zoo_to_transformers(state)


def from_transformers(config: Mapping) -> tuple[str, dict]:
    """DFineConfig (config.json) -> ``(architecture, model_args)`` of the zoo model."""
    get = config.get
    for name, value in (("normalize_before", False), ("eval_size", None), ("learn_initial_query", False),
                        ("with_box_refine", True), ("layer_norm_eps", 1e-5), ("batch_norm_eps", 1e-5),
                        ("decoder_offset_scale", 0.5), ("layer_scale", 1.0), ("top_prob_values", 4),
                        ("lqe_hidden_dim", 64), ("lqe_layers", 2)):
        require(get(name, value) == value, name, f"{get(name)!r}; zoo builds D-FINE with {value!r}")
    dropout = get("dropout", 0.0)
    for name in ("attention_dropout", "activation_dropout"):
        require(get(name, 0.0) in (0.0, dropout), name, "zoo has one dropout rate per attention layer")
    backbone = _backbone_from_config(config)
    hidden = get("encoder_hidden_dim", 256)
    levels = get("num_feature_levels", 3)
    points = get("decoder_n_points", 4)
    encoder = dict(name="hybrid", hidden_dim=hidden, num_heads=get("encoder_attention_heads", 8),
                   dim_feedforward=get("encoder_ffn_dim", 1024), dropout=dropout,
                   enc_act=get("encoder_activation_function", "gelu"),
                   use_encoder_idx=list(get("encode_proj_layers", [2])), num_encoder_layers=get("encoder_layers", 1),
                   pe_temperature=float(get("positional_encoding_temperature", 10000)),
                   expansion=get("hidden_expansion", 1.0), depth_mult=get("depth_mult", 1.0),
                   act=get("activation_function", "silu"), fusion_block="rep_ncsp_elan4", downsample_block="sc_down",
                   lateral_act=None)
    decoder = dict(name="dfine", hidden_dim=get("d_model", 256), num_queries=get("num_queries", 300),
                   num_levels=levels, num_points=list(points) if isinstance(points, list) else [points] * levels,
                   num_heads=get("decoder_attention_heads", 8), num_decoder_layers=get("decoder_layers", 6),
                   dim_feedforward=get("decoder_ffn_dim", 1024), dropout=dropout,
                   activation=get("decoder_activation_function", "relu"), num_denoising=get("num_denoising", 100),
                   label_noise_ratio=get("label_noise_ratio", 0.5), box_noise_scale=get("box_noise_scale", 1.0),
                   eval_idx=get("eval_idx", -1), cross_attn_method=get("decoder_method", "default"),
                   reg_max=get("max_num_bins", 32), reg_scale=float(get("reg_scale", 4.0)), up=float(get("up", 0.5)))
    sizes = {"B0": "s" if len(backbone["return_idx"]) == 3 else "n", "B2": "m", "B4": "l", "B5": "x"}
    return "dfine_" + sizes.get(backbone["variant"], "l"), dict(backbone=backbone, encoder=encoder, decoder=decoder)


def _backbone_from_config(config: Mapping) -> dict:
    spec = config.get("backbone_config")
    require(isinstance(spec, Mapping) and spec.get("model_type") == "hgnet_v2", "backbone_config",
            "zoo reads D-FINE with an HGNetV2 backbone (model_type hgnet_v2)")
    stages = [tuple(spec[f][i] for f in _STAGE_FIELDS) for i in range(4)]
    variant = next((name for name, (stem, arch) in HGNETV2_ARCHS.items()
                    if list(spec.get("stem_channels", [])) == stem and [tuple(s) for s in arch] == stages), None)
    require(variant is not None, "backbone_config", "its stem/stage channels are none of HGNetV2 B0..B6")
    require(spec.get("hidden_act", "relu") == "relu", "backbone_config.hidden_act", "HGNetV2 uses relu")
    features = spec.get("out_features") or [f"stage{i}" for i in spec.get("out_indices", [2, 3, 4])]
    require(all(re.fullmatch(r"stage[1-4]", f) for f in features), "backbone_config.out_features",
            f"{features}: zoo returns HGNetV2 stages stage1..stage4")
    frozen = bool(config.get("freeze_backbone_batch_norms", True))
    return dict(name="hgnetv2", variant=variant, use_lab=bool(spec.get("use_learnable_affine_block", False)),
                return_idx=[int(f[5:]) - 1 for f in features], freeze_at=0 if frozen else -1, freeze_stem_only=True,
                freeze_norm=frozen)


#: ``DFineForObjectDetection`` <-> zoo (``DFINE.transformers``)
TRANSFORMERS = TransformersMapping(("d_fine",), "DFineImageProcessor", False, to_transformers, from_transformers,
                                   lambda config: "transformers-dfine")
