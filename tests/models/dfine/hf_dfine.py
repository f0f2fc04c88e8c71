"""Build transformers' DFineForObjectDetection with the configuration of a zoo D-FINE (test helper)."""
from __future__ import annotations

import copy

import torch

from zoo.models.dfine.convert import HGNETV2_ARCHS, _hgnet_config


def hf_dfine_config(name: str, num_classes: int = 80):
    """``DFineConfig`` of zoo's ``name`` (dfine_n / dfine_s), written out as the ustc-community configs are."""
    from transformers import DFineConfig, HGNetV2Config

    nano = name == "dfine_n"
    backbone = _hgnet_config("B0", True, [2, 3] if nano else [1, 2, 3])
    backbone.pop("model_type")
    common = dict(backbone_config=HGNetV2Config(**backbone), num_labels=num_classes,
                  id2label={i: f"class_{i}" for i in range(num_classes)}, freeze_backbone_batch_norms=False)
    if nano:
        return DFineConfig(**common, encoder_in_channels=[512, 1024], feat_strides=[16, 32], encoder_hidden_dim=128,
                           encode_proj_layers=[1], encoder_ffn_dim=512, hidden_expansion=0.34, depth_mult=0.5,
                           decoder_in_channels=[128, 128], d_model=128, decoder_ffn_dim=512, num_feature_levels=2,
                           decoder_layers=3, decoder_n_points=[6, 6])
    return DFineConfig(**common, encoder_in_channels=[256, 512, 1024], hidden_expansion=0.5, depth_mult=0.34,
                       decoder_layers=3, decoder_n_points=[3, 6, 3])


def hf_dfine(name: str, num_classes: int = 80, seed: int = 0):
    """A transformers D-FINE with random weights and non-trivial BatchNorm statistics (eval mode)."""
    from transformers import DFineForObjectDetection

    torch.manual_seed(seed)
    model = DFineForObjectDetection(hf_dfine_config(name, num_classes)).eval()
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not key.endswith(
                    ("running_mean", "running_var", "num_points_scale", "decoder.up", "decoder.reg_scale")):
                tensor.add_(torch.randn_like(tensor) * 0.02)
        calibrate_batch_norms(model, lambda: model(pixel_values=torch.rand(1, 3, 320, 320)))
    return model


def calibrate_batch_norms(model, run) -> None:
    """Set every BatchNorm's running statistics to those of its input during ``run()`` (with +-20% noise)."""
    def hook(module, inputs):
        x = inputs[0]
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)) * torch.empty_like(module.running_var).uniform_(0.8, 1.2))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if "BatchNorm" in type(m).__name__ and hasattr(m, "running_var")]
    try:
        run()
    finally:
        for h in handles:
            h.remove()


def output_diffs(hf_model, zoo_model, x) -> tuple[float, float]:
    """Largest |difference| of logits and boxes, both models in float64 (near-ties of the top-k selection make
    float32 comparisons on random weights depend on the CPU's rounding)."""
    hf_model, zoo_model, x = copy.deepcopy(hf_model).double(), copy.deepcopy(zoo_model).double(), x.double()
    with torch.no_grad():
        ref = hf_model(pixel_values=x)
        out = zoo_model(x)
    return ((ref.logits - out["pred_logits"]).abs().max().item(),
            (ref.pred_boxes - out["pred_boxes"]).abs().max().item())


__all__ = ["hf_dfine", "hf_dfine_config", "calibrate_batch_norms", "output_diffs", "HGNETV2_ARCHS"]
