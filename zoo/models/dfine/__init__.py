"""D-FINE: entry points and configs in model.py."""
from zoo.models.dfine import convert  # noqa: F401  (registers the official and transformers layouts)
from zoo.models.dfine.model import DFINE

__all__ = ["DFINE"]
