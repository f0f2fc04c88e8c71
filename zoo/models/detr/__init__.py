"""DETR (facebookresearch/detr): entry points and configs in model.py."""
from zoo.models.detr import convert  # noqa: F401  (registers the official and transformers layouts)
from zoo.models.detr.model import DETR

__all__ = ["DETR"]
