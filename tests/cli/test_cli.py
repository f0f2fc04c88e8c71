"""The ``zoo`` command line: --help everywhere, exit codes (0 ok, 1 error, 2 usage), and what predict, eval and
benchmark write, checked against the Python API on the same checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.cli import main
from zoo.cli.benchmark import latency_stats

COCO = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco_tiny"
IMAGE = COCO / "val2017" / "000000532481.jpg"
SIZE = "160"  # small input size: the commands run in seconds


pytestmark = pytest.mark.usefixtures("single_thread")


def _need_coco():
    if not IMAGE.is_file():
        pytest.skip(f"real COCO images not found under {COCO} (../shared/data/coco_tiny)")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(a zoo rtdetr_r18vd with random weights, its checkpoint as safetensors)."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = zoo.create_model("rtdetr_r18vd").eval()
    path = tmp_path_factory.mktemp("ckpt") / "rtdetr_r18vd.safetensors"
    save_file(model.state_dict(), str(path))
    return model, path


@pytest.mark.parametrize("command", [[], ["list"], ["info"], ["predict"], ["eval"], ["benchmark"]],
                         ids=lambda c: " ".join(c) or "zoo")
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: zoo {' '.join(command)}".rstrip())


@pytest.mark.parametrize("argv", [
    ["predict"],
    ["predict", "rtdetr_r18vd", "x.jpg", "--threshold", "1.5"],
    ["predict", "rtdetr_r18vd", "x.jpg", "--threshold", "high"],
    ["predict", "rtdetr_r18vd", "x.jpg", "--weights", "a", "--checkpoint", "b"],
    ["predict", "rtdetr_r18vd", "x.jpg", "--size", "0"],
    ["predict", "rtdetr_r18vd", "rtsp://cam/1", "--timeout", "0"],
    ["predict", "rtdetr_r18vd", "rtsp://cam/1", "--timeout", "soon"],
    ["eval", "rtdetr_r18vd", "--images", "dir"],
    ["eval", "rtdetr_r18vd", "--ann", "a.json", "--images", "dir", "--workers", "-1"],
    ["benchmark", "rtdetr_r18vd", "--batch-size", "0"],
    ["benchmark", "rtdetr_r18vd", "--iters", "many"],
    ["no-such-command"],
], ids=lambda a: " ".join(a))
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: zoo" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2 and "usage: zoo" in capsys.readouterr().out


def test_errors_exit_1_with_a_message(tmp_path, capsys):
    assert main(["predict", "rtdetr_r18vd", str(tmp_path / "missing.jpg")]) == 1
    assert "image not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", "rtdetr_r18vd", str(tmp_path / "empty")]) == 1
    assert "no images" in capsys.readouterr().err
    assert main(["predict", "rtdetr_r18vd", str(tmp_path / "empty"), "--device", "cuda:7"]) == 1
    assert main(["benchmark", "no_such_model"]) == 1
    err = capsys.readouterr().err
    assert "no_such_model" in err and "Traceback" not in err


def test_python_m_zoo_exit_code(tmp_path):
    """A real process: the exit code and the one-line message a script sees."""
    done = subprocess.run([sys.executable, "-m", "zoo", "predict", "rtdetr_r18vd", str(tmp_path / "nope.png")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == f"zoo predict: error: image not found: {tmp_path / 'nope.png'}"


def test_weights_maps_to_create_model(monkeypatch, capsys):
    import zoo.factory

    calls = []

    def fake_create_model(name, **kwargs):
        calls.append((name, kwargs))
        raise ValueError("stop here")

    monkeypatch.setattr(zoo.factory, "create_model", fake_create_model)
    assert main(["benchmark", "rtdetr_r18vd", "--weights", "coco_o365"]) == 1
    assert main(["benchmark", "rtdetr_r18vd", "--weights", "default"]) == 1
    assert main(["eval", "rtdetr_r18vd", "--ann", "a.json", "--images", "d", "--checkpoint", "c.pth"]) == 1
    assert calls == [("rtdetr_r18vd", {"pretrained": "coco_o365", "checkpoint_path": None}),
                     ("rtdetr_r18vd", {"pretrained": True, "checkpoint_path": None}),
                     ("rtdetr_r18vd", {"pretrained": False, "checkpoint_path": "c.pth"})]
    assert capsys.readouterr().err.count("stop here") == 3


def test_predict_writes_annotated_images_and_json(saved, tmp_path, capsys):
    _need_coco()
    model, checkpoint = saved
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.fromarray(np.full((90, 120, 3), 200, np.uint8)).save(folder / "flat.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    code = main(["predict", "rtdetr_r18vd", str(IMAGE), str(folder), str(IMAGE), "--checkpoint", str(checkpoint),
                 "--out", str(out), "--threshold", "0", "--top-k", "7", "--size", SIZE, "--device", "cpu"])
    assert code == 0
    assert "7 detections" in capsys.readouterr().out
    written = json.loads((out / "detections.json").read_text())
    assert written["model"] == "rtdetr_r18vd" and written["threshold"] == 0.0
    records = written["images"]
    assert [r["source"] for r in records] == [str(IMAGE), str(folder / "flat.png"), str(IMAGE)]
    assert [Path(r["annotated"]).name for r in records] == ["000000532481.jpg", "flat.jpg", "000000532481_1.jpg"]
    for record in records:
        h, w = record["image_size"]
        assert Image.open(record["annotated"]).size == (w, h) and len(record["boxes"]) == 7
    reference = model.predict(str(IMAGE), score_threshold=0.0, top_k=7, input_size=int(SIZE))
    torch.testing.assert_close(torch.tensor(records[0]["scores"]), reference.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(records[0]["boxes"]), reference.boxes, atol=1e-2, rtol=0)
    assert records[0]["label_names"] == reference.label_names


def test_eval_writes_metrics_and_detections(saved, tmp_path, capsys):
    _need_coco()
    checkpoint = saved[1]
    with open(COCO / "annotations" / "instances_val2017.json") as f:
        dataset = json.load(f)
    images = [im for im in dataset["images"] if im["file_name"] == IMAGE.name]
    subset = dict(dataset, images=images, annotations=[a for a in dataset["annotations"]
                                                       if a["image_id"] == images[0]["id"]])
    ann = tmp_path / "one.json"
    ann.write_text(json.dumps(subset))
    out = tmp_path / "eval"
    code = main(["eval", "rtdetr_r18vd", "--ann", str(ann), "--images", str(COCO / "val2017"), "--checkpoint",
                 str(checkpoint), "--size", SIZE, "--workers", "0", "--out", str(out), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("Average Precision") == 6 and printed.count("Average Recall") == 6
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert len(metrics) == 12 and "AP" in metrics
    assert len(json.loads((out / "detections.json").read_text())) == 300


def test_benchmark_json(saved, capsys):
    code = main(["benchmark", "rtdetr_r18vd", "--checkpoint", str(saved[1]), "--size", SIZE, "--warmup", "1",
                 "--iters", "3", "--threads", "1", "--device", "cpu", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["input_size"] == [160, 160] and result["deploy"] is True and result["iters"] == 3
    assert 0 < result["median_ms"] <= result["p90_ms"]
    assert result["images_per_s"] == pytest.approx(1000 / result["median_ms"])
    assert result["peak_memory_mib"] > 0


def test_latency_stats():
    stats = latency_stats([i / 1000 for i in range(10, 0, -1)], batch_size=4)  # 1..10 ms, unordered
    assert stats["median_ms"] == pytest.approx(5.5) and stats["p90_ms"] == pytest.approx(9.0)
    assert stats["images_per_s"] == pytest.approx(4 / 0.0055)


DEMO = "rtdetr_mobilenetv3_small.shapes_demo"  # bundled weights: real detections, no network


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_predict_dtype_finds_the_demo_shapes(tmp_path, capsys, dtype):
    image = Path(zoo.__file__).parent / "assets" / "shapes_demo.png"
    code = main(["predict", DEMO, str(image), "--threshold", "0.7", "--out", str(tmp_path), "--dtype", dtype,
                 "--no-draw", "--device", "cpu"])
    assert code == 0
    assert "4 detections (2 circle, 1 triangle, 1 square)" in capsys.readouterr().out


def test_benchmark_dtype_and_bad_dtype(capsys):
    code = main(["benchmark", DEMO, "--dtype", "bf16", "--warmup", "0", "--iters", "1", "--device", "cpu", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dtype"] == "bf16" and result["compile"] is False and result["deploy"] is True
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", DEMO, "--dtype", "int8"])
    assert exit_info.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err


DEMO = "rtdetr_mobilenetv3_small.shapes_demo"
DEMO_IMAGE = Path(zoo.__file__).resolve().parent / "assets" / "shapes_demo.png"


def test_a_size_too_small_for_the_queries_is_a_usage_error_naming_the_smallest(tmp_path, capsys):
    """Issue 21 items 11 and 17: --size 3, or 96 with 300 queries, gave torch's "selected index k out of range"."""
    model = zoo.create_model("rtdetr_mobilenetv3_small").eval()
    with pytest.raises(RuntimeError, match="out of range"):  # what the check prevents, and that it is exact:
        model(torch.zeros(1, 3, 96, 96))
    model(torch.zeros(1, 3, 128, 128))  # the smallest size it names works
    assert main(["predict", "rtdetr_mobilenetv3_small", str(DEMO_IMAGE), "--random-weights", "--size", "96",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "189 anchors, fewer than its 300 queries" in err and "smallest square input size is 128" in err
    assert not (tmp_path / "o").exists()  # refused before anything is written
    assert main(["predict", DEMO, str(DEMO_IMAGE), "--size", "3", "--out", str(tmp_path / "o")]) == 2
    assert "smallest square input size is 64" in capsys.readouterr().err
    with pytest.raises(ValueError, match="smallest square input size is 128"):
        model.predict(str(DEMO_IMAGE), input_size=64)


def test_train_refuses_a_size_too_small_for_the_queries(tmp_path, capsys):
    from zoo.data.synthetic import make_synthetic_coco

    make_synthetic_coco(tmp_path / "data", "train", 2, seed=0, image_size=64)
    make_synthetic_coco(tmp_path / "data", "val", 1, seed=1, image_size=64)
    args = ["train", "rtdetr_mobilenetv3_small", "--data", str(tmp_path / "data"), "--epochs", "1",
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--no-progress"]
    assert main([*args, "--output", str(tmp_path / "a"), "--size", "96", "--no-multiscale"]) == 2
    assert "smallest square input size is 128" in capsys.readouterr().err
    assert main([*args, "--output", str(tmp_path / "b"), "--size", "128"]) == 2  # multi-scale goes down to 96
    assert "draws sizes down to 96" in capsys.readouterr().err


def test_a_path_as_model_name_is_named_as_such(tmp_path, capsys):
    """Issue 21 item 13: ``zoo predict ../../etc/passwd ...`` said "unknown model ''"."""
    (tmp_path / "passwd").write_text("root:x:0:0")
    assert main(["predict", str(tmp_path / "passwd"), str(DEMO_IMAGE)]) == 1
    assert f"NAME {tmp_path / 'passwd'} is a file, not a model name" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), str(DEMO_IMAGE)]) == 1
    assert f"a save_pretrained folder is local-dir:{tmp_path}" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"unknown model '\.\./\.\./etc/passwd': .* not a file path"):
        zoo.create_model("../../etc/passwd")


def test_random_weights_are_seeded(capsys):
    """Issue 21 item 19: unseeded random weights differed between torchrun ranks (and runs)."""
    from zoo.cli import build_parser
    from zoo.cli.predict import create_model_from_args

    args = build_parser().parse_args(["predict", "rtdetr_mobilenetv3_small", "x.png", "--random-weights"])
    torch.manual_seed(123)
    first = create_model_from_args(args).state_dict()
    state = torch.random.get_rng_state()
    second = create_model_from_args(args).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is left alone
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert "random weights, seed 0" in capsys.readouterr().err
