"""The per-query comparison behind verify, in units of float rounding: rounding and reordered ties pass, a
real difference (however small next to the values) fails."""
from __future__ import annotations

import pytest
import torch

from zoo.export.compare import EPS, TOLERANCE_UNITS, compare_queries


def _outputs(seed: int = 0, queries: int = 300):
    generator = torch.Generator().manual_seed(seed)
    return {"pred_logits": 4 * torch.randn(2, queries, 80, generator=generator),
            "pred_boxes": torch.rand(2, queries, 4, generator=generator)}


def _rounded(outputs, ulps: float, seed: int = 1):
    """Each element moved by up to ``ulps`` float32 rounding steps of its output's magnitude."""
    generator = torch.Generator().manual_seed(seed)
    return {k: v + ulps * EPS["float32"] * v.abs().max() * (2 * torch.rand(v.shape, generator=generator) - 1)
            for k, v in outputs.items()}


def test_float_rounding_agrees():
    ref = _outputs()
    agreement = compare_queries(ref, _rounded(ref, 20))
    assert agreement.ok and agreement.disagreeing == 0 and 10 < agreement.worst_query <= 21  # (+ the addition's own rounding)
    assert agreement.tolerance == TOLERANCE_UNITS["float32"]


def test_a_small_real_difference_disagrees():
    """1e-4 on every box (2e-5 on logits of magnitude ~15) is far above rounding: the old absolute tolerance of
    1e-3 let it pass."""
    ref = _outputs()
    shifted = {"pred_logits": ref["pred_logits"] + 2e-5, "pred_boxes": ref["pred_boxes"] + 1e-4}
    agreement = compare_queries(ref, shifted)
    assert not agreement.ok and agreement.disagreeing == 1 and agreement.worst_query > 800


def test_a_wrong_graph_disagrees():
    ref = _outputs()
    one_query = {k: v.clone() for k, v in ref.items()}
    one_query["pred_boxes"][0, 7] = torch.rand(4)  # another query selected: one query is enough
    assert not compare_queries(ref, one_query).ok
    nan = {k: v.clone() for k, v in ref.items()}
    nan["pred_boxes"][0, 0] = float("nan")
    assert not compare_queries(ref, nan).ok


def test_labels_must_match_exactly():
    ref = {"labels": torch.arange(20)[None], "scores": torch.rand(1, 20)}
    got = {"labels": ref["labels"].clone(), "scores": ref["scores"]}
    got["labels"][0, :15] += 1
    agreement = compare_queries(ref, got)
    assert not agreement.ok and agreement.disagreeing == 0.75


def test_queries_that_trade_places_agree():
    ref = _outputs()
    got = {k: v.clone() for k, v in ref.items()}
    for value in got.values():
        value[:, [3, 4]] = value[:, [4, 3]]  # tied scores: same queries, other order
    agreement = compare_queries(ref, got)
    assert agreement.ok and agreement.worst_query == 0 and agreement.max_error > 0.1


def test_float16_tolerance_is_in_float16_units():
    ref = _outputs()
    half = {k: v.half().float() for k, v in ref.items()}
    assert not compare_queries(ref, half).ok  # float16 rounding is not float32 rounding
    assert compare_queries(ref, half, "float16").ok
    with pytest.raises(ValueError, match="dtype must be one of"):
        compare_queries(ref, half, "int8")


def test_only_as_many_queries_as_rounding_decides_may_differ():
    ref = _outputs()
    got = {k: v.clone() for k, v in ref.items()}
    got["pred_boxes"][0, 7] = torch.rand(4)
    got["pred_boxes"][1, 9] = torch.rand(4)
    assert compare_queries(ref, got, allowed=2).ok
    assert not compare_queries(ref, got, allowed=1).ok
