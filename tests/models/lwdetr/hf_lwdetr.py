"""Build transformers' LwDetr / RfDetrForObjectDetection with the configuration of a zoo model (test helper)."""
from __future__ import annotations

import copy

import torch

#: zoo name -> (ViT dim, depth, window blocks, out indices, projector scales, d_model, heads, points, queries), from
#: the official scripts/lwdetr_*_coco_eval.sh; transformers numbers the embedding as stage 0, so its out_indices are
#: the official out_feature_indexes + 1
LW = {"lwdetr_tiny": (192, 6, [0, 2, 4], [1, 3, 5], [1.0], 256, (8, 16), 2, 100),
      "lwdetr_small": (192, 10, [0, 1, 3, 6, 7, 9], [2, 4, 5, 9], [1.0], 256, (8, 16), 2, 300),
      "lwdetr_medium": (384, 10, [0, 1, 3, 6, 7, 9], [2, 4, 5, 9], [1.0], 256, (8, 16), 2, 300),
      "lwdetr_large": (384, 10, [0, 1, 3, 6, 7, 9], [2, 4, 5, 9], [2.0, 0.5], 384, (12, 24), 4, 300),
      "lwdetr_xlarge": (768, 10, [0, 1, 3, 6, 7, 9], [2, 4, 5, 9], [2.0, 0.5], 384, (12, 24), 4, 300)}
#: zoo name -> (resolution, decoder layers), rfdetr/config.py
RF = {"rfdetr_nano": (384, 2), "rfdetr_small": (512, 3), "rfdetr_medium": (576, 4), "rfdetr_large": (704, 4)}
SIZES = {**{name: 640 for name in LW}, **{name: spec[0] for name, spec in RF.items()}}


def hf_config(name: str, num_classes: int = 91):
    """The transformers config of zoo's ``name``, written out from the official configs."""
    import transformers

    labels = dict(num_labels=num_classes, id2label={i: f"class_{i}" for i in range(num_classes)})
    if name in RF:
        resolution, layers = RF[name]
        backbone = transformers.RfDetrDinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                                   patch_size=16, num_windows=2, out_indices=[3, 6, 9, 12],
                                                   image_size=resolution)
        return transformers.RfDetrConfig(backbone_config=backbone, decoder_layers=layers, decoder_n_points=2,
                                         dropout=0.0, **labels)
    dim, depth, windows, out, scales, d_model, heads, points, queries = LW[name]
    backbone = transformers.LwDetrViTConfig(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=12,
                                            window_block_indices=windows, out_indices=[i + 1 for i in out],
                                            image_size=640,
                                            num_windows=16)
    return transformers.LwDetrConfig(backbone_config=backbone, projector_scale_factors=scales, d_model=d_model,
                                     decoder_self_attention_heads=heads[0], decoder_cross_attention_heads=heads[1],
                                     decoder_n_points=points, num_queries=queries, **labels)


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.02) -> None:
    """Add noise to every float weight (zero-initialised heads, unit norms and layer scales become non-trivial)
    and set every BatchNorm's statistics to non-trivial values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if key.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif key.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif not key.endswith("num_points_scale"):
                tensor.add_(torch.randn(tensor.shape, generator=generator) * scale)


def hf_model(name: str, num_classes: int = 91, seed: int = 0):
    """A transformers LW-DETR / RF-DETR of zoo's ``name`` with perturbed random weights (eval mode)."""
    import transformers

    torch.manual_seed(seed)
    cls = transformers.RfDetrForObjectDetection if name in RF else transformers.LwDetrForObjectDetection
    model = cls(hf_config(name, num_classes)).eval()
    perturb(model, seed)
    return model


def output_diffs(hf, zoo_model, x) -> tuple[float, float]:
    """Largest |difference| of logits and boxes, both models in float64."""
    hf, zoo_model, x = copy.deepcopy(hf).double(), copy.deepcopy(zoo_model).double(), x.double()
    with torch.no_grad():
        ref = hf(pixel_values=x)
        out = zoo_model(x)
    assert out["pred_logits"].std() > 0.1, "compare non-trivial outputs: perturb the weights"
    return ((ref.logits - out["pred_logits"]).abs().max().item(),
            (ref.pred_boxes - out["pred_boxes"]).abs().max().item())
