"""DEIMv2 checkpoint layouts.

- zoo keys are the official ``DEIMv2`` keys (Intellindust-AI-Lab/DEIMv2) except the hybrid encoder's
  ``input_proj.{i}.{0,1}`` (official ``conv``/``norm``, as D-FINE's) and the DINOv3-distilled ViT-Tiny's
  ``backbone.dinov3._model.*`` (zoo: ``backbone.dinov3.*``, as the DINOv3 ViT-S keys are);
- official files: the training ``.pth`` (``{'model': sd}`` / ``{'ema': {'module': sd}}``) and the Hub repos
  Intellindust/DEIMv2_* (``PyTorchModelHubMixin``: ``model.safetensors`` with the same keys, tensors shared by
  reference saved once). Dropped as derived: ``decoder.anchors`` / ``valid_mask`` (one input size), the ViT's
  ``rope_embed.periods`` (checked equal to what zoo computes), ``mask_token`` (pre-training only) and ``bias_mask``
  (checked to mask the key bias, as zoo's ``key_bias=False`` does);
  the shared ``decoder.decoder.{up,reg_scale}`` and, for Atto/Femto/Pico, the one box head shared by every layer
  are filled in from whichever copy the file kept;
- transformers' ``Deimv2ForObjectDetection`` (``save_pretrained``; the module names, as transformers 5 writes no
  renames for deimv2). Its architecture differs from the official one (see zoo.models.deimv2.decoder), so it maps
  to zoo models built with the transformers options, and only those are written in its layout.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from zoo.models.dfine import convert as dfine
from zoo.weights.checkpoint import CheckpointError, Layout, StateDict
from zoo.weights.keymap import KeyMap, KeyRule, fold_top_level_heads
from zoo.weights.transformers_format import TransformersMapping, require

__all__ = ["KEYS", "LAYOUTS", "TRANSFORMERS", "official_to_zoo", "zoo_to_official", "transformers_to_zoo",
           "zoo_to_transformers", "to_transformers", "from_transformers"]

_HG, _VIT, _STA = "model.conv_encoder.model.", "model.conv_encoder.backbone.", "model.conv_encoder.spatial_tuning_adapter."
_LAYER, _LAYER_MEM = _VIT + "layer.{i}.", _VIT + "model.layer.{i}."  # as saved / as the module names it
_DEC = "model.decoder.layers.{i}."


def _elan(theirs: str, ours: str) -> list[KeyRule]:
    """transformers' RepNCSPELAN5 (``conv1``, ``csp_rep{1,2}.{conv1,bottlenecks,conv2}``, ``conv2``) <-> the
    official RepNCSPELAN4/5 (``cv1``, ``cv{2,3}.0.*`` CSP layer, ``cv{2,3}.1`` 3x3 conv, ``cv4``)."""
    rules = [KeyRule(theirs + "conv1.", ours + "cv1."), KeyRule(theirs + "conv2.", ours + "cv4.")]
    for t, o in (("csp_rep1.", "cv2."), ("csp_rep2.", "cv3.")):
        rules += [KeyRule(theirs + t + "conv2.", ours + o + "1."), KeyRule(theirs + t, ours + o + "0.")]
    return rules


#: transformers ``Deimv2ForObjectDetection`` module names <-> zoo keys, both directions (zoo.weights.keymap)
KEYS = KeyMap([
    # HGNetV2: D-FINE's rules under DEIMv2's prefix
    *(KeyRule(r.theirs.replace("model.backbone.model.", _HG), r.ours, r.values) for r in dfine.KEYS.rules
      if r.theirs.startswith("model.backbone.model.")),
    # DINOv3 ViT (q/k/v and SwiGLU gate/up are packed by transformers_to_zoo) + STA + fusion projections
    KeyRule(_VIT + "embeddings.cls_token", "backbone.dinov3.cls_token"),
    KeyRule(_VIT + "embeddings.register_tokens", "backbone.dinov3.storage_tokens"),
    KeyRule(_VIT + "embeddings.patch_embeddings.", "backbone.dinov3.patch_embed.proj."),
    KeyRule(_LAYER + "attention.qkv.", "backbone.dinov3.blocks.{i}.attn.qkv.", read_also=(_LAYER_MEM + "attention.qkv.",)),
    KeyRule(_LAYER + "attention.o_proj.", "backbone.dinov3.blocks.{i}.attn.proj.", read_also=(_LAYER_MEM + "attention.o_proj.",)),
    KeyRule(_LAYER + "layer_scale1.lambda1", "backbone.dinov3.blocks.{i}.ls1.gamma", read_also=(_LAYER_MEM + "layer_scale1.lambda1",)),
    KeyRule(_LAYER + "layer_scale2.lambda1", "backbone.dinov3.blocks.{i}.ls2.gamma", read_also=(_LAYER_MEM + "layer_scale2.lambda1",)),
    KeyRule(_LAYER + "mlp.up_proj.", "backbone.dinov3.blocks.{i}.mlp.fc1.", read_also=(_LAYER_MEM + "mlp.up_proj.",)),
    KeyRule(_LAYER + "mlp.down_proj.", "backbone.dinov3.blocks.{i}.mlp.fc2.", read_also=(_LAYER_MEM + "mlp.down_proj.",)),
    KeyRule(_LAYER + "mlp.swiglu_gate.", "backbone.dinov3.blocks.{i}.mlp.w1.", read_also=(_LAYER_MEM + "mlp.swiglu_gate.",)),
    KeyRule(_LAYER + "mlp.swiglu_up.", "backbone.dinov3.blocks.{i}.mlp.w2.", read_also=(_LAYER_MEM + "mlp.swiglu_up.",)),
    KeyRule(_LAYER + "mlp.swiglu_down.", "backbone.dinov3.blocks.{i}.mlp.w3.", read_also=(_LAYER_MEM + "mlp.swiglu_down.",)),
    KeyRule(_LAYER, "backbone.dinov3.blocks.{i}.", read_also=(_LAYER_MEM,)),  # norm1, norm2
    KeyRule(_VIT + "norm.", "backbone.dinov3.norm."),
    KeyRule(_STA + "stem_conv.conv.", "backbone.sta.stem.0."), KeyRule(_STA + "stem_conv.norm.", "backbone.sta.stem.1."),
    KeyRule(_STA + "conv2.conv.", "backbone.sta.conv2.0."), KeyRule(_STA + "conv2.norm.", "backbone.sta.conv2.1."),
    *(KeyRule(f"{_STA}conv{n}.{t}.", f"backbone.sta.conv{n}.{o}.") for n in (3, 4) for t, o in (("conv", 1), ("norm", 2))),
    KeyRule("model.conv_encoder.fusion_proj.{i}.conv.", "backbone.convs.{i}."),
    KeyRule("model.conv_encoder.fusion_proj.{i}.norm.", "backbone.norms.{i}."),
    # hybrid encoder: projections (in the conv encoder), AIFI as transformers names the modules, CCFM
    KeyRule("model.conv_encoder.encoder_input_proj.{i}.conv.", "encoder.input_proj.{i}.0."),
    KeyRule("model.conv_encoder.encoder_input_proj.{i}.norm.", "encoder.input_proj.{i}.1."),
    *(KeyRule(r.read_also[0], r.ours) for r in dfine.KEYS.rules if r.theirs.startswith("model.encoder.encoder.")),
    *(rule for blocks in ("fpn_blocks", "pan_blocks")
      for rule in _elan(f"model.encoder.{blocks}.{{i}}.", f"encoder.{blocks}.{{i}}.")),
    KeyRule("model.encoder.downsample_convs.{i}.conv1.", "encoder.downsample_convs.{i}.0.cv1."),
    KeyRule("model.encoder.downsample_convs.{i}.conv2.", "encoder.downsample_convs.{i}.0.cv2."),
    # lite encoder
    KeyRule("model.encoder.down_conv{n}.conv.", "encoder.down_sample{n}.1."),
    KeyRule("model.encoder.down_conv{n}.norm.", "encoder.down_sample{n}.2."),
    KeyRule("model.encoder.bi_fusion_conv.", "encoder.bi_fusion.cv."),
    *_elan("model.encoder.fpn_block.", "encoder.fpn_block."), *_elan("model.encoder.pan_block.", "encoder.pan_block."),
    KeyRule("model.encoder.", "encoder."),  # input_proj (lite), lateral convs
    # decoder
    KeyRule("model.decoder_input_proj.{i}.0.", "decoder.input_proj.{i}.conv."),
    KeyRule("model.decoder_input_proj.{i}.1.", "decoder.input_proj.{i}.norm."),
    KeyRule(_DEC + "self_attn.o_proj.", "decoder.decoder.layers.{i}.self_attn.out_proj."),
    KeyRule(_DEC + "self_attn.", "decoder.decoder.layers.{i}.self_attn."),
    KeyRule(_DEC + "self_attn_layer_norm.weight", "decoder.decoder.layers.{i}.norm1.scale"),
    KeyRule(_DEC + "encoder_attn_layer_norm.weight", "decoder.decoder.layers.{i}.norm2.scale"),
    KeyRule(_DEC + "final_layer_norm.weight", "decoder.decoder.layers.{i}.norm3.scale"),
    KeyRule(_DEC + "gateway.norm.weight", "decoder.decoder.layers.{i}.gateway.norm.scale"),
    KeyRule(_DEC + "gateway.", "decoder.decoder.layers.{i}.gateway."),
    KeyRule(_DEC + "encoder_attn.", "decoder.decoder.layers.{i}.cross_attn."),
    KeyRule(_DEC + "mlp.gate_up.", "decoder.decoder.layers.{i}.swish_ffn.w12."),
    KeyRule(_DEC + "mlp.down_proj.", "decoder.decoder.layers.{i}.swish_ffn.w3."),
    KeyRule("model.decoder.lqe_layers.", "decoder.decoder.lqe_layers."),
    KeyRule("model.decoder.class_embed.", "decoder.dec_score_head."),
    KeyRule("model.decoder.bbox_embed.", "decoder.dec_bbox_head."),
    *(KeyRule(f"model.decoder.{name}", f"decoder.{name}") for name in ("query_pos_head.", "pre_bbox_head.", "up",
                                                                       "reg_scale")),
    KeyRule("model.enc_output.0.", "decoder.enc_output.proj."),
    KeyRule("model.enc_output.1.", "decoder.enc_output.norm."),
    *(KeyRule(f"model.{name}.", f"decoder.{name}.") for name in ("denoising_class_embed", "enc_score_head",
                                                                  "enc_bbox_head")),
])

_PACKED = [  # (transformers parts, temporary KEYS name, dim): packed into one zoo tensor
    (re.compile(r"^(.*\.attention\.)([qkv])_proj\.(weight|bias)$"), "qkv", "qkv"),
    (re.compile(r"^(model\.decoder\.layers\.\d+\.mlp\.)(gate|up)_proj\.(weight|bias)$"), "gate_up", ("gate", "up")),
]
_VIT_SWIGLU = re.compile(r"^(.*\.layer\.\d+\.mlp\.)(gate|up|down)_proj\.")


def _is_transformers(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("model.conv_encoder.", "model.decoder.lqe_layers.")) for k in sd) and any(
        k.startswith("model.conv_encoder.") for k in sd)


def transformers_to_zoo(sd: StateDict) -> StateDict:
    """``Deimv2ForObjectDetection`` keys -> zoo keys: q/k/v and SwiGLU gate/up packed, the pre-training-only
    ``mask_token`` dropped, a missing ViT key bias written as zeros (DINOv3 ViT-S masks it)."""
    sd = fold_top_level_heads(sd)
    swiglu = any(k.endswith("mlp.gate_proj.weight") and ".layer." in k for k in sd)
    out, parts = {}, {}
    for key, value in sd.items():
        if key.endswith("embeddings.mask_token") or (key.endswith("embeddings.register_tokens") and not value.numel()):
            continue
        if swiglu and _VIT_SWIGLU.match(key):
            m = _VIT_SWIGLU.match(key)
            out[f"{m[1]}swiglu_{m[2]}.{key[m.end():]}"] = value
            continue
        for pattern, name, order in _PACKED:
            m = pattern.match(key)
            if m:
                parts.setdefault((m[1] + name, m[3]), {})[m[2]] = value
                break
        else:
            out[key] = value
    for (prefix, kind), found in parts.items():
        order = "qkv" if prefix.endswith("qkv") else ("gate", "up")
        if kind == "bias" and "k" in order and "k" not in found:
            found["k"] = torch.zeros_like(found["q"])
        if set(found) != set(order):
            raise CheckpointError(f"{prefix}.{kind}: the file has {sorted(found)} of {list(order)}")
        out[f"{prefix}.{kind}"] = torch.cat([found[p] for p in order], 0)
    return _fill_shared_heads(KEYS.load(out))


def zoo_to_transformers(sd: StateDict, key_bias: bool = True) -> StateDict:
    """Zoo DEIMv2 keys -> transformers' module names (q/k/v and SwiGLU gate/up split)."""
    out = {}
    for key, value in KEYS.save(sd).items():
        m = re.match(r"^(.*\.attention\.)qkv\.(weight|bias)$", key)
        g = re.match(r"^(model\.decoder\.layers\.\d+\.mlp\.)gate_up\.(weight|bias)$", key)
        s = re.match(r"^(.*\.layer\.\d+\.mlp\.)swiglu_(gate|up|down)\.(weight|bias)$", key)
        if m:
            for name, part in zip("qkv", value.chunk(3, 0)):
                if not (name == "k" and m[2] == "bias" and not key_bias):
                    out[f"{m[1]}{name}_proj.{m[2]}"] = part.contiguous()
        elif g:
            for name, part in zip(("gate", "up"), value.chunk(2, 0)):
                out[f"{g[1]}{name}_proj.{g[2]}"] = part.contiguous()
        elif s:
            out[f"{s[1]}{s[2]}_proj.{s[3]}"] = value
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------------
# the official layout
# --------------------------------------------------------------------------------------------------

