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

import re
from typing import Mapping

import torch

from zoo.weights.checkpoint import StateDict, register_format

__all__ = ["official_to_zoo", "transformers_to_zoo"]

_OFFICIAL_BACKBONE = "backbone.0.body."


def official_to_zoo(sd: StateDict) -> StateDict:
    """Official DETR keys -> zoo keys (the backbone prefix is the only difference)."""
    return {("backbone.body." + k[len(_OFFICIAL_BACKBONE):] if k.startswith(_OFFICIAL_BACKBONE) else k): v
            for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def _is_official(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(_OFFICIAL_BACKBONE) for k in sd) and any(k.startswith("transformer.") for k in sd)


# (transformers pattern, zoo replacement), first match wins; applied to the whole key
_RENAMES = [(re.compile(p), r) for p, r in [
    (r"^model\.backbone\.(?:conv_encoder\.)?model\.", "backbone.body."),
    (r"^model\.input_projection\.", "input_proj."),
    (r"^model\.query_position_embeddings\.", "query_embed."),
    (r"^model\.decoder\.layernorm\.", "transformer.decoder.norm."),
    (r"^class_labels_classifier\.", "class_embed."),
    (r"^bbox_predictor\.", "bbox_embed."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.(?:mlp\.)?fc([12])\.", r"transformer.\1.layers.\2.linear\3."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.self_attn_layer_norm\.", r"transformer.\1.layers.\2.norm1."),
    (r"^model\.encoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer.encoder.layers.\1.norm2."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.", r"transformer.decoder.layers.\1.norm2."),
    (r"^model\.decoder\.layers\.(\d+)\.final_layer_norm\.", r"transformer.decoder.layers.\1.norm3."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.self_attn\.(?:o|out)_proj\.",
     r"transformer.\1.layers.\2.self_attn.out_proj."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.(?:o|out)_proj\.",
     r"transformer.decoder.layers.\1.multihead_attn.out_proj."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.self_attn\.", r"transformer.\1.layers.\2.self_attn."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.", r"transformer.decoder.layers.\1.multihead_attn."),
]]
_QKV = re.compile(r"^(.*_attn)\.([qkv])_proj\.(weight|bias)$")


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        new, count = pattern.subn(repl, key, count=1)
        if count:
            return new
    return key


def transformers_to_zoo(sd: StateDict) -> StateDict:
    """``DetrForObjectDetection`` keys (legacy or 5.x names) -> zoo keys; q/k/v concatenated in that order."""
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        new = _rename(key)
        m = _QKV.match(new)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
        else:
            out[new] = value
    for (prefix, kind), parts in qkv.items():
        missing = sorted({"q", "k", "v"} - set(parts))
        if missing:
            raise KeyError(f"{prefix}: checkpoint has no {'/'.join(missing)}_proj.{kind} to go with the others")
        out[f"{prefix}.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], 0)
    return out


def _is_transformers(sd: Mapping[str, torch.Tensor]) -> bool:
    return "class_labels_classifier.weight" in sd or any(
        k.startswith(("model.backbone.conv_encoder.", "model.backbone.model.")) for k in sd)


register_format("detr", "official-detr", _is_official, official_to_zoo)
register_format("detr", "transformers-detr", _is_transformers, transformers_to_zoo)
