"""Exact ties in top-k query selection: the same queries in eager PyTorch and in the exported graph.

The construction of issue 23: rtdetr_r18vd loaded from a transformers-initialised ``RTDetrForObjectDetection``
(random weights, r18 backbone sizes, 3 decoder layers). transformers' init draws BatchNorm weights from
N(0, 0.02), so the features shrink to ~1e-10 and every encoder score equals the score head's bias to the last
bit. torch.topk and onnxruntime's TopK took different queries of these tied ones (disjoint sets, detections 3
apart) until the selection broke ties by index (zoo.layers.topk).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import zoo
from zoo.layers.topk import topk_lowest_index

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models" / "rtdetr"))
from hf_rtdetr import _hf_config_args  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def test_ties_are_taken_lowest_index_first_and_ordered_by_index():
    x = torch.full((2, 50), -4.5)
    x[1, [30, 40]] = 1.0
    values, index = topk_lowest_index(x, 10)
    assert index[0].tolist() == list(range(10))
    assert index[1].tolist() == [30, 40, *range(8)] and values[1, :2].tolist() == [1.0, 1.0]


def test_without_ties_it_is_torch_topk():
    x = torch.randn(3, 2100, generator=torch.Generator().manual_seed(0))
    values, index = topk_lowest_index(x, 300)
    expected = x.topk(300, dim=1)
    assert torch.equal(values, expected.values) and torch.equal(index, expected.indices)


@pytest.fixture(scope="module")
def transformers_initialised(tmp_path_factory):
    """rtdetr_r18vd from a transformers-initialised RTDetrForObjectDetection, through checkpoint_path."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection

    torch.manual_seed(0)
    hf = RTDetrForObjectDetection(RTDetrConfig(**_hf_config_args("rtdetr_r18vd", 80))).eval()
    folder = tmp_path_factory.mktemp("hf_init")
    hf.save_pretrained(folder)
    return zoo.create_model("rtdetr_r18vd", checkpoint_path=folder / "model.safetensors").eval()


def test_encoder_scores_of_transformers_initialised_weights_tie(transformers_initialised):
    """The premise: all candidate scores are exactly equal (else this test would not test ties)."""
    model = transformers_initialised
    scores = {}
    hook = model.decoder.enc_score_head.register_forward_hook(lambda m, i, out: scores.update(out=out))
    with torch.no_grad():
        model(torch.rand(1, 3, 128, 128))
    hook.remove()
    best = scores["out"].max(-1).values
    assert best.shape[1] > model.decoder.num_queries and (best == best[0, 0]).all()


def test_transformers_initialised_weights_export_and_verify(transformers_initialised, tmp_path, capsys):
    """Verification compares per query with float rounding's tolerance; before the fix it failed with 100% of
    queries off (max |diff| 2-4)."""
    zoo.export(transformers_initialised, tmp_path / "m.onnx", input_size=(128, 128))
    printed = capsys.readouterr().out
    assert "1x3x128x128" in printed


def test_selections_within_rounding_of_the_kth_value_are_counted():
    from zoo.layers.topk import record_rounding_ties

    x = torch.tensor([[5.0, 4.0, 3.0, 3.0 + 1e-6, 3.0 - 1e-6, 1.0], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    with record_rounding_ties(1e-5) as ties:
        topk_lowest_index(x, 3)  # row 0: 3+1e-6 and 3 selected, 3-1e-6 not: one swap possible; row 1: none
    assert ties == [1]
    topk_lowest_index(x, 3)  # outside the block nothing is recorded
    assert ties == [1]