_OFFICIAL_PROJ = KeyMap([KeyRule("encoder.input_proj.{i}.conv.", "encoder.input_proj.{i}.0."),
                         KeyRule("encoder.input_proj.{i}.norm.", "encoder.input_proj.{i}.1.")])
_DERIVED = re.compile(r"^decoder\.(anchors|valid_mask)$|\.rope_embed\.periods$|^backbone\.dinov3\.mask_token$"
                      r"|\.attn\.qkv\.bias_mask$")
_SHARED = {"decoder.decoder.up": "decoder.up", "decoder.decoder.reg_scale": "decoder.reg_scale"}


def _is_official(sd: Mapping[str, torch.Tensor]) -> bool:
    if not any(k.endswith("swish_ffn.w12.weight") for k in sd):
        return False
    lite = any(k.startswith("encoder.bi_fusion.") for k in sd)
    return any(_DERIVED.search(k) or k in _SHARED or k.startswith("backbone.dinov3._model.")
               or (not lite and re.match(r"encoder\.input_proj\.\d+\.conv\.", k)) for k in sd) or _missing_shared_heads(sd)


def _missing_shared_heads(sd: Mapping[str, torch.Tensor]) -> bool:
    layers = {int(m[1]) for k in sd if (m := re.match(r"decoder\.decoder\.layers\.(\d+)\.", k))}
    heads = {int(m[1]) for k in sd if (m := re.match(r"decoder\.dec_bbox_head\.(\d+)\.", k))}
    return bool(heads) and heads != layers


