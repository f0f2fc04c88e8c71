"""DEIMv2: entry points and configs in model.py."""
from zoo.models.deimv2 import convert  # noqa: F401  (registers the official and transformers layouts)
from zoo.models.deimv2.model import DEIMv2

__all__ = ["DEIMv2"]
