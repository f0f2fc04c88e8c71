"""DETR's ResNet backbone: a timm ResNet with frozen BatchNorm, the stem and first stage frozen, optional DC5.

timm's ``resnet50`` / ``resnet101`` are the torchvision architectures (stride on the 3x3 conv) with the same
parameter names (``conv1``, ``bn1``, ``layer1..4``, ``downsample.{0,1}``), so the official DETR weights
(``backbone.0.body.*``) load without renaming. DC5 (``dilation=True``) is timm's ``output_stride=16``: layer4
keeps stride 1 and dilates its 3x3 convs by 2 (the first block keeps dilation 1), exactly like torchvision's
``replace_stride_with_dilation=[False, False, True]`` that DETR uses.
"""
from __future__ import annotations

import torch
from torch import nn

from zoo.layers.norm import freeze_batch_norm
from zoo.registry import register_component

__all__ = ["DetrResNet"]

_TRAINABLE_STAGES = ("layer2.", "layer3.", "layer4.")


@register_component("backbone", "detr_resnet")
class DetrResNet(nn.Module):
    """Return ``[layer4 features]`` (stride 32, or 16 with ``dilation``); keys ``body.{conv1,bn1,layer1..4}.*``.

    All BatchNorms are FrozenBatchNorm2d (eps 1e-5). ``conv1`` and ``layer1`` never train, as in DETR;
    ``train_backbone=False`` freezes every backbone parameter (DETR's ``lr_backbone=0``).
    ``pretrained=True`` loads timm's ImageNet weights (needs the Hub or its cache); note that the official DETR
    checkpoints were trained from torchvision's ImageNet weights and carry their own backbone weights anyway.
    """

    def __init__(self, model_name: str = "resnet50", dilation: bool = False, pretrained: bool = False,
                 train_backbone: bool = True):
        super().__init__()
        import timm

        if not model_name.startswith("resnet"):
            raise ValueError(f"detr_resnet takes a timm ResNet name (resnet50, resnet101, ...), got {model_name!r}; "
                             "use backbone={'name': 'timm', ...} for other timm models")
        self.body = timm.create_model(model_name, pretrained=pretrained, features_only=True, out_indices=(4,),
                                      output_stride=16 if dilation else 32)
        freeze_batch_norm(self.body)
        for name, param in self.body.named_parameters():
            if not train_backbone or not name.startswith(_TRAINABLE_STAGES):
                param.requires_grad_(False)
        self.out_channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)
