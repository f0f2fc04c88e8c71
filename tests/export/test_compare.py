"""The per-query comparison behind verify: a top-k swap passes, a wrong graph fails."""
from __future__ import annotations

import torch

from zoo.export.compare import compare_queries


def _outputs(seed: int = 0, queries: int = 300):
    generator = torch.Generator().manual_seed(seed)
    return {"pred_logits": torch.randn(2, queries, 80, generator=generator),
            "pred_boxes": torch.rand(2, queries, 4, generator=generator)}


def test_float_rounding_agrees():
    ref = _outputs()
    got = {k: v + 1e-6 for k, v in ref.items()}
    agreement = compare_queries(ref, got, 1e-3)
    assert agreement.ok and abs(agreement.max_error - 1e-6) < 1e-7 and agreement.disagreeing == 0


def test_a_swapped_query_that_moves_the_others_a_little_agrees():
    ref = _outputs()
    got = {k: v + 2e-4 * torch.randn_like(v) for k, v in ref.items()}
    got["pred_logits"][0, 7] = torch.randn(80)  # another query at the edge of the top-k
    got["pred_boxes"][0, 7] = torch.rand(4)
    agreement = compare_queries(ref, got, 1e-3)
    assert agreement.ok and agreement.max_error > 1 and 0 < agreement.disagreeing < 0.01


def test_a_wrong_graph_disagrees():
    ref = _outputs()
    shifted = {"pred_logits": ref["pred_logits"], "pred_boxes": ref["pred_boxes"] + 0.01}
    assert not compare_queries(ref, shifted, 1e-3).ok
    half_wrong = {k: v.clone() for k, v in ref.items()}
    half_wrong["pred_logits"][:, ::2] += 1.0
    assert not compare_queries(ref, half_wrong, 1e-3).ok
    nan = {k: v.clone() for k, v in ref.items()}
    nan["pred_boxes"][:] = float("nan")
    assert not compare_queries(ref, nan, 1e-3).ok


def test_labels_must_match_exactly():
    ref = {"labels": torch.arange(20)[None], "scores": torch.rand(1, 20)}
    got = {"labels": ref["labels"].clone(), "scores": ref["scores"]}
    got["labels"][0, :15] += 1
    agreement = compare_queries(ref, got, 1e-3)
    assert not agreement.ok and agreement.disagreeing == 0.75


def test_queries_that_trade_places_agree():
    ref = _outputs()
    got = {k: v.clone() for k, v in ref.items()}
    for value in got.values():
        value[:, [3, 4]] = value[:, [4, 3]]  # a near-tie in the top-k: same queries, other order
    agreement = compare_queries(ref, got, 1e-3)
    assert agreement.ok and agreement.disagreeing == 0 and agreement.max_error > 0.1
