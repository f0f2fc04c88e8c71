"""ImageNet classifiers of the seed papers (MobileNetV2/V3), registered in the zoo and built through timm."""
from __future__ import annotations

from typing import Any

from torch import nn

from zoo.registry import register_model

__all__: list[str] = []


def _timm_classifier(architecture: str, **kwargs: Any) -> nn.Module:
    import timm

    args = {"num_classes": 1000, **kwargs}
    model = timm.create_model(architecture, pretrained=False, **args)
    model.config = {"architecture": architecture, "model_args": args}
    cfg = model.pretrained_cfg
    model.pretrained_cfg = dict(input_size=tuple(cfg["input_size"]), resize_mode="crop",
                                interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"],
                                mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    return model


# --------------------------------------------------------------------------------------------------
# Entry points: every width multiplier timm has for these families
# --------------------------------------------------------------------------------------------------

@register_model
def mobilenetv3_large_100(**kwargs: Any) -> nn.Module:
    """MobileNetV3-Large 1.0 (timm, ImageNet 75.8 top-1 with ra_in1k weights)."""
    return _timm_classifier("mobilenetv3_large_100", **kwargs)


@register_model
def mobilenetv3_large_075(**kwargs: Any) -> nn.Module:
    """MobileNetV3-Large 0.75 (timm)."""
    return _timm_classifier("mobilenetv3_large_075", **kwargs)


@register_model
def mobilenetv3_large_150d(**kwargs: Any) -> nn.Module:
    """MobileNetV3-Large 1.5, deeper (timm)."""
    return _timm_classifier("mobilenetv3_large_150d", **kwargs)


@register_model
def mobilenetv3_small_100(**kwargs: Any) -> nn.Module:
    """MobileNetV3-Small 1.0 (timm, ImageNet 67.6 top-1 with lamb_in1k weights)."""
    return _timm_classifier("mobilenetv3_small_100", **kwargs)


@register_model
def mobilenetv3_small_075(**kwargs: Any) -> nn.Module:
    """MobileNetV3-Small 0.75 (timm)."""
    return _timm_classifier("mobilenetv3_small_075", **kwargs)


@register_model
def mobilenetv3_small_050(**kwargs: Any) -> nn.Module:
    """MobileNetV3-Small 0.5 (timm)."""
    return _timm_classifier("mobilenetv3_small_050", **kwargs)


@register_model
def mobilenetv2_100(**kwargs: Any) -> nn.Module:
    """MobileNetV2 1.0 (timm, ImageNet 72.9 top-1 with ra_in1k weights)."""
    return _timm_classifier("mobilenetv2_100", **kwargs)


@register_model
def mobilenetv2_050(**kwargs: Any) -> nn.Module:
    """MobileNetV2 0.5 (timm)."""
    return _timm_classifier("mobilenetv2_050", **kwargs)


@register_model
def mobilenetv2_035(**kwargs: Any) -> nn.Module:
    """MobileNetV2 0.35 (timm)."""
    return _timm_classifier("mobilenetv2_035", **kwargs)


@register_model
def mobilenetv2_075(**kwargs: Any) -> nn.Module:
    """MobileNetV2 0.75 (timm)."""
    return _timm_classifier("mobilenetv2_075", **kwargs)


@register_model
def mobilenetv2_110d(**kwargs: Any) -> nn.Module:
    """MobileNetV2 1.1, deeper (timm)."""
    return _timm_classifier("mobilenetv2_110d", **kwargs)


@register_model
def mobilenetv2_120d(**kwargs: Any) -> nn.Module:
    """MobileNetV2 1.2, deeper (timm)."""
    return _timm_classifier("mobilenetv2_120d", **kwargs)


@register_model
def mobilenetv2_140(**kwargs: Any) -> nn.Module:
    """MobileNetV2 1.4 (timm)."""
    return _timm_classifier("mobilenetv2_140", **kwargs)
