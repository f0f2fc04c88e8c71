"""Shared pieces of the export tests: tiny detectors of every family and the bundled demo model's name. A helper
module rather than conftest.py, whose name other test folders' conftest files share: ``from conftest import``
found the wrong one when several folders ran in one pytest call."""
from __future__ import annotations

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
