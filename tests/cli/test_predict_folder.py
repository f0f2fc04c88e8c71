"""``zoo predict`` on a folder with bad files: every good image is processed and written, each bad file is reported
by name with its reason, the exit code is 1; sub-folders are read with --recursive, else reported as skipped."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import zoo
from zoo.cli import main

DEMO = "rtdetr_mobilenetv3_small.shapes_demo"
IMAGE = Path(zoo.__file__).resolve().parent / "assets" / "shapes_demo.png"
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    shutil.copy(IMAGE, root / "a.png")
    shutil.copy(IMAGE, root / "c.png")
    shutil.copy(IMAGE, root / "sub" / "d.png")
    (root / "b.jpg").write_bytes(b"not an image at all")
    (root / "e.png").write_bytes(IMAGE.read_bytes()[:200])  # truncated
    return root


def test_bad_files_do_not_sink_the_folder(folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", DEMO, str(folder), "--out", str(out), "--batch-size", "2", "--threshold", "0.3"])
    captured = capsys.readouterr()
    assert code == 1
    written = json.loads((out / "detections.json").read_text())
    assert [r["source"] for r in written["images"]] == [str(folder / "a.png"), str(folder / "c.png")]
    assert [f["source"] for f in written["failed"]] == [str(folder / "b.jpg"), str(folder / "e.png")]
    assert sorted(p.name for p in out.glob("*.jpg")) == ["a.jpg", "c.jpg"]
    assert "2 of 4 images could not be read" in captured.err
    for name in ("b.jpg", "e.png"):
        assert f"{folder / name}: cannot read image" in captured.err
    assert "skipped 1 sub-folder(s) (sub)" in captured.err
    reference = zoo.create_model(DEMO).predict(str(folder / "a.png"), score_threshold=0.3)
    torch.testing.assert_close(torch.tensor(written["images"][0]["scores"]), reference.scores, atol=1e-5, rtol=0)


def test_recursive_reads_sub_folders(folder, tmp_path, capsys):
    for bad in ("b.jpg", "e.png"):
        (folder / bad).unlink()
    out = tmp_path / "out"
    assert main(["predict", DEMO, str(folder), "--out", str(out), "--recursive", "--no-draw"]) == 0
    sources = [r["source"] for r in json.loads((out / "detections.json").read_text())["images"]]
    assert sources == [str(folder / "a.png"), str(folder / "c.png"), str(folder / "sub" / "d.png")]
    assert "skipped" not in capsys.readouterr().err
