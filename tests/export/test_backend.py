"""The onnxruntime backend: predict, COCO evaluation and the commands give what the torch backend gives."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import zoo
from zoo.cli import main
from zoo.data.synthetic import make_synthetic_coco
from zoo.export import OnnxRuntimeDetector, onnxruntime_session
from zoo.export.runtime import model_fingerprint

from export_setup import DEMO, tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")

DEMO_IMAGE = "zoo/assets/shapes_demo.png"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """12 synthetic shape images at 120x120 (resized to the demo's 96x96) with COCO annotations."""
    root = tmp_path_factory.mktemp("shapes")
    return make_synthetic_coco(root, "val", 12, seed=3, image_size=120), root / "val"


def test_predict_matches_torch(demo_model, demo_onnx):
    expected = demo_model.predict([DEMO_IMAGE, DEMO_IMAGE], score_threshold=0.3)
    got = OnnxRuntimeDetector(demo_onnx).predict([DEMO_IMAGE, DEMO_IMAGE], score_threshold=0.3)
    for e, g in zip(expected, got):
        assert len(e) == len(g) >= 4 and g.label_names == e.label_names
        torch.testing.assert_close(g.boxes, e.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(g.scores, e.scores, atol=1e-5, rtol=0)


def test_coco_evaluation_gives_the_same_ap(demo_model, demo_onnx, shapes):
    ann, images = shapes
    expected = zoo.evaluate(demo_model, ann, images, num_workers=0, progress=False, verbose=False)
    got = zoo.evaluate(OnnxRuntimeDetector(demo_onnx), ann, images, num_workers=0, progress=False, verbose=False)
    assert expected.metrics["AP"] > 0.3
    for name, value in expected.metrics.items():
        assert got.metrics[name] == pytest.approx(value, abs=1e-6), name


def test_commands_export_once_to_the_cache(shapes, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    ann, images = shapes
    eval_args = ["eval", DEMO, "--ann", str(ann), "--images", str(images), "--workers", "0"]
    assert main([*eval_args, "--out", str(tmp_path / "torch")]) == 0
    assert main([*eval_args, "--backend", "onnxruntime", "--out", str(tmp_path / "ort")]) == 0
    cached = list((tmp_path / "cache" / "onnx").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("rtdetr_mobilenetv3_small-")
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text())["metrics"] for run in ("torch", "ort")]
    assert metrics[1] == pytest.approx(metrics[0], abs=1e-6)
    stamp = cached[0].stat().st_mtime_ns
    capsys.readouterr()
    assert main(["predict", DEMO, DEMO_IMAGE, "--backend", "onnxruntime", "--threshold", "0.7",
                 "--out", str(tmp_path / "pred")]) == 0
    assert "4 detections (2 circle, 1 triangle, 1 square)" in capsys.readouterr().out
    assert cached[0].stat().st_mtime_ns == stamp and len(list(cached[0].parent.iterdir())) == 1  # reused
    assert main(["benchmark", str(cached[0]), "--backend", "onnxruntime", "--iters", "2", "--warmup", "1",
                 "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert result["model"] == str(cached[0]) and result["input_size"] == [96, 96] and result["median_ms"] > 0
    # beside the numbers, the state of the machine they were measured on (issue 23 item 6)
    machine = result["machine"]
    assert len(machine["load_average"]) == 3 and machine["conv_peak_gflops"] > 0
    assert machine["busy"] == (machine["load_average"][0] > 1.5)
    assert main(["predict", str(cached[0]), DEMO_IMAGE, "--backend", "onnxruntime", "--weights", "x",
                 "--out", str(tmp_path / "p2")]) == 1
    assert "drop --weights" in capsys.readouterr().err


def test_session_for_a_model_is_cached_by_weights(demo_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    session = onnxruntime_session(demo_model, threads=1)
    assert [o.name for o in session.get_outputs()] == ["pred_logits", "pred_boxes"]
    cached = list((tmp_path / "onnx").iterdir())
    stamp = cached[0].stat().st_mtime_ns
    onnxruntime_session(DEMO)  # the same weights by name: the same entry, not exported again
    assert list((tmp_path / "onnx").iterdir()) == cached and cached[0].stat().st_mtime_ns == stamp
    options = dict(dynamic_batch=True, dynamic_size=True, postprocess=False, half=False, opset=None)
    changed = copy.deepcopy(demo_model)
    with torch.no_grad():
        changed.decoder.dec_score_head[-1].bias[0] += 1e-3
    fingerprints = {model_fingerprint(m, o) for m, o in [(demo_model, options), (changed, options),
                                                          (demo_model, {**options, "half": True})]}
    assert len(fingerprints) == 3  # other weights or options: another entry


def test_fixed_size_exports(tmp_path):
    model = tiny_model("rtdetr_r18vd")
    fixed = OnnxRuntimeDetector(zoo.export(model, tmp_path / "fixed.onnx", input_size=(64, 96), verify=False))
    assert fixed.pretrained_cfg["input_size"] == (3, 64, 96)  # predict resizes to the size the file takes
    assert len(fixed.predict([DEMO_IMAGE] * 3, score_threshold=0)) == 3  # batch 1 file: one image at a time
    with pytest.raises(ValueError, match="takes 64x96 inputs only, got 64x64; export it with dynamic_size=True"):
        fixed.predict(DEMO_IMAGE, input_size=64)
    detr = zoo.export(tiny_model("detr_resnet50"), tmp_path / "detr.onnx", input_size=64, verify=False)
    with pytest.raises(ValueError, match="keeps each image's aspect ratio; export it with dynamic_size=True"):
        OnnxRuntimeDetector(detr)
    post = zoo.export(model, tmp_path / "post.onnx", input_size=64, postprocess=True, verify=False)
    with pytest.raises(ValueError, match="postprocess=True .* needs the raw graph"):
        OnnxRuntimeDetector(post)


def test_an_onnx_name_runs_in_onnxruntime_without_backend(demo_model, demo_onnx, tmp_path, capsys):
    """Issue 21 item 18: ``zoo predict shapes_demo.onnx img`` said "unknown model 'shapes_demo'"."""
    out = tmp_path / "out"
    assert main(["predict", str(demo_onnx), DEMO_IMAGE, "--threshold", "0.3", "--out", str(out), "--no-draw"]) == 0
    got = json.loads((out / "detections.json").read_text())["images"][0]
    expected = demo_model.predict(DEMO_IMAGE, score_threshold=0.3)
    assert len(got["boxes"]) == len(expected) >= 4
    torch.testing.assert_close(torch.tensor(got["boxes"]), expected.boxes, atol=1e-3, rtol=0)
    assert main(["predict", str(demo_onnx), DEMO_IMAGE, "--backend", "torch", "--out", str(out)]) == 1
    assert "runs with --backend onnxruntime" in capsys.readouterr().err


def test_sessions_do_not_spin_between_runs(demo_onnx):
    """onnxruntime's threads busy-wait after a run by default, taking the cores from the torch work that follows
    (measured: the next model 23% slower); zoo's sessions turn that off."""
    from zoo.export.session import open_session

    options = open_session(demo_onnx, threads=1).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
