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

import re
from typing import Callable, Mapping

import torch

from zoo.weights.checkpoint import StateDict, register_format

__all__ = ["transformers_to_zoo", "official_v2_to_zoo"]

# (transformers pattern, zoo replacement); applied in order after dropping the "model." prefix
_RENAMES: list[tuple[str, str | Callable[[re.Match], str]]] = [
    (r"^backbone\.model\._backbone\.", "backbone.model."),  # transformers hosting a timm backbone
    (r"^backbone\.model\.embedder\.embedder\.(\d)\.convolution",
     lambda m: f"backbone.conv1.conv1_{int(m[1]) + 1}.conv"),
    (r"^backbone\.model\.embedder\.embedder\.(\d)\.normalization",
     lambda m: f"backbone.conv1.conv1_{int(m[1]) + 1}.norm"),
    (r"^backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.convolution",
     lambda m: f"backbone.res_layers.{m[1]}.blocks.{m[2]}.branch2{'abc'[int(m[3])]}.conv"),
    (r"^backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.normalization",
     lambda m: f"backbone.res_layers.{m[1]}.blocks.{m[2]}.branch2{'abc'[int(m[3])]}.norm"),
    (r"^backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.1\.convolution", r"backbone.res_layers.\1.blocks.\2.short.conv.conv"),
    (r"^backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.1\.normalization", r"backbone.res_layers.\1.blocks.\2.short.conv.norm"),
    (r"^backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution", r"backbone.res_layers.\1.blocks.\2.short.conv"),
    (r"^backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization", r"backbone.res_layers.\1.blocks.\2.short.norm"),
    (r"^encoder_input_proj\.", "encoder.input_proj."),
    (r"^encoder\.encoder\.(\d+)\.layers\.(\d+)\.fc1", r"encoder.encoder.\1.layers.\2.linear1"),
    (r"^encoder\.encoder\.(\d+)\.layers\.(\d+)\.fc2", r"encoder.encoder.\1.layers.\2.linear2"),
    (r"^encoder\.encoder\.(\d+)\.layers\.(\d+)\.self_attn_layer_norm", r"encoder.encoder.\1.layers.\2.norm1"),
    (r"^encoder\.encoder\.(\d+)\.layers\.(\d+)\.final_layer_norm", r"encoder.encoder.\1.layers.\2.norm2"),
    (r"^decoder_input_proj\.(\d+)\.0\.", r"decoder.input_proj.\1.conv."),
    (r"^decoder_input_proj\.(\d+)\.1\.", r"decoder.input_proj.\1.norm."),
    (r"^decoder\.layers\.(\d+)\.self_attn_layer_norm", r"decoder.decoder.layers.\1.norm1"),
    (r"^decoder\.layers\.(\d+)\.encoder_attn_layer_norm", r"decoder.decoder.layers.\1.norm2"),
    (r"^decoder\.layers\.(\d+)\.final_layer_norm", r"decoder.decoder.layers.\1.norm3"),
    (r"^decoder\.layers\.(\d+)\.encoder_attn\.n_points_scale$",
     r"decoder.decoder.layers.\1.cross_attn.num_points_scale"),
    (r"^decoder\.layers\.(\d+)\.encoder_attn\.", r"decoder.decoder.layers.\1.cross_attn."),
    (r"^decoder\.layers\.(\d+)\.fc1", r"decoder.decoder.layers.\1.linear1"),
    (r"^decoder\.layers\.(\d+)\.fc2", r"decoder.decoder.layers.\1.linear2"),
    (r"^decoder\.layers\.(\d+)\.self_attn\.", r"decoder.decoder.layers.\1.self_attn."),
    (r"^decoder\.class_embed\.", "decoder.dec_score_head."),
    (r"^decoder\.bbox_embed\.", "decoder.dec_bbox_head."),
    (r"^(denoising_class_embed|enc_output|enc_score_head|enc_bbox_head)\.", r"decoder.\1."),
]
_RENAMES_RE = [(re.compile(p), r) for p, r in _RENAMES]
_QKV = re.compile(r"^(.*self_attn)\.([qkv])_proj\.(weight|bias)$")


def _rename(key: str, renames: list[tuple[re.Pattern, str | Callable[[re.Match], str]]] = _RENAMES_RE) -> str:
    for pattern, repl in renames:
        new, count = pattern.subn(repl, key, count=1)
        if count:
            return new
    return key


def _is_transformers(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("model.backbone.model.") or k.startswith("model.decoder.layers.") for k in sd)


def _is_v2(sd: Mapping[str, torch.Tensor]) -> bool:
    """RT-DETRv2 checkpoints (official and transformers) store each cross-attention's points scale."""
    return any(k.endswith(("cross_attn.num_points_scale", "encoder_attn.n_points_scale")) for k in sd)


def transformers_to_zoo(sd: StateDict) -> StateDict:
    """Map ``RTDetrForObjectDetection`` / ``RTDetrV2ForObjectDetection`` keys to zoo (= official) keys;
    q/k/v projections are concatenated."""
    body = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    # heads duplicated at the top level (tied to model.decoder.*) in older saves
    for k, v in sd.items():
        if not k.startswith("model.") and k.split(".")[0] in ("class_embed", "bbox_embed"):
            body.setdefault(f"decoder.{k}", v)
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in body.items():
        new = _rename(key)
        m = _QKV.match(new)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        else:
            out[new] = value
    for (prefix, kind), parts in qkv.items():
        out[f"{prefix}.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return out


def _is_official(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith("backbone.res_layers.") for k in sd) and any(k.startswith("decoder.decoder.") for k in sd)


# official RT-DETRv2 names -> zoo names (the official RT-DETR ones)
_V2_RENAMES_RE = [(re.compile(p), r) for p, r in [
    (r"^encoder\.input_proj\.(\d+)\.conv\.", r"encoder.input_proj.\1.0."),
    (r"^encoder\.input_proj\.(\d+)\.norm\.", r"encoder.input_proj.\1.1."),
    (r"^decoder\.enc_output\.proj\.", "decoder.enc_output.0."),
    (r"^decoder\.enc_output\.norm\.", "decoder.enc_output.1."),
]]
#: buffers of official v2 models built with a fixed eval_spatial_size; zoo recomputes them for every input size
_V2_RECOMPUTED = ("decoder.anchors", "decoder.valid_mask")


def official_v2_to_zoo(sd: StateDict) -> StateDict:
    """Official ``RTDETRTransformerv2`` checkpoint -> zoo keys: rename the v2 names, drop the anchor buffers."""
    return {_rename(k, _V2_RENAMES_RE): v for k, v in sd.items() if k not in _V2_RECOMPUTED}


register_format("rtdetr", "transformers-rtdetr", lambda sd: _is_transformers(sd) and not _is_v2(sd),
                transformers_to_zoo)
register_format("rtdetr", "transformers-rtdetrv2", lambda sd: _is_transformers(sd) and _is_v2(sd),
                transformers_to_zoo)
register_format("rtdetr", "official-rtdetr", lambda sd: _is_official(sd) and not _is_v2(sd), lambda sd: sd)
register_format("rtdetr", "official-rtdetrv2", lambda sd: _is_official(sd) and _is_v2(sd), official_v2_to_zoo)
