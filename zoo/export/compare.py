"""How closely an exported graph agrees with the eager model, query by query, in units of float rounding.

An element's error is measured in units of its output's rounding step: ``|got - ref| / (eps * scale)``, where
``eps`` is the exported precision's machine epsilon and ``scale`` the largest magnitude of that output in the
reference (rounding errors grow with the magnitudes a computation passes through, not with one element's own
value). Float rounding through a detector moved outputs by at most 11 such units in float32; a wrong graph (a
constant anchor grid, a missing normalisation, other queries selected) by 10**4 to 10**7. Queries are matched, not
compared by position: two queries whose scores are equal may come out in either order.

A selection decided by rounding: where the eager scores put candidates within rounding of the k-th score (a
model whose features are so small that hundreds of candidates share a few float32 values, as with transformers'
initialisation plus small noise and untouched BatchNorm statistics), one ulp of difference selects other
queries on every input. Verification counts those candidates in eager PyTorch
(zoo.layers.topk.record_rounding_ties) and lets that many queries, and no more, differ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

__all__ = ["Agreement", "compare_queries", "TOLERANCE_UNITS", "EPS"]

#: machine epsilon of the exported precision
EPS = {"float32": float(torch.finfo(torch.float32).eps), "float16": float(torch.finfo(torch.float16).eps)}
#: largest error, in rounding units (eps x the output's magnitude), that float rounding explains, per precision.
#: Measured on onnxruntime 1.x against eager PyTorch (docs/deploy.md): float32 worst 11 units over the demo
#: weights, the export tests' tiny models of every family and a transformers-initialised rtdetr_r18vd; float16
#: worst 4 units on the demo. A wrong graph was 10**4 to 10**7 units off.
TOLERANCE_UNITS = {"float32": 256.0, "float16": 16.0}

@dataclass
class Agreement:
    """``max_error``: the largest absolute difference of any output element, position by position;
    ``worst_query``: the largest error of any query (matched, in rounding units); ``disagreeing``: the share of
    queries whose error exceeds ``tolerance`` units; ``dtype``: the precision compared; ``above``: how many
    queries exceed it; ``allowed``: how many may (top-k selections that float rounding decides, see
    zoo.layers.topk.record_rounding_ties)."""

    max_error: float
    worst_query: float
    disagreeing: float
    tolerance: float
    dtype: str = "float32"
    above: int = 0
    allowed: int = 0

    @property
    def ok(self) -> bool:
        return self.above <= self.allowed

    def __str__(self) -> str:
        return (f"max |diff| {self.max_error:.2e}, worst query {self.worst_query:.3g} rounding units "
                f"({self.dtype} eps x the output's magnitude; tolerance {self.tolerance:g}), "
                f"{self.disagreeing:.1%} of queries above"
                + (f" ({self.above}; {self.allowed} selections at the top-k edge are decided by float rounding, "
                   "so as many queries may differ)" if self.allowed else ""))


def compare_queries(reference: Mapping[str, torch.Tensor], candidate: Mapping[str, torch.Tensor],
                    dtype: str = "float32", names: Sequence[str] | None = None,
                    tolerance: float | None = None, allowed: int = 0) -> Agreement:
    """Compare outputs shaped ``[B, Q, ...]`` (or ``[B, Q]``) name by name.

    A reference query's error is its largest error (in rounding units, see the module docstring) over all
    compared outputs from the closest candidate query of the same image, so two tied queries that trade places
    still agree, while a query that is not in the candidate at all disagrees. Integer outputs (labels) must be
    equal; NaN counts as infinitely wrong. ``allowed``: how many queries may exceed the tolerance (selections
    that rounding decides; 0 unless the caller measured them).
    """
    if dtype not in EPS:
        raise ValueError(f"dtype must be one of {sorted(EPS)}, got {dtype!r}")
    tolerance = TOLERANCE_UNITS[dtype] if tolerance is None else tolerance
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
            magnitude = ref.abs()[torch.isfinite(ref)]
            unit = EPS[dtype] * max(float(magnitude.max()) if magnitude.numel() else 0.0, 1e-30)
            # [B, Q_ref, Q_got]
            errors = (ref[:, :, None] - got[:, None]).abs().nan_to_num(nan=float("inf")).amax(-1) / unit
        else:
            errors = torch.where((ref[:, :, None] == got[:, None]).all(-1), 0.0, float("inf")).double()
        pairwise = errors if pairwise is None else torch.maximum(pairwise, errors)
    per_query = pairwise.amin(-1).flatten()
    above = per_query > tolerance
    return Agreement(max_error, float(per_query.max()), float(above.double().mean()), tolerance, dtype,
                     int(above.sum()), allowed)
