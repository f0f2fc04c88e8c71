"""Top-k with a defined tie order, identical in eager PyTorch and in every exported graph.

``torch.topk`` leaves the order of equal values unspecified, and its CPU kernel picks other ones than ONNX's
``TopK`` (lowest index first) or other runtimes. Exact ties are rare on trained weights but common elsewhere: a
transformers-initialised RT-DETR (BatchNorm weights ~N(0, 0.02)) shrinks its features to ~1e-10, so all 2100
encoder scores at 320x320 equal the score head's bias to the last bit; torch and onnxruntime then selected two
disjoint sets of 300 queries and the exported detections differed by up to 3 (logits). Here the elements tied at
the k-th value are taken lowest index first and equal values are ordered by index, computed with comparisons,
a cumulative sum and top-k of unique keys, so neither the selected set nor its order depends on any runtime's TopK tie
order. Without exact ties this returns what ``torch.topk`` returns.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from zoo.layers.tracing import is_tracing

__all__ = ["topk_lowest_index", "record_rounding_ties"]

_records: list[int] | None = None
_records_relative = 0.0


@contextlib.contextmanager
def record_rounding_ties(relative: float) -> Iterator[list[int]]:
    """Within this block (eager, one thread), every :func:`topk_lowest_index` call appends to the yielded list
    how many of its selections float rounding could change: per row, the smaller of the number of selected and
    of not selected entries within ``relative`` x the row's largest magnitude from the k-th value, summed over
    rows. Export verification uses it to excuse exactly that many queries (zoo.export.onnx)."""
    global _records, _records_relative
    previous, _records, _records_relative = _records, [], relative
    try:
        yield _records
    finally:
        _records = previous


def _record(x: torch.Tensor, kth: torch.Tensor, chosen: torch.Tensor) -> None:
    margin = _records_relative * x.abs().amax(1, keepdim=True)
    near = (x - kth).abs() <= margin
    inside, outside = (near & chosen).sum(1), (near & ~chosen).sum(1)
    _records.append(int(torch.minimum(inside, outside).sum()))


def topk_lowest_index(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of the ``k`` largest entries of each row of ``x [B, N]``, sorted by value (largest
    first) and equal values by index; of entries equal to the k-th largest, those with the lowest index are
    taken."""
    kth = x.topk(k, dim=1).values[:, -1:]
    above, tied = x > kth, x == kth
    room = k - above.sum(1, keepdim=True)  # how many of the tied entries fit
    chosen = above | (tied & (tied.to(torch.int64).cumsum(1) <= room))
    if _records is not None and not is_tracing():
        _record(x, kth, chosen)
    # the chosen indices, ascending: unique keys (n - index), so any runtime's TopK returns them alike
    position = torch.arange(x.shape[1], 0, -1, device=x.device, dtype=torch.float32)
    index = torch.where(chosen, position, torch.zeros_like(position)).topk(k, dim=1).indices
    # sorted by value, equal values by index: a stable sort in eager, TopK in graphs (ONNX specifies that TopK
    # puts equal values lowest index first; the exporter has no stable sort)
    values = x.gather(1, index)
    values, order = values.topk(k, dim=1) if is_tracing() else values.sort(dim=1, descending=True, stable=True)
    return values, index.gather(1, order)
