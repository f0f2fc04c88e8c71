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
    """Compare outputs shaped ``[B, Q, ...]`` (or ``[B, Q]``) name by name.

    A reference query's error is its largest absolute difference over all compared outputs from the closest
    candidate query of the same image, so two near-tied queries that trade places (top-k order) still agree while
    a query that is not in the candidate at all disagrees. Integer outputs (labels) must be equal. ``max_error``
    compares position by position.
    """
    pairwise, max_error = None, 0.0
    for name in names or list(reference):
        ref, got = reference[name].double(), torch.as_tensor(candidate[name]).double().to(reference[name].device)
        if tuple(ref.shape) != tuple(got.shape):
            raise ValueError(f"output {name!r}: shape {list(got.shape)}, expected {list(ref.shape)}")
        ref, got = ref.flatten(2) if ref.ndim > 2 else ref[..., None], got.flatten(2) if got.ndim > 2 else got[..., None]
        if reference[name].is_floating_point():
            same_place = (ref - got).abs().nan_to_num(nan=float("inf"))
            finite = same_place[torch.isfinite(same_place)]
            max_error = max(max_error, float(finite.max()) if finite.numel() else 0.0)
            # [B, Q_ref, Q_got]: NaN (where the reference is finite) counts as infinitely wrong
            errors = (ref[:, :, None] - got[:, None]).abs().nan_to_num(nan=float("inf")).amax(-1)
        else:
            errors = torch.where((ref[:, :, None] == got[:, None]).all(-1), 0.0, float("inf")).double()
        pairwise = errors if pairwise is None else torch.maximum(pairwise, errors)
    per_query = pairwise.amin(-1).flatten()
    return Agreement(max_error, float(per_query.median()), float((per_query > tolerance).double().mean()), tolerance)
