"""The README as a new user meets it (issue 21 item 23): its first Python block runs as written, offline, in an
empty folder with empty caches (tests/test_docs.py runs every block too, but provides the images and weights they
name); and weights that are not cached and cannot be downloaded end in the clear WeightsNotCachedError alone, not
behind a chained traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


MISSING = """
import os, sys, traceback
import zoo

for offline in ("1", ""):  # offline mode, then an endpoint where nothing answers
    os.environ["HF_HUB_OFFLINE"] = offline
    try:
        zoo.create_model("rtdetr_r18vd", pretrained=True)
    except Exception:
        traceback.print_exc()  # what the interpreter prints for an uncaught error, chain included
    print("=====", file=sys.stderr)
"""


def test_missing_weights_end_in_the_clear_error_alone(tmp_path):
    env = {**_offline_env(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9"}  # the discard port
    done = subprocess.run([sys.executable, "-c", MISSING], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    reports = done.stderr.split("=====")[:2]
    assert len(reports) == 2, done.stderr
    for report in reports:
        assert "WeightsNotCachedError" in report.strip().splitlines()[-1], report
        assert "During handling of the above exception" not in report
        assert "direct cause of the following exception" not in report
        assert len(report.strip().splitlines()) < 20, report
    assert "offline mode (HF_HUB_OFFLINE) is on" in reports[0] and "could not be reached" in reports[1]
