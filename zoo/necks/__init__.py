"""Encoders / necks: take backbone feature maps, return fused multi-scale maps."""
from zoo.necks.hybrid_encoder import HybridEncoder

__all__ = ["HybridEncoder"]
