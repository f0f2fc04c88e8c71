"""Initialisation helpers shared by detector heads."""
from __future__ import annotations

import math

__all__ = ["prior_prob_bias"]


def prior_prob_bias(prior_prob: float = 0.01) -> float:
    """Classifier bias so that sigmoid(bias) = prior_prob (focal-loss initialisation)."""
    return float(-math.log((1 - prior_prob) / prior_prob))
