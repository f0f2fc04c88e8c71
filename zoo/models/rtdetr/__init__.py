"""RT-DETR v1/v2 and the AKConv variants: entry points and configs in model.py."""
from zoo.models.rtdetr.model import RTDETR

__all__ = ["RTDETR"]