def official_to_zoo(sd: StateDict) -> StateDict:
    """Official ``DEIMv2`` state dict (a training checkpoint or a Hub ``model.safetensors``) -> zoo keys."""
    for copy, key in _SHARED.items():
        if copy in sd and key in sd and not torch.equal(sd[copy], sd[key]):
            raise CheckpointError(f"{copy} ({sd[copy].tolist()}) differs from {key} ({sd[key].tolist()}); the official "
                                  "model shares one tensor between them, so this checkpoint is inconsistent")
    for key, periods in sd.items():
        if key.endswith("rope_embed.periods"):
            expected = 100.0 ** (2 * torch.arange(periods.numel(), dtype=torch.float64) / (2 * periods.numel()))
            if not torch.allclose(periods.double(), expected, rtol=1e-5):
                raise CheckpointError(f"{key} is not RoPE base 100 (zoo computes the periods from base 100)")
    for key, mask in sd.items():
        if key.endswith("attn.qkv.bias_mask"):
            expected = torch.ones_like(mask)
            expected[mask.numel() // 3:2 * mask.numel() // 3] = 0
            if not torch.equal(mask, expected):
                raise CheckpointError(f"{key} is not DINOv3's key-bias mask (ones, zeros on the key third); zoo masks "
                                      "the key bias itself (key_bias=False)")
    lite = any(k.startswith("encoder.bi_fusion.") for k in sd)
    out = {}
    for key, value in sd.items():
        if _DERIVED.search(key):
            continue
        if key in _SHARED:
            key = _SHARED[key]
            if key in sd:
                continue
        key = key.replace("backbone.dinov3._model.", "backbone.dinov3.", 1)
        out[(None if lite else _OFFICIAL_PROJ.to_ours(key)) or key] = value
    return _fill_shared_heads(out)


def _fill_shared_heads(sd: StateDict) -> StateDict:
    """Atto/Femto/Pico share one box head between layers; files keep it once (safetensors saves a shared tensor
    under one name): give every layer its copy, so the model's tied modules all load."""
    layers = {int(m[1]) for k in sd if (m := re.match(r"decoder\.decoder\.layers\.(\d+)\.", k))}
    heads = {int(m[1]) for k in sd if (m := re.match(r"decoder\.dec_bbox_head\.(\d+)\.", k))}
    if heads and heads != layers:
        src = min(heads)
        for key in [k for k in sd if k.startswith(f"decoder.dec_bbox_head.{src}.")]:
            for i in layers - heads:
                sd[key.replace(f"dec_bbox_head.{src}.", f"dec_bbox_head.{i}.", 1)] = sd[key]
    return sd


def zoo_to_official(sd: StateDict, tiny_vit: bool = False) -> StateDict:
    """Zoo keys -> the official layout (without the derived buffers), e.g. to check against the official code."""
    lite = any(k.startswith("encoder.bi_fusion.") for k in sd)
    out = {}
    for key, value in sd.items():
        if tiny_vit:
            key = key.replace("backbone.dinov3.", "backbone.dinov3._model.", 1)
        out[(None if lite else _OFFICIAL_PROJ.to_theirs(key)) or key] = value
    out.update({copy: sd[key] for copy, key in _SHARED.items() if key in sd})
    return out


LAYOUTS = (
    Layout("transformers-deimv2", _is_transformers, transformers_to_zoo),
    Layout("official-deimv2", _is_official, official_to_zoo),
)


# --------------------------------------------------------------------------------------------------
# transformers configs: Deimv2Config <-> zoo model_args
# --------------------------------------------------------------------------------------------------

#: the decoder options of transformers' Deimv2 (see zoo.models.deimv2.decoder.DEIMv2Decoder)
TRANSFORMERS_DECODER = dict(head_act="relu", lqe_act="relu", enc_projection=True, query_pos_per_layer=True)
_PRUNED_STAGE3 = {(256, 64, 256, 1, 3): "Atto", (256, 64, 512, 1, 5): "Femto", (256, 64, 512, 2, 5): "Pico"}


def _hgnet_config(variant: str, return_idx: list[int]) -> dict:
    from zoo.models.hgnetv2 import _PRUNED

    if variant not in _PRUNED:
        return dfine._hgnet_config(variant, True, return_idx)
    stem, stages = dfine.HGNETV2_ARCHS["B0"]
    stages = [*stages[:2], tuple(_PRUNED[variant])]
    config = {"model_type": "hgnet_v2", "stem_channels": stem, "use_learnable_affine_block": True,
              "hidden_act": "relu", "embedding_size": stem[-1], "depths": [s[7] for s in stages],
              "hidden_sizes": [s[2] for s in stages], "out_features": [f"stage{i + 1}" for i in return_idx]}
    config.update({field: [s[i] for s in stages] for i, field in enumerate(dfine._STAGE_FIELDS)})
    return config


def _vit_config(vit: Mapping, patch_size: int = 16) -> dict:
    require(vit.get("feature_norm", "none") != "none" or max(vit["return_layers"]) != vit.get("depth", 12) - 1,
            "backbone.vit.feature_norm", "transformers always normalises the last block's features "
            "(feature_norm 'final' reproduces it; the official ViT-Tiny's 'none' does not)")
    return {"model_type": "dinov3_vit", "hidden_size": vit["embed_dim"], "num_hidden_layers": vit.get("depth", 12),
            "num_attention_heads": vit["num_heads"], "intermediate_size": vit["ffn_hidden"],
            "use_gated_mlp": vit.get("ffn", "mlp") == "swiglu", "hidden_act": "silu" if vit.get("ffn") == "swiglu"
            else "gelu", "num_register_tokens": vit.get("num_register_tokens", 0),
            "layerscale_value": vit.get("layer_scale") or 1.0, "key_bias": vit.get("key_bias", True),
            "query_bias": True, "value_bias": True, "layer_norm_eps": vit.get("eps", 1e-6),
            "rope_theta": vit.get("rope_base", 100.0), "patch_size": patch_size,
            "apply_layernorm": vit.get("feature_norm", "none") == "all",
            "out_indices": [i + 1 for i in vit["return_layers"]]}


def to_transformers(model: torch.nn.Module) -> tuple[dict, StateDict]:
    """A zoo DEIMv2 built with transformers' decoder options -> (Deimv2Config as a dict, transformers state dict)."""
    args = model.config["model_args"]
    backbone, encoder, decoder = args["backbone"], args["encoder"], args["decoder"]
    for option, value in TRANSFORMERS_DECODER.items():
        require(decoder.get(option) == value, f"decoder.{option}",
                f"{decoder.get(option)!r}: transformers' Deimv2 has {value!r} (the official model does not, so "
                "official DEIMv2 weights cannot be written in the transformers layout)")
    lite = encoder["name"] == "deimv2_lite"
    dinov3 = backbone["name"] == "dinov3_sta"
    state = model.state_dict()
    require(not any(".conv_bn_fused" in k or k.endswith("bottlenecks.0.conv.weight") for k in state), "deploy()",
            "the RepVGG blocks are fused; save before calling model.deploy()")
    hidden = encoder["hidden_dim"]
    if dinov3:
        vit = backbone["vit"]
        require((backbone.get("hidden_dim") or vit["embed_dim"]) == hidden, "backbone.hidden_dim",
                "transformers projects the DINOv3 features to the encoder width")
        backbone_config = _vit_config(vit)
        in_channels = [hidden] * 3
    else:
        backbone_config = _hgnet_config(backbone["variant"], list(backbone["return_idx"]))
        require(backbone.get("use_lab", True), "backbone.use_lab", "DEIMv2's HGNetV2 uses learnable affine blocks")
        in_channels = list(model.backbone.out_channels)
    fusion = encoder.get("fusion_block")
    config = {
        "model_type": "deimv2", "architectures": ["Deimv2ForObjectDetection"], "backbone_config": backbone_config,
        "freeze_backbone_batch_norms": bool(backbone.get("freeze_norm", False)),
        "encoder_type": "lite" if lite else "hybrid", "encoder_in_channels": in_channels,
        "feat_strides": list(model.encoder.strides) if lite else list(model.backbone.strides),
        "encoder_hidden_dim": hidden, "hidden_expansion": encoder.get("expansion", 1.0),
        "depth_mult": encoder.get("depth_mult", 1.0), "activation_function": encoder.get("act", "silu"),
        "encoder_has_trailing_conv": lite or fusion == "rep_ncsp_elan4", "encoder_fuse_op": "sum",
        "spatial_tuning_adapter_inplanes": backbone.get("sta_channels", 16),
        "d_model": decoder["hidden_dim"], "num_queries": decoder.get("num_queries", 300),
        "decoder_in_channels": list(model.encoder.out_channels), "num_feature_levels": decoder.get("num_levels", 3),
        "decoder_n_points": list(decoder.get("num_points", (3, 6, 3))), "decoder_attention_heads": decoder["num_heads"],
        "decoder_layers": decoder["num_decoder_layers"], "decoder_ffn_dim": decoder["dim_feedforward"],
        "decoder_activation_function": decoder.get("mlp_act", "silu"), "num_denoising": decoder.get("num_denoising", 100),
        "label_noise_ratio": decoder.get("label_noise_ratio", 0.5), "box_noise_scale": decoder.get("box_noise_scale", 1.0),
        "eval_idx": decoder.get("eval_idx", -1), "decoder_method": decoder.get("cross_attn_method", "default"),
        "max_num_bins": decoder.get("reg_max", 32), "reg_scale": float(decoder.get("reg_scale", 4.0)),
        "up": float(decoder.get("up", 0.5)), "layer_scale": 1.0, "use_gateway": decoder.get("use_gateway", True),
        "share_bbox_head": decoder.get("share_bbox_head", False), "dropout": decoder.get("dropout", 0.0)}
    if not lite:
        require(encoder.get("fuse_op") == "sum" and encoder.get("lateral_act", "same") is None
                and encoder.get("downsample_block") == "sc_down", "encoder", "transformers' DEIMv2 CCFM sums, with "
                "SCDown and activation-free lateral convs")
        require(fusion == "rep_ncsp_elan5" or (encoder.get("fusion_args") or {}).get("csp_type") == "csp2", "encoder",
                "transformers' DEIMv2 fusion blocks are DEIM's (csp2)")
        require(encoder.get("pe_layout", "transformers") == "transformers", "encoder.pe_layout",
                "transformers computes the AIFI position embedding in the corrected layout only")
        config.update({"encoder_ffn_dim": encoder.get("dim_feedforward", 1024),
                       "encoder_attention_heads": encoder.get("num_heads", 8),
                       "encoder_activation_function": encoder.get("enc_act", "gelu"),
                       "encode_proj_layers": list(encoder.get("use_encoder_idx", (2,))),
                       "encoder_layers": encoder.get("num_encoder_layers", 1),
                       "positional_encoding_temperature": int(encoder.get("pe_temperature", 10000))})
    key_bias = not dinov3 or backbone["vit"].get("key_bias", True)
    if dinov3 and backbone["vit"].get("layer_scale") is None:  # transformers always has LayerScale: write ones
        dim = backbone["vit"]["embed_dim"]
        for i in range(backbone["vit"].get("depth", 12)):
            for n in (1, 2):
                state[f"backbone.dinov3.blocks.{i}.ls{n}.gamma"] = torch.ones(dim)
    if dinov3 and backbone["vit"].get("num_register_tokens", 0) == 0:
        state["backbone.dinov3.storage_tokens"] = torch.zeros(1, 0, backbone["vit"]["embed_dim"])
    if dinov3 and "backbone.dinov3.norm.weight" not in state:
        dim = backbone["vit"]["embed_dim"]
        state["backbone.dinov3.norm.weight"], state["backbone.dinov3.norm.bias"] = torch.ones(dim), torch.zeros(dim)
    if dinov3 and backbone["vit"].get("ffn") == "swiglu":
        state = {re.sub(r"\.mlp\.w([123])\.", lambda m: f".mlp.swiglu_{('gate', 'up', 'down')[int(m[1]) - 1]}.", k)
                 if k.startswith("backbone.dinov3.") else k: v for k, v in state.items()}
    if decoder.get("share_bbox_head"):  # one module for every layer: its own tensor per key, as files need
        state = {k: v.clone() if k.startswith("decoder.dec_bbox_head.") else v for k, v in state.items()}
    return config, zoo_to_transformers(state, key_bias)


def from_transformers(config: Mapping) -> tuple[str, dict]:
    """Deimv2Config (config.json) -> ``(architecture, model_args)``: the zoo model with transformers' options."""
    get = config.get
    for name, value in (("normalize_before", False), ("eval_size", None), ("learn_initial_query", False),
                        ("with_box_refine", True), ("layer_norm_eps", 1e-5), ("batch_norm_eps", 1e-5),
                        ("decoder_offset_scale", 0.5), ("layer_scale", 1.0), ("top_prob_values", 4),
                        ("lqe_hidden_dim", 64), ("lqe_layers", 2), ("encoder_fuse_op", "sum")):
        require(get(name, value) == value, name, f"{get(name)!r}; zoo builds DEIMv2 with {value!r}")
    spec = get("backbone_config") or {}
    dinov3 = spec.get("model_type") == "dinov3_vit"
    lite = get("encoder_type", "hybrid") == "lite"
    hidden = get("encoder_hidden_dim", 256)
    if dinov3:
        layers = [int(i) - 1 for i in spec.get("out_indices", [])]
        require(len(layers) == 3, "backbone_config.out_indices", "DEIMv2 reads three ViT layers")
        require(spec.get("query_bias", True) and spec.get("value_bias", True) and spec.get("proj_bias", True)
                and spec.get("mlp_bias", True), "backbone_config", "zoo's ViT has q/v/proj/MLP biases")
        depth = spec.get("num_hidden_layers", 12)
        vit = dict(embed_dim=spec.get("hidden_size", 384), depth=depth, num_heads=spec.get("num_attention_heads", 6),
                   ffn_hidden=spec.get("intermediate_size", 1536), ffn="swiglu" if spec.get("use_gated_mlp") else "mlp",
                   num_register_tokens=spec.get("num_register_tokens", 0),
                   layer_scale=float(spec.get("layerscale_value", 1.0)), key_bias=bool(spec.get("key_bias", False)),
                   eps=spec.get("layer_norm_eps", 1e-5), patch_size=spec.get("patch_size", 16),
                   rope_base=float(spec.get("rope_theta", 100.0)), return_layers=layers,
                   feature_norm="all" if spec.get("apply_layernorm", True) else "final")
        backbone = dict(name="dinov3_sta", vit=vit, sta_channels=get("spatial_tuning_adapter_inplanes", 16),
                        hidden_dim=hidden)
    else:
        d = dfine._backbone_from_config({**config, "backbone_config": {**spec, **_as_b0(spec)}})
        variant = _PRUNED_STAGE3.get(tuple(spec[f][2] for f in ("stage_in_channels", "stage_mid_channels",
                                                                  "stage_out_channels", "stage_num_blocks",
                                                                  "stage_kernel_size"))) if len(
            spec.get("stage_in_channels", [])) == 3 else d["variant"]
        backbone = dict(d, variant=variant)
    decoder = dict(name="deimv2", hidden_dim=get("d_model", 256), num_queries=get("num_queries", 300),
                   num_levels=get("num_feature_levels", 3),
                   num_points=list(get("decoder_n_points")) if isinstance(get("decoder_n_points"), list)
                   else [get("decoder_n_points", 4)] * get("num_feature_levels", 3),
                   num_heads=get("decoder_attention_heads", 8), num_decoder_layers=get("decoder_layers", 6),
                   dim_feedforward=get("decoder_ffn_dim", 1024), dropout=get("dropout", 0.0), activation="silu",
                   num_denoising=get("num_denoising", 100), label_noise_ratio=get("label_noise_ratio", 0.5),
                   box_noise_scale=get("box_noise_scale", 1.0), eval_idx=get("eval_idx", -1),
                   cross_attn_method=get("decoder_method", "default"), reg_max=get("max_num_bins", 32),
                   reg_scale=float(get("reg_scale", 4.0)), up=float(get("up", 0.5)),
                   use_gateway=get("use_gateway", True), share_bbox_head=get("share_bbox_head", False),
                   mlp_act=get("decoder_activation_function", "relu"), **TRANSFORMERS_DECODER)
    if lite:
        encoder = dict(name="deimv2_lite", hidden_dim=hidden, expansion=get("hidden_expansion", 1.0),
                       depth_mult=get("depth_mult", 1.0), act=get("activation_function", "silu"))
    else:
        trailing = get("encoder_has_trailing_conv", True)
        encoder = dict(name="hybrid", hidden_dim=hidden, num_heads=get("encoder_attention_heads", 8),
                       dim_feedforward=get("encoder_ffn_dim", 1024), dropout=get("dropout", 0.0),
                       enc_act=get("encoder_activation_function", "gelu"),
                       use_encoder_idx=list(get("encode_proj_layers", [2])), num_encoder_layers=get("encoder_layers", 1),
                       pe_temperature=float(get("positional_encoding_temperature", 10000)),
                       expansion=get("hidden_expansion", 1.0), depth_mult=get("depth_mult", 1.0),
                       act=get("activation_function", "silu"), downsample_block="sc_down", lateral_act=None,
                       fuse_op="sum", identity_proj=True,
                       **(dict(fusion_block="rep_ncsp_elan4", fusion_args={"csp_type": "csp2"}) if trailing
                          else dict(fusion_block="rep_ncsp_elan5")))
    names = {"Atto": "atto", "Femto": "femto", "Pico": "pico", "B0": "n"}
    arch = ("deimv2_" + {192: "s", 256: "m" if get("decoder_layers") == 4 else "x", 224: "l"}.get(hidden, "s")) if dinov3 \
        else "deimv2_" + names.get(backbone["variant"], "n")
    return arch, dict(backbone=backbone, encoder=encoder, decoder=decoder)


def _as_b0(spec: Mapping) -> dict:
    """A three-stage (Atto/Femto/Pico) HGNetV2 config read as B0 by D-FINE's reader (the variant is fixed after)."""
    if len(spec.get("stage_in_channels", [])) != 3:
        return {}
    stem, stages = dfine.HGNETV2_ARCHS["B0"]
    return {f: [s[i] for s in stages] for i, f in enumerate(dfine._STAGE_FIELDS)}


#: ``Deimv2ForObjectDetection`` <-> zoo (``DEIMv2.transformers``)
TRANSFORMERS = TransformersMapping(("deimv2",), "RTDetrImageProcessor", False, to_transformers, from_transformers,
                                   lambda config: "transformers-deimv2")
