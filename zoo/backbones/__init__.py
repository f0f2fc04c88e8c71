"""Backbones: each returns a list of feature maps and exposes ``out_channels`` and ``strides``."""
from zoo.backbones.presnet import PResNet
from zoo.backbones.timm_backbone import TimmBackbone

__all__ = ["PResNet", "TimmBackbone"]
