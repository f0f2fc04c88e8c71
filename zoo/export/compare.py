"""How closely an exported graph agrees with the eager model, query by query.

A plain maximum difference is the wrong test for detectors with top-k query selection (RT-DETR): a float
rounding can swap one candidate at the edge of the encoder's top-k, and then one query is a different query and
every other one moves a little through self-attention. Such a swap leaves the median query error tiny and touches
few queries, while a wrong graph (a constant anchor grid, a missing normalisation) moves most of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

__all__ = ["Agreement", "compare_queries", "TOLERANCES"]

#: per-query tolerance by exported precision: fp32 graphs agree to float rounding, fp16 ones to half precision
TOLERANCES = {"float32": 1e-3, "float16": 5e-2}

#: the share of queries allowed to exceed the tolerance (a top-k swap); a wrong graph fails most queries
MAX_DISAGREEING = 0.1


@dataclass
class Agreement:
    """``max_error``: the largest absolute difference of any output element; ``median_query_error``: the median
    over queries of each query's largest difference; ``disagreeing``: the share of queries whose difference
    exceeds ``tolerance``."""

    max_error: float
    median_query_error: float
    disagreeing: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.median_query_error <= self.tolerance and self.disagreeing <= MAX_DISAGREEING

    def __str__(self) -> str:
        return (f"max |diff| {self.max_error:.2e}, median query error {self.median_query_error:.2e}, "
                f"{self.disagreeing:.1%} of queries above {self.tolerance:g}")


def compare_queries(reference: Mapping[str, torch.Tensor], candidate: Mapping[str, torch.Tensor],
                    tolerance: float, names: Sequence[str] | None = None) -> Agreement:
    """Compare outputs shaped ``[B, Q, ...]`` (or ``[B, Q]``) name by name; a query's error is its largest
    absolute difference over all compared outputs. Integer outputs (labels) count any difference as infinite."""
    per_query, max_error = None, 0.0
    for name in names or list(reference):
        ref, got = reference[name], torch.as_tensor(candidate[name])
        if tuple(ref.shape) != tuple(got.shape):
            raise ValueError(f"output {name!r}: shape {list(got.shape)}, expected {list(ref.shape)}")
        if ref.is_floating_point():
            diff = (ref.double() - got.double().to(ref.device)).abs()
        else:
            diff = torch.where(ref == got.to(ref.device), 0.0, float("inf")).double()
        diff = diff.nan_to_num(nan=float("inf"))  # NaN where the reference is finite is a disagreement
        finite = diff[torch.isfinite(diff)]
        max_error = max(max_error, float(finite.max()) if finite.numel() else 0.0)
        query_diff = diff.flatten(2).amax(-1) if diff.ndim > 2 else diff
        per_query = query_diff if per_query is None else torch.maximum(per_query, query_diff)
    errors = per_query.flatten()
    return Agreement(max_error, float(errors.median()), float((errors > tolerance).double().mean()), tolerance)
