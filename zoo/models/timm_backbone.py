"""Any timm model as a multi-scale backbone (``features_only``)."""
from __future__ import annotations

import torch
from torch import nn

from zoo.registry import register_component

__all__ = ["TimmBackbone"]


@register_component("backbone", "timm")
class TimmBackbone(nn.Module):
    """Wrap ``timm.create_model(model_name, features_only=True)`` and return the feature maps at ``strides``.

    ``pretrained=True`` loads the ImageNet weights through timm (needs the Hub or its cache); zoo's
    weight registry instead loads them from the manifest with ``pretrained_backbone=True``.
    """

    def __init__(self, model_name: str, strides: tuple[int, ...] = (8, 16, 32), pretrained: bool = False,
                 **timm_kwargs):
        super().__init__()
        import timm

        self.model = timm.create_model(model_name, pretrained=pretrained, features_only=True, **timm_kwargs)
        reductions = self.model.feature_info.reduction()
        missing = [s for s in strides if s not in reductions]
        if missing:
            raise ValueError(f"timm model {model_name!r} has no features at strides {missing}; "
                             f"it offers strides {reductions}")
        self.feature_indices = [reductions.index(s) for s in strides]
        channels = self.model.feature_info.channels()
        self.out_channels = [channels[i] for i in self.feature_indices]
        self.strides = list(strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model(x)
        return [features[i] for i in self.feature_indices]
