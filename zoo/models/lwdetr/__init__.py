"""LW-DETR and RF-DETR: entry points and configs in model.py."""
from zoo.models.lwdetr import convert  # noqa: F401  (registers the official and transformers layouts)
from zoo.models.lwdetr.model import LWDETR

__all__ = ["LWDETR"]
