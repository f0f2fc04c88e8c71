"""Which weights the inference commands use when none are named (never silent random weights), the score
threshold the CLI and the API share, and ``zoo eval --label-map``."""
from __future__ import annotations

import json

import pytest

import zoo
from zoo.cli import main
from zoo.data.synthetic import make_synthetic_coco

DEMO = "rtdetr_mobilenetv3_small.shapes_demo"  # bundled weights: no network
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Two 96-pixel synthetic images (circle/square/triangle) and their COCO annotation file."""
    root = tmp_path_factory.mktemp("shapes")
    return make_synthetic_coco(root, "val", 2, seed=3, image_size=96), root / "val"


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ZOO_WEIGHTS_MANIFEST", raising=False)


def test_predict_without_weights_uses_the_default_weights(shapes, tmp_path, offline_empty_cache, capsys):
    """rtdetr_r18vd has default weights: they are used (here: offline with an empty cache, the clear error)."""
    image = next(shapes[1].iterdir())
    assert main(["predict", "rtdetr_r18vd", str(image), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "default weights rtdetr_r18vd.coco" in err and "is not in the cache" in err, err
    assert not (tmp_path / "out").exists()
    assert main(["eval", "rtdetr_r18vd", "--ann", str(shapes[0]), "--images", str(shapes[1])]) == 1
    assert "is not in the cache" in capsys.readouterr().err


def test_model_without_weights_is_refused_unless_random_weights(shapes, tmp_path, capsys):
    image = str(next(shapes[1].iterdir()))
    out = tmp_path / "out"
    assert main(["predict", "rtdetr_mobilenetv3_small", image, "--out", str(out), "--size", "160"]) == 1
    err = capsys.readouterr().err
    assert "rtdetr_mobilenetv3_small has no default pretrained weights" in err and "--random-weights" in err
    assert not out.exists()
    assert main(["predict", "rtdetr_mobilenetv3_small", image, "--out", str(out), "--size", "160",
                 "--random-weights", "--threshold", "0"]) == 0
    assert json.loads((out / "detections.json").read_text())["images"][0]["source"] == image
    # usage error: --random-weights and --weights together
    with pytest.raises(SystemExit) as info:
        main(["predict", "rtdetr_r18vd", image, "--random-weights", "--weights", "coco"])
    assert info.value.code == 2


def test_benchmark_keeps_random_weights_and_says_so(capsys):
    assert main(["benchmark", "rtdetr_mobilenetv3_small", "--size", "160", "--iters", "1", "--warmup", "0",
                 "--device", "cpu"]) == 0
    assert "weights  random" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["-1", "2.0", "nan", "high"])
def test_cli_threshold_is_the_api_check(text, capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", DEMO, "x.png", "--threshold", text])
    assert info.value.code == 2 and "expected a number in [0, 1]" in capsys.readouterr().err


def test_eval_label_map(shapes, tmp_path, capsys):
    """Annotations with two of the demo's three classes (ids 2 and 3): the mismatch names --label-map, which then works and
    gives the numbers of the Python API with the same map."""
    ann, images = shapes
    data = json.loads(ann.read_text())
    data["categories"] = [c for c in data["categories"] if c["name"] != "circle"]
    kept = {c["id"] for c in data["categories"]}
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] in kept]
    two = tmp_path / "two.json"
    two.write_text(json.dumps(data))
    args = ["eval", DEMO, "--ann", str(two), "--images", str(images), "--workers", "0", "--device", "cpu"]
    assert main(args) == 1
    assert "zoo eval --label-map" in capsys.readouterr().err
    label_map = {1: 2, 2: 3}  # square -> 2, triangle -> 3; circle has no category
    (tmp_path / "map.json").write_text(json.dumps(label_map))
    for given in (json.dumps(label_map), str(tmp_path / "map.json")):
        assert main([*args, "--label-map", given, "--out", str(tmp_path / "eval")]) == 0
        metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
        expected = zoo.evaluate(zoo.create_model(DEMO), two, images, num_workers=0, label_map=label_map,
                                progress=False, verbose=False).metrics
        assert metrics == pytest.approx(expected, abs=1e-12)
    with pytest.raises(SystemExit):
        main([*args, "--label-map", "[1, 'x']"])
