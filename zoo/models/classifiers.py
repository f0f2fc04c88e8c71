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


def _register(name: str, doc: str) -> None:
    def entrypoint(**kwargs: Any) -> nn.Module:
        return _timm_classifier(name, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = doc
    entrypoint.__module__ = __name__
    register_model(entrypoint)


# name -> what it is; every width multiplier timm has for these families
for _name, _doc in {
    "mobilenetv3_large_100": "MobileNetV3-Large 1.0 (timm, ImageNet 75.8 top-1 with ra_in1k weights).",
    "mobilenetv3_large_075": "MobileNetV3-Large 0.75 (timm).",
    "mobilenetv3_large_150d": "MobileNetV3-Large 1.5, deeper (timm).",
    "mobilenetv3_small_100": "MobileNetV3-Small 1.0 (timm, ImageNet 67.6 top-1 with lamb_in1k weights).",
    "mobilenetv3_small_075": "MobileNetV3-Small 0.75 (timm).",
    "mobilenetv3_small_050": "MobileNetV3-Small 0.5 (timm).",
    "mobilenetv2_100": "MobileNetV2 1.0 (timm, ImageNet 72.9 top-1 with ra_in1k weights).",
    "mobilenetv2_050": "MobileNetV2 0.5 (timm).",
    "mobilenetv2_035": "MobileNetV2 0.35 (timm).",
    "mobilenetv2_075": "MobileNetV2 0.75 (timm).",
    "mobilenetv2_110d": "MobileNetV2 1.1, deeper (timm).",
    "mobilenetv2_120d": "MobileNetV2 1.2, deeper (timm).",
    "mobilenetv2_140": "MobileNetV2 1.4 (timm).",
}.items():
    _register(_name, _doc)
