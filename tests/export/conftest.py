"""Shared pieces of the export tests: tiny detectors of every family, and the bundled demo model."""
from __future__ import annotations

import pytest
import torch

import zoo

#: small widths so that every family exports in seconds; structure (levels, layers, heads) is kept
TINY_RTDETR = dict(encoder={"hidden_dim": 32, "dim_feedforward": 64, "num_heads": 2},
                   decoder={"hidden_dim": 32, "dim_feedforward": 64, "num_heads": 2, "num_queries": 30,
                            "num_decoder_layers": 2, "eval_idx": -1})
TINY_DETR = dict(hidden_dim=32, num_queries=20, encoder={"num_encoder_layers": 1, "dim_feedforward": 64, "nhead": 2},
                 decoder={"num_decoder_layers": 2, "dim_feedforward": 64, "nhead": 2})

DEMO = "rtdetr_mobilenetv3_small.shapes_demo"


def tiny_model(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A registered detector with random weights at a tiny width (eval mode)."""
    torch.manual_seed(seed)
    args = TINY_DETR if name.startswith("detr_") else TINY_RTDETR
    return zoo.create_model(name, **args, **overrides).eval()


@pytest.fixture(scope="session")
def demo_model():
    return zoo.create_model(DEMO).eval()


@pytest.fixture(scope="session")
def demo_onnx(demo_model, tmp_path_factory):
    """The demo model exported once with a dynamic batch and size."""
    path = tmp_path_factory.mktemp("demo") / "demo.onnx"
    return zoo.export(demo_model, path, dynamic_batch=True, dynamic_size=True)
