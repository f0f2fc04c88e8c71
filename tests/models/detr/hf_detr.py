"""Build transformers' DetrForObjectDetection (timm backbone) with randomised weights, and map its weights to
the official facebookresearch/detr key names (test helpers)."""
from __future__ import annotations

#: zoo architecture -> (timm backbone, dilation)
HF_DETR_CONFIGS = {
    "detr_resnet50": ("resnet50", False),
    "detr_resnet50_dc5": ("resnet50", True),
    "detr_resnet101": ("resnet101", False),
    "detr_resnet101_dc5": ("resnet101", True),
}


def hf_detr(name: str, num_classes: int = 91, seed: int = 0, **config_overrides):
    """A DetrForObjectDetection shaped like zoo's ``name``; every weight perturbed so that it matters.

    ``num_classes`` follows the reference convention (91 for COCO): transformers' ``num_labels`` is the same
    number and its classifier has ``num_labels + 1`` outputs. ``config_overrides`` go to ``DetrConfig``
    (e.g. ``backbone="resnet18", encoder_layers=2`` for a small model).
    """
    import torch
    from transformers import DetrConfig, DetrForObjectDetection

    backbone, dilation = HF_DETR_CONFIGS[name]
    kwargs = dict(use_timm_backbone=True, backbone=backbone, use_pretrained_backbone=False, dilation=dilation,
                  num_labels=num_classes)
    config = DetrConfig(**{**kwargs, **config_overrides})
    torch.manual_seed(seed)
    model = DetrForObjectDetection(config).eval()
    # default init zeroes biases and the last BN of every block and leaves BN statistics trivial:
    # perturb everything so that each weight reaches the output; the heads get larger weights so that
    # logits and boxes spread out (boxes all near 0.5 would make the box comparison weak)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if key.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            else:
                head = key.startswith(("class_labels_classifier.", "bbox_predictor."))
                tensor.add_(torch.randn_like(tensor) * (0.15 if head else 0.02))
    return model


def hf_to_official(state_dict: dict) -> dict:
    """Legacy transformers DETR keys (what ``save_pretrained`` writes) -> official DETR keys.

    Written from the rename table of transformers' ``convert_detr_original_pytorch_checkpoint_to_pytorch.py``,
    read backwards, independently of ``zoo.models.detr.convert``.
    """
    import torch

    renamed, qkv = {}, {}
    for key, value in state_dict.items():
        key = key.replace("model.backbone.conv_encoder.model.", "backbone.0.body.")
        key = key.replace("model.input_projection.", "input_proj.")
        key = key.replace("model.query_position_embeddings.", "query_embed.")
        key = key.replace("model.decoder.layernorm.", "transformer.decoder.norm.")
        key = key.replace("class_labels_classifier.", "class_embed.").replace("bbox_predictor.", "bbox_embed.")
        if key.startswith(("model.encoder.layers.", "model.decoder.layers.")):
            decoder = key.startswith("model.decoder.")
            key = "transformer." + key[len("model."):]
            for old, new in ((".fc1.", ".linear1."), (".fc2.", ".linear2."), (".encoder_attn.", ".multihead_attn."),
                             (".self_attn_layer_norm.", ".norm1."), (".encoder_attn_layer_norm.", ".norm2."),
                             (".final_layer_norm.", ".norm3." if decoder else ".norm2.")):
                key = key.replace(old, new)
            for proj in "qkv":
                marker = f".{proj}_proj."
                if marker in key:
                    prefix, kind = key.split(marker)
                    qkv.setdefault((prefix, kind), {})[proj] = value
                    break
            else:
                renamed[key] = value
            continue
        renamed[key] = value
    for (prefix, kind), parts in qkv.items():
        renamed[f"{prefix}.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return renamed
