"""Fixtures of the export tests (the shared constants and tiny models are in export_setup.py)."""
from __future__ import annotations

import pytest

import zoo
from export_setup import DEMO

@pytest.fixture(scope="session")
def demo_model():
    return zoo.create_model(DEMO).eval()


@pytest.fixture(scope="session")
def demo_onnx(demo_model, tmp_path_factory):
    """The demo model exported once with a dynamic batch and size."""
    path = tmp_path_factory.mktemp("demo") / "demo.onnx"
    return zoo.export(demo_model, path, dynamic_batch=True, dynamic_size=True)
