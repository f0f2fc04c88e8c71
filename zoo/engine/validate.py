"""Argument checks shared by the Python API and the command line, so that both accept exactly the same values.

Kept free of heavy imports: the command line's argument parser uses it before anything is built.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["score_threshold", "UsageError"]


class UsageError(ValueError):
    """A value the user chose that cannot work (e.g. an input size too small for the model): the command line
    reports it as a usage error (exit code 2), the Python API raises it as the ValueError it is."""


def score_threshold(value: Any) -> float:
    """``value`` as a float in [0, 1] (scores are probabilities); anything else is an error saying what was given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"score_threshold must be a number in [0, 1], got {value!r}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"score_threshold must be in [0, 1] (scores are probabilities), got {value!r}")
    return float(value)
