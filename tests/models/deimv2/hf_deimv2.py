"""Build transformers' Deimv2ForObjectDetection as the DEIMv2 releases are configured (test helper): the
Deimv2Config values written out from the official configs/deimv2/*.yml, as transformers' converter builds them."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dfine"))
from hf_dfine import calibrate_batch_norms, output_diffs  # noqa: E402  (D-FINE's helpers)

from zoo.models.dfine.convert import HGNETV2_ARCHS, _STAGE_FIELDS

#: official HGNetv2 third stages of the pruned variants (in, mid, out, blocks, downsample, light, kernel, layers)
_PRUNED = {"atto": (256, 64, 256, 1, True, True, 3, 3), "femto": (256, 64, 512, 1, True, True, 5, 3),
           "pico": (256, 64, 512, 2, True, True, 5, 3)}


def _hgnet(size: str):
    from transformers import HGNetV2Config

    stem, stages = HGNETV2_ARCHS["B0"]
    if size in _PRUNED:
        stages, features = [*stages[:2], _PRUNED[size]], ["stage3"]
    else:
        features = ["stage3", "stage4"]
    fields = {f: [s[i] for s in stages] for i, f in enumerate(_STAGE_FIELDS)}
    return HGNetV2Config(stem_channels=stem, use_learnable_affine_block=True, hidden_act="relu",
                         embedding_size=stem[-1], depths=fields["stage_numb_of_layers"],
                         hidden_sizes=fields["stage_out_channels"], out_features=features, **fields)


def hf_deimv2_config(size: str, num_classes: int = 80):
    """``Deimv2Config`` of DEIMv2-``size`` (atto, femto, pico, n, s, m, l, x)."""
    from transformers import Deimv2Config, DINOv3ViTConfig

    common = dict(num_labels=num_classes, id2label={i: f"class_{i}" for i in range(num_classes)},
                  freeze_backbone_batch_norms=False, decoder_activation_function="silu", activation_function="silu")
    if size in _PRUNED:
        hidden, ffn, queries = {"atto": (64, 160, 100), "femto": (96, 256, 150), "pico": (112, 320, 200)}[size]
        return Deimv2Config(**common, backbone_config=_hgnet(size), encoder_type="lite",
                            encoder_in_channels=[_PRUNED[size][2]], feat_strides=[16, 32], encoder_hidden_dim=hidden,
                            hidden_expansion=0.34, depth_mult=0.5, d_model=hidden, decoder_in_channels=[hidden] * 2,
                            num_feature_levels=2, decoder_n_points=[4, 2], decoder_layers=3, num_queries=queries,
                            decoder_ffn_dim=ffn, share_bbox_head=True, use_gateway=False)
    if size == "n":
        return Deimv2Config(**common, backbone_config=_hgnet("n"), encoder_in_channels=[512, 1024], feat_strides=[16, 32],
                            encoder_hidden_dim=128, encode_proj_layers=[1], encoder_ffn_dim=512, hidden_expansion=0.34,
                            depth_mult=0.5, d_model=128, decoder_in_channels=[128, 128], num_feature_levels=2,
                            decoder_n_points=[6, 6], decoder_layers=3, decoder_ffn_dim=512)
    vit = {"s": dict(hidden_size=192, num_attention_heads=3, intermediate_size=768),
           "m": dict(hidden_size=256, num_attention_heads=4, intermediate_size=1024),
           "l": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
           "x": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536, use_gated_mlp=True,
                     hidden_act="silu")}[size]
    if size in "sm":  # DINOv3-distilled ViT-Tiny(+): no registers, no LayerScale (1.0), key bias, eps 1e-6
        vit.update(num_register_tokens=0, layerscale_value=1.0, key_bias=True, layer_norm_eps=1e-6,
                   apply_layernorm=False, out_indices=[4, 8, 12])
    else:
        vit.update(num_register_tokens=4, layerscale_value=1e-5, key_bias=False, layer_norm_eps=1e-5,
                   out_indices=[6, 9, 12])
    hidden, enc_ffn, exp, depth, layers, dec_ffn, sta = {
        "s": (192, 512, 0.34, 0.67, 4, 512, 16), "m": (256, 512, 0.67, 1.0, 4, 512, 16),
        "l": (224, 896, 1.0, 1.0, 4, 1792, 32), "x": (256, 1024, 1.25, 1.37, 6, 2048, 64)}[size]
    return Deimv2Config(**common, backbone_config=DINOv3ViTConfig(**vit), encoder_in_channels=[hidden] * 3,
                        encoder_hidden_dim=hidden, encoder_ffn_dim=enc_ffn, hidden_expansion=exp, depth_mult=depth,
                        d_model=hidden, decoder_in_channels=[hidden] * 3, decoder_n_points=[3, 6, 3],
                        decoder_layers=layers, decoder_ffn_dim=dec_ffn, encoder_has_trailing_conv=False,
                        spatial_tuning_adapter_inplanes=sta)


def perturb(model, skip=("running_mean", "running_var", "num_points_scale", "decoder.up", "decoder.reg_scale")) -> None:
    """Every weight matters: add noise to all floating tensors (zero-initialised heads, LayerScale, gates) but the
    BatchNorm statistics and fixed buffers."""
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point() and tensor.numel() and not key.endswith(skip):
                tensor.add_(torch.randn_like(tensor) * 0.02)


def hf_deimv2(size: str, num_classes: int = 80, seed: int = 0, calibration_size: int = 320):
    """A transformers DEIMv2 with random weights and non-trivial BatchNorm statistics (eval mode)."""
    from transformers import Deimv2ForObjectDetection

    torch.manual_seed(seed)
    model = Deimv2ForObjectDetection(hf_deimv2_config(size, num_classes)).eval()
    perturb(model)
    with torch.no_grad():
        calibrate_batch_norms(model, lambda: model(pixel_values=torch.rand(1, 3, calibration_size, calibration_size)))
    return model


__all__ = ["hf_deimv2", "hf_deimv2_config", "perturb", "calibrate_batch_norms", "output_diffs"]
