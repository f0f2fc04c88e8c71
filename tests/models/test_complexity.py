"""Parameters and GFLOPs come from one function: counted on the meta device they equal a real run's count, and the
README's model table and the manifest's "measured by zoo" figures are exactly what it gives."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import zoo
from zoo.weights.manifest import load_manifest
from zoo.models.complexity import measured, model_complexity, model_table, readme_table

REPO = Path(__file__).resolve().parents[2]
TINY = dict(backbone={"model_name": "mobilenetv3_small_050"},
            encoder={"hidden_dim": 32, "dim_feedforward": 64, "num_heads": 4},
            decoder={"hidden_dim": 32, "dim_feedforward": 64, "num_decoder_layers": 2, "num_queries": 20,
                     "num_heads": 4, "num_denoising": 10})


@pytest.mark.parametrize("name, args, size", [("rtdetr_mobilenetv3_small", TINY, 96),
                                              ("detr_resnet50", {"num_queries": 10}, 64)])
def test_meta_count_equals_a_real_count(name, args, size, single_thread):
    """The meta-device count is a real CPU run's count with attention's fused fast path off (whose kernel torch's
    counter cannot see: with it on, the real count misses the attention matmuls)."""
    model = zoo.create_model(name, **args).eval()
    real = {}
    for fast_path in (False, True):
        torch.backends.mha.set_fastpath_enabled(fast_path)
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(torch.rand(1, 3, size, size))
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
        real[fast_path] = round(counter.get_total_flops() / 1e9, 2)
    counted = model_complexity(name, size, args)
    assert counted["gflops"] == real[False] > 0
    assert counted["params_m"] == round(sum(p.numel() for p in model.parameters()) / 1e6, 3)
    assert counted["input_size"] == [size, size]


@pytest.mark.slow
def test_readme_model_table_is_generated():
    """`python -m zoo.models.complexity` regenerates it (and the manifest figures) after a model changes."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = readme_table(text)
    assert "\n".join(text.splitlines()[start:end]) == model_table(zoo.list_models())


@pytest.mark.slow
def test_manifest_measured_complexity_is_generated(monkeypatch):
    monkeypatch.delenv("ZOO_WEIGHTS_MANIFEST", raising=False)
    entries = [e for e in load_manifest().entries.values() if e.complexity["provenance"] == "measured by zoo"]
    assert len(entries) >= 5
    for entry in entries:
        assert dict(entry.complexity) == measured(entry), entry.name
