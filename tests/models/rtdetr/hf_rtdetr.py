"""Build transformers' RTDetrForObjectDetection / RTDetrV2ForObjectDetection with the configuration of a zoo
RT-DETR (test helper)."""
from __future__ import annotations

import copy

import torch

HF_CONFIGS = {
    # name: (depths, layer_type, encoder hidden, encoder ffn, expansion, decoder layers)
    "rtdetr_r18vd": ([2, 2, 2, 2], "basic", 256, 1024, 0.5, 3),
    "rtdetr_r34vd": ([3, 4, 6, 3], "basic", 256, 1024, 0.5, 4),
    "rtdetr_r50vd": ([3, 4, 6, 3], "bottleneck", 256, 1024, 1.0, 6),
    "rtdetr_r101vd": ([3, 4, 23, 3], "bottleneck", 384, 2048, 1.0, 6),
}


def hf_rtdetr(name: str, num_classes: int = 80, seed: int = 0, calibrate: bool = True):
    """``RTDetrForObjectDetection`` for a zoo ``rtdetr_*`` name; ``calibrate=False`` skips the BatchNorm
    calibration (forward passes at 320x320) where only a valid file is needed, not well-conditioned outputs."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection

    config = RTDetrConfig(**_hf_config_args(name, num_classes))
    torch.manual_seed(seed)
    return _randomise(RTDetrForObjectDetection(config).eval(), calibrate)


def hf_rtdetrv2(name: str, num_classes: int = 80, seed: int = 0, decoder_method: str = "default",
                calibrate: bool = True):
    """``RTDetrV2ForObjectDetection`` for a zoo ``rtdetrv2_*`` name (same architectures as v1)."""
    from transformers import RTDetrV2Config, RTDetrV2ForObjectDetection

    config = RTDetrV2Config(**_hf_config_args(name.replace("rtdetrv2_", "rtdetr_"), num_classes),
                            decoder_method=decoder_method)
    torch.manual_seed(seed)
    return _randomise(RTDetrV2ForObjectDetection(config).eval(), calibrate)


def _hf_config_args(name: str, num_classes: int) -> dict:
    from transformers import RTDetrResNetConfig

    depths, layer_type, hidden, ffn, expansion, layers = HF_CONFIGS[name]
    widths = [64, 128, 256, 512] if layer_type == "basic" else [256, 512, 1024, 2048]
    backbone = RTDetrResNetConfig(depths=depths, layer_type=layer_type, hidden_sizes=widths,
                                  out_features=["stage2", "stage3", "stage4"])
    return dict(
        backbone_config=backbone, encoder_in_channels=widths[1:], encoder_hidden_dim=hidden, encoder_ffn_dim=ffn,
        hidden_expansion=expansion, decoder_in_channels=[hidden] * 3, decoder_layers=layers,
        num_labels=num_classes, id2label={i: f"class_{i}" for i in range(num_classes)},
    )


def _randomise(model, calibrate: bool = True):
    # default init leaves heads at zero and BN statistics trivial: perturb everything so that every
    # weight matters, then set each BatchNorm's statistics from the data it sees (with +-20% noise) so
    # that activations stay O(1) through deep random networks and the encoder top-k is well separated.
    # v2's n_points_scale is a constant (1 / points per level), not a weight: left as is.
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not key.endswith(("running_mean", "running_var", "n_points_scale")):
                tensor.add_(torch.randn_like(tensor) * 0.02)
        if calibrate:
            calibrate_batch_norms(model, lambda: model(pixel_values=torch.rand(2, 3, 320, 320)))
    return model


def calibrate_batch_norms(model, run) -> None:
    """Set running_mean/var of every BatchNorm (plain or frozen) to the statistics of its input during ``run()``."""
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


def saved(name: str, model, tmp_path_factory):
    """``(name, model, path)``: ``model`` written with ``save_pretrained`` (a real model.safetensors)."""
    out = tmp_path_factory.mktemp(name)
    model.save_pretrained(out)
    return name, model, out / "model.safetensors"


def output_diffs(hf_model, zoo_model, x) -> tuple[float, float]:
    """Largest |difference| of logits and boxes, computed in float64 on copies of both models.

    On random weights the encoder's top-k query selection has near-ties: in float32 one rounding (which depends on
    the CPU's kernels: AVX2 and AVX-512 round differently) can swap a selected query and move every box. In
    float64 the same maths agrees far below the tolerances."""
    hf_model, zoo_model, x = copy.deepcopy(hf_model).double(), copy.deepcopy(zoo_model).double(), x.double()
    with torch.no_grad():
        ref = hf_model(pixel_values=x)
        out = zoo_model(x)
    return ((ref.logits - out["pred_logits"]).abs().max().item(),
            (ref.pred_boxes - out["pred_boxes"]).abs().max().item())
