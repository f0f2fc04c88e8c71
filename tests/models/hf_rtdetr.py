"""Build transformers' RTDetrForObjectDetection with the configuration of a zoo RT-DETR (test helper)."""
from __future__ import annotations

HF_CONFIGS = {
    # name: (depths, layer_type, encoder hidden, encoder ffn, expansion, decoder layers)
    "rtdetr_r18vd": ([2, 2, 2, 2], "basic", 256, 1024, 0.5, 3),
    "rtdetr_r34vd": ([3, 4, 6, 3], "basic", 256, 1024, 0.5, 4),
    "rtdetr_r50vd": ([3, 4, 6, 3], "bottleneck", 256, 1024, 1.0, 6),
    "rtdetr_r101vd": ([3, 4, 23, 3], "bottleneck", 384, 2048, 1.0, 6),
}


def hf_rtdetr(name: str, num_classes: int = 80, seed: int = 0):
    import torch
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig

    depths, layer_type, hidden, ffn, expansion, layers = HF_CONFIGS[name]
    widths = [64, 128, 256, 512] if layer_type == "basic" else [256, 512, 1024, 2048]
    backbone = RTDetrResNetConfig(depths=depths, layer_type=layer_type, hidden_sizes=widths,
                                  out_features=["stage2", "stage3", "stage4"])
    config = RTDetrConfig(
        backbone_config=backbone, encoder_in_channels=widths[1:], encoder_hidden_dim=hidden, encoder_ffn_dim=ffn,
        hidden_expansion=expansion, decoder_in_channels=[hidden] * 3, decoder_layers=layers,
        num_labels=num_classes, id2label={i: f"class_{i}" for i in range(num_classes)},
    )
    torch.manual_seed(seed)
    model = RTDetrForObjectDetection(config).eval()
    # default init leaves heads at zero and BN statistics trivial: perturb everything so that
    # every weight matters, while keeping the encoder scores well separated (stable top-k)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if key.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            else:
                tensor.add_(torch.randn_like(tensor) * 0.02)
    return model
