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
from zoo.engine.predict_files import LOCK_FILE, PARTS_DIR, output_names

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


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(root: Path, *names: str) -> Path:
    """``root`` holding the demo image under each name (a .jpg name gets a JPEG copy)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name.endswith(".jpg"):
            Image.open(IMAGE).save(root / name, quality=90)
        else:
            shutil.copy(IMAGE, root / name)
    return root


def test_out_holding_the_inputs_is_refused_and_nothing_is_overwritten(tmp_path, capsys):
    """Issue 21 item 1: ``--out`` equal to the input folder replaced d/photo.jpg by its annotated copy."""
    folder = _images(tmp_path / "d", "photo.jpg", "b.png")
    before = {p.name: _md5(p) for p in folder.iterdir()}
    assert main(["predict", DEMO, str(folder), "--out", str(folder)]) == 1
    assert "holds input images" in capsys.readouterr().err
    assert main(["predict", DEMO, str(folder / "photo.jpg"), "--out", str(folder)]) == 1  # an explicit file too
    assert {p.name: _md5(p) for p in folder.iterdir()} == before  # nothing written, nothing replaced
    assert main(["predict", DEMO, str(folder), "--out", str(folder), "--no-draw"]) == 0  # only detections.json
    assert {p.name: _md5(p) for p in folder.iterdir() if p.name in before} == before
    assert sorted(p.name for p in folder.iterdir()) == [".zoo-lock", "b.png", "detections.json", "photo.jpg"]


def test_output_names_are_unique():
    assert output_names(["d/a.png", "d/a.jpg", "d/a_1.png"]) == ["a.jpg", "a_1.jpg", "a_1_1.jpg"]
    assert output_names(["x/a.png", "y/a.png", "z/a.png", "a_1.png"]) == ["a.jpg", "a_1.jpg", "a_2.jpg", "a_1_1.jpg"]
    assert output_names(["A.png", "a.png"]) == ["A.jpg", "a_1.jpg"]  # case-insensitive file systems


def test_annotated_names_never_collide(tmp_path):
    """Issue 21 item 4: a.png, a.jpg and a_1.png wrote a_1.jpg twice (one annotated image lost)."""
    folder = _images(tmp_path / "d", "a.png", "a.jpg", "a_1.png")
    out = tmp_path / "o"
    paths = [str(folder / n) for n in ("a.png", "a.jpg", "a_1.png")]
    assert main(["predict", DEMO, *paths, "--out", str(out)]) == 0
    annotated = [r["annotated"] for r in json.loads((out / "detections.json").read_text())["images"]]
    assert len(set(annotated)) == 3 and all(Path(a).is_file() for a in annotated)
    assert sorted(p.name for p in out.glob("*.jpg")) == ["a.jpg", "a_1.jpg", "a_1_1.jpg"]


def test_a_partial_journal_line_is_cut_before_appending(tmp_path, monkeypatch):
    """Issue 21 item 3: a run stopped mid-line (full disk) left a partial last line; the rerun glued its first record
    onto it, lost it, and ended with "no result for 1 images"."""
    from zoo.engine import predict_files as module

    folder = _images(tmp_path / "d", "a.png", "b.png", "c.png")
    out = tmp_path / "o"
    args = ["predict", DEMO, str(folder), "--out", str(out), "--batch-size", "1"]

    def crash(*_):
        raise RuntimeError("killed before the merge")

    with monkeypatch.context() as patch:
        patch.setattr(module, "_merge", crash)
        with pytest.raises(RuntimeError, match="killed"):
            main(args)
    part = out / PARTS_DIR / "rank0.jsonl"
    lines = part.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    part.write_bytes(b"".join(lines[:2]) + lines[2][:40])  # the third record was half written
    assert main(args) == 0
    data = json.loads((out / "detections.json").read_text())
    assert [Path(r["source"]).name for r in data["images"]] == ["a.png", "b.png", "c.png"]


def test_a_plain_rerun_with_other_settings_sets_the_earlier_results_aside(tmp_path, capsys):
    """Issue 21 item 16: after the README's command (threshold 0.7), the same command without it exited 1."""
    out = tmp_path / "predictions"
    assert main(["predict", DEMO, str(IMAGE), "--threshold", "0.7", "--out", str(out)]) == 0
    first = json.loads((out / "detections.json").read_text())
    capsys.readouterr()
    assert main(["predict", DEMO, str(IMAGE), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "threshold 0.7 there, 0.5 now" in err and "earlier-run-1" in err
    assert json.loads((out / "detections.json").read_text())["threshold"] == 0.5
    kept = json.loads((out / "earlier-run-1" / "detections.json").read_text())
    assert kept["threshold"] == 0.7 and kept["images"][0]["boxes"] == first["images"][0]["boxes"]
    assert Path(kept["images"][0]["annotated"]) == out / "earlier-run-1" / "shapes_demo.jpg"
    assert (out / "earlier-run-1" / "shapes_demo.jpg").is_file() and (out / "shapes_demo.jpg").is_file()


def test_a_changed_input_is_done_again(tmp_path, capsys):
    """Issue 21 item 16: an input replaced by another image under the same name was skipped as already done."""
    from PIL import Image

    folder = _images(tmp_path / "d", "a.png", "b.png")
    out = tmp_path / "o"
    args = ["predict", DEMO, str(folder), "--out", str(out), "--threshold", "0.3"]
    assert main(args) == 0
    first = json.loads((out / "detections.json").read_text())["images"]
    Image.open(IMAGE).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "b.png")
    capsys.readouterr()
    assert main(args) == 0
    assert "1 of 2 images already done" in capsys.readouterr().out
    second = json.loads((out / "detections.json").read_text())["images"]
    assert second[0] == first[0]
    flipped = zoo.create_model(DEMO).predict(str(folder / "b.png"), score_threshold=0.3)
    assert second[1]["boxes"] != first[1]["boxes"]
    torch.testing.assert_close(torch.tensor(second[1]["boxes"]), flipped.boxes, atol=1e-3, rtol=0)


def test_a_run_that_stopped_before_its_first_image_does_not_block_the_folder(tmp_path):
    """Issue 21 item 11: a crashed run left only its settings; the next run was refused ("holds results of another
    run") though the folder held none."""
    out = tmp_path / "o"
    (out / PARTS_DIR).mkdir(parents=True)
    (out / PARTS_DIR / "settings.json").write_text(json.dumps({"model": DEMO, "input_size": 3}))
    (out / PARTS_DIR / "rank0.jsonl").write_text("")
    assert main(["predict", DEMO, str(IMAGE), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".zoo-lock", "detections.json", "shapes_demo.jpg"]


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, capsys):
    """Issue 21 item 13: two runs into one --out raced on .zoo-parts."""
    from filelock import FileLock

    out = tmp_path / "o"
    out.mkdir()
    with FileLock(str(out / LOCK_FILE)):  # as another process's run holds it
        assert main(["predict", DEMO, str(IMAGE), "--out", str(out)]) == 1
    assert "in use by another zoo predict" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    assert main(["predict", DEMO, str(IMAGE), "--out", str(out)]) == 0


def test_a_detections_json_zoo_did_not_write_is_never_replaced(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "detections.json").write_text('{"mine": [1, 2, 3]}')
    assert main(["predict", DEMO, str(IMAGE), "--out", str(out)]) == 1
    assert "is not a zoo predict result" in capsys.readouterr().err
    assert (out / "detections.json").read_text() == '{"mine": [1, 2, 3]}'
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "detections.json"]
