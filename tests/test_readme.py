"""The README as a new user meets it (issue 21 item 23): its first Python block runs as written, offline, in an
empty folder with empty caches (tests/test_docs.py runs every block too, but provides the images and weights they
name); and weights that are not cached and cannot be downloaded end in the clear WeightsNotCachedError alone, not
behind a chained traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_docs import python_blocks  # noqa: E402


def _offline_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HOME": str(tmp_path / "hf"),
            "ZOO_CACHE": str(tmp_path / "zoo"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_the_first_python_block_runs_offline_as_written(tmp_path):
    first = python_blocks(REPO / "README.md")[0]
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, "-c", first], cwd=work, env=_offline_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'circle'" in done.stdout and (work / "shapes_boxes.jpg").stat().st_size > 1000


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable endpoint"])
def test_missing_weights_end_in_the_clear_error_alone(tmp_path, offline):
    env = _offline_env(tmp_path)
    if not offline:
        env.pop("HF_HUB_OFFLINE")
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # the discard port: nothing answers
    code = "import zoo; zoo.create_model('rtdetr_r18vd', pretrained=True)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    assert "WeightsNotCachedError" in done.stderr.strip().splitlines()[-1]
    assert "During handling of the above exception" not in done.stderr
    assert "direct cause of the following exception" not in done.stderr
    assert len(done.stderr.splitlines()) < 40, done.stderr
