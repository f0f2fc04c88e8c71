"""Shared test fixtures, and the test helper modules (local Hub servers, transformers references, tiny trainer
setups) made importable by name from every test folder."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

_HERE = Path(__file__).resolve().parent
for _helpers in ("weights", "models/rtdetr", "models/detr", "models/dfine", "engine"):
    sys.path.insert(0, str(_HERE / _helpers))


@pytest.fixture(autouse=True, scope="session")
def _zoo_cache(tmp_path_factory):
    """A zoo cache (lock file, remembered hashes) of the test session's own, never the user's ~/.cache/zoo."""
    patch = pytest.MonkeyPatch()
    patch.setenv("ZOO_CACHE", str(tmp_path_factory.mktemp("zoo-cache")))
    yield
    patch.undo()


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for modules of many small CPU workloads: steadier and faster on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
