"""DETR checkpoint layouts -> zoo keys, and zoo -> transformers.

- official (facebookresearch/detr, ``{'model': state_dict}``): zoo keys are the official keys except
  ``backbone.0.body.`` -> ``backbone.body.``.
- transformers ``DetrForObjectDetection`` (``facebook/detr-resnet-50`` family, timm backbone): the files on the
  Hub and ``save_pretrained`` use the legacy names (``model.backbone.conv_encoder.model``, ``out_proj``, ``fc1``);
  transformers 5.x renames them at load time (``model.backbone.model``, ``o_proj``, ``mlp.fc1``), and both
  spellings are accepted here. Separate q/k/v projections are concatenated into ``in_proj_{weight,bias}``.

FrozenBatchNorm has no ``num_batches_tracked``; such counters in a checkpoint are dropped.

``KEYS`` is the one transformers <-> zoo key table, read in both directions; ``to_transformers`` /
``from_transformers`` map ``DetrConfig`` <-> zoo ``model_args`` (zoo.weights.transformers_format).
"""
from __future__ import annotations

from typing import Mapping

import torch

from zoo.weights.checkpoint import Layout, StateDict
from zoo.weights.keymap import KeyMap, KeyRule
from zoo.weights.transformers_format import TransformersMapping, require

__all__ = ["KEYS", "LAYOUTS", "TRANSFORMERS", "official_to_zoo", "transformers_to_zoo", "zoo_to_transformers",
           "to_transformers", "from_transformers"]

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


#: the layouts DETR checkpoints come in besides zoo's (``DETR.checkpoint_layouts``)
LAYOUTS = (Layout("official-detr", _is_official, official_to_zoo),
           Layout("transformers-detr", _is_transformers, transformers_to_zoo))


# --------------------------------------------------------------------------------------------------
# transformers configs: DetrConfig <-> zoo model_args (zoo.weights.transformers_format)
# --------------------------------------------------------------------------------------------------

def to_transformers(model: torch.nn.Module) -> tuple[dict, StateDict]:
    """A zoo DETR -> (DetrConfig as a dict with a timm backbone, state dict in the transformers layout)."""
    args = model.config["model_args"]
    backbone, encoder, decoder = args["backbone"], args["encoder"], args["decoder"]
    require(backbone["name"] == "detr_resnet", "backbone.name", f"{backbone['name']!r}: DetrConfig hosts timm ResNets")
    for part, spec in (("encoder", encoder), ("decoder", decoder)):
        require(spec["name"] == "detr", f"{part}.name", f"{spec['name']!r} is not the DETR transformer")
    for key in ("activation", "dropout"):
        require(encoder.get(key) == decoder.get(key), f"decoder.{key}",
                f"{decoder.get(key)!r} vs the encoder's {encoder.get(key)!r}: DetrConfig has one for both")
    dilation = bool(backbone.get("dilation", False))
    dropout = encoder.get("dropout", 0.1)
    config = {
        "model_type": "detr", "architectures": ["DetrForObjectDetection"], "use_timm_backbone": True,
        "backbone_config": {"model_type": "timm_backbone", "backbone": backbone.get("model_name", "resnet50"),
                            "features_only": True, "num_channels": 3, "out_indices": [1, 2, 3, 4],
                            "output_stride": 16 if dilation else None, "use_pretrained_backbone": False},
        "dilation": dilation, "num_queries": args.get("num_queries", 100), "d_model": args.get("hidden_dim", 256),
        "encoder_layers": encoder.get("num_encoder_layers", 6), "decoder_layers": decoder.get("num_decoder_layers", 6),
        "encoder_attention_heads": encoder.get("nhead", 8), "decoder_attention_heads": decoder.get("nhead", 8),
        "encoder_ffn_dim": encoder.get("dim_feedforward", 2048), "decoder_ffn_dim": decoder.get("dim_feedforward", 2048),
        "activation_function": encoder.get("activation", "relu"), "dropout": dropout, "attention_dropout": dropout,
        "activation_dropout": dropout, "auxiliary_loss": False,  # see from_transformers
        "position_embedding_type": "sine",
    }
    return config, zoo_to_transformers(model.state_dict())


def from_transformers(config: Mapping) -> tuple[str, dict]:
    """DetrConfig (config.json) -> ``(architecture, model_args)`` of the zoo DETR."""
    get = config.get
    require(not get("auxiliary_loss", False), "auxiliary_loss", "True makes transformers' DETR decoder feed each "
            "layer the layer-normed output of the previous one (unlike DETR, whose auxiliary heads normalise a copy); "
            "zoo follows DETR. Save the model with auxiliary_loss=False (zoo trains with auxiliary losses anyway)")
    require(get("position_embedding_type", "sine") == "sine", "position_embedding_type", "zoo's DETR uses 'sine'")
    spec = get("backbone_config") or {"model_type": "timm_backbone", "backbone": get("backbone", "resnet50")}
    require(spec.get("model_type") == "timm_backbone", "backbone_config.model_type",
            f"{spec.get('model_type')!r}: zoo's DETR backbone is a timm ResNet (use_timm_backbone=True)")
    name = spec.get("backbone") or "resnet50"
    require(name.startswith("resnet"), "backbone_config.backbone", f"{name!r} is not a timm ResNet")
    require(get("activation_function", "relu") in ("relu", "gelu"), "activation_function", "zoo has relu and gelu")
    dilation = bool(get("dilation", False))
    transformer = dict(dropout=get("dropout", 0.1), activation=get("activation_function", "relu"))
    model_args = dict(
        backbone=dict(name="detr_resnet", model_name=name, dilation=dilation),
        encoder=dict(name="detr", num_encoder_layers=get("encoder_layers", 6), nhead=get("encoder_attention_heads", 8),
                     dim_feedforward=get("encoder_ffn_dim", 2048), **transformer),
        decoder=dict(name="detr", num_decoder_layers=get("decoder_layers", 6), nhead=get("decoder_attention_heads", 8),
                     dim_feedforward=get("decoder_ffn_dim", 2048), **transformer),
        num_queries=get("num_queries", 100), hidden_dim=get("d_model", 256))
    base = "resnet101" if name == "resnet101" else "resnet50"
    return f"detr_{base}{'_dc5' if dilation else ''}", model_args


#: ``DetrForObjectDetection`` <-> zoo (``DETR.transformers``)
TRANSFORMERS = TransformersMapping(("detr",), "DetrImageProcessor", True, to_transformers, from_transformers,
                                   lambda config: "transformers-detr")
