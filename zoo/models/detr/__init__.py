"""DETR (facebookresearch/detr): entry points and configs in model.py."""
from zoo.models.detr.model import DETR

__all__ = ["DETR"]
