"""Fine-tuning from registry weights on a dataset with other classes: ``zoo train NAME --weights TAG`` builds the
model through the weight registry's head adaptation (classes found by name keep their pretrained rows).

The weights are the bundled demo (rtdetr_mobilenetv3_small.shapes_demo: circle, square, triangle), so no network is
needed; the datasets are subsets of the synthetic shapes with the categories renumbered and reordered."""
import json
from pathlib import Path

import pytest
import torch

import zoo
from zoo.data.synthetic import make_synthetic_coco
from zoo.engine.evaluate import evaluate
from zoo.engine.trainer import TrainConfig, Trainer
from zoo.weights.manifest import load_manifest

DEMO = "rtdetr_mobilenetv3_small.shapes_demo"
CLASS_HEADS = ("decoder.enc_score_head.", "decoder.dec_score_head.", "decoder.denoising_class_embed.")


def _relabel(ann_file: Path, out: Path, names: dict[str, str]) -> Path:
    """Keep the categories named in ``names`` (old -> new name), numbered 1.. in the order given."""
    data = json.loads(ann_file.read_text())
    old_ids = {c["name"]: c["id"] for c in data["categories"]}
    new_ids = {old_ids[old]: i + 1 for i, old in enumerate(names)}
    data["categories"] = [{"id": i + 1, "name": new, "supercategory": "shape"} for i, new in enumerate(names.values())]
    data["annotations"] = [{**a, "category_id": new_ids[a["category_id"]]} for a in data["annotations"]
                           if a["category_id"] in new_ids]
    out.write_text(json.dumps(data))
    return out


@pytest.fixture(scope="module")
def shapes(tmp_path_factory, single_thread):
    if not load_manifest().entries[DEMO].package.local_path().is_file():
        pytest.skip("demo weights not bundled")
    root = tmp_path_factory.mktemp("finetune")
    return {"train": make_synthetic_coco(root, "train", 8, seed=0, image_size=96),
            "val": make_synthetic_coco(root, "val", 50, seed=1, image_size=96), "root": root}


@pytest.fixture(scope="module")
def demo(shapes):
    return zoo.create_model(DEMO, pretrained=True).eval()


def _config(shapes, ann: Path, out: Path, **overrides) -> TrainConfig:
    args = dict(model="rtdetr_mobilenetv3_small", weights="shapes_demo", train_ann=str(ann),
                train_images=str(shapes["root"] / "train"), output_dir=str(out), epochs=1, batch_size=4, lr=1e-4,
                warmup_steps=1, num_workers=0, progress=False, eval_every=0, augment=False, multiscale=False)
    return TrainConfig(**{**args, **overrides})


def test_known_classes_keep_their_rows_and_still_detect(shapes, demo, tmp_path):
    """A reordered subset (triangle, square): the model starts as the demo restricted to those classes, so it
    detects them before any training step (held-out AP close to the demo's), and every other tensor is unchanged."""
    ann = _relabel(shapes["train"], tmp_path / "train.json", {"triangle": "triangle", "square": "square"})
    trainer = Trainer(_config(shapes, ann, tmp_path / "run"))
    model, report = trainer.model, trainer.model.load_report
    assert model.num_classes == 2 and report.weights == DEMO
    assert "2 of 2 classes keep their pretrained rows, 0 are new" in report.notes[-1]
    rows = torch.tensor([2, 1])  # triangle, square in the demo's (circle, square, triangle)
    ours, theirs = model.state_dict(), demo.state_dict()
    for key, value in ours.items():
        if key.startswith(CLASS_HEADS):
            expected = theirs[key][rows] if "denoising" not in key else theirs[key][[2, 1, 3]]  # + padding row
            assert torch.equal(value[: len(expected)], expected), key
        else:
            assert torch.equal(value, theirs[key]), key
    val = _relabel(shapes["val"], tmp_path / "val.json", {"triangle": "triangle", "square": "square"})
    before = evaluate(trainer.eval_model, val, shapes["root"] / "val", num_workers=0, progress=False,
                      verbose=False).metrics["AP"]
    assert before > 0.5, before  # the demo's AP over all three classes is 0.633

    trainer.fit()  # two steps on the new label set
    assert trainer.global_step == 2
    assert any(not torch.equal(v, theirs[k]) for k, v in trainer.model.state_dict().items() if v.is_floating_point())
    final = trainer.out / "final"
    config = json.loads((final / "config.json").read_text())
    assert config["label_names"] == ["triangle", "square"]
    assert config["pretrained_cfg"]["base_weights"] == DEMO
    assert f"fine-tuned or adapted from `{DEMO}`" in (final / "README.md").read_text()


def test_new_classes_start_from_the_prior_and_the_cli_says_so(shapes, demo, tmp_path, capsys):
    """Names the weights do not know: class heads re-initialised (bias = focal prior), the rest pretrained."""
    from zoo.cli import main
    from zoo.layers.init import prior_prob_bias

    data = tmp_path / "data"
    data.mkdir()
    _relabel(shapes["train"], data / "train.json", {"circle": "ball", "square": "box"})
    (data / "train").symlink_to(shapes["root"] / "train")
    assert main(["train", "rtdetr_mobilenetv3_small", "--weights", "shapes_demo", "--data", str(data),
                 "--output", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--workers", "0",
                 "--no-progress", "--no-augment", "--no-multiscale", "--warmup-steps", "1", "--ema-decay", "0"]) == 0
    out = capsys.readouterr().out
    assert f"fine-tuning from {DEMO}" in out and "0 of 2 classes keep their pretrained rows, 2 are new" in out
    tuned = zoo.create_model(f"local-dir:{tmp_path / 'run' / 'final'}")
    assert tuned.pretrained_cfg["label_names"] == ["ball", "box"] and tuned.num_classes == 2
    assert tuned.pretrained_cfg["base_weights"] == DEMO

    trainer = Trainer(_config(shapes, data / "train.json", tmp_path / "fresh"))  # the same start, not trained
    fresh = trainer.model
    assert sorted(fresh.load_report.reinitialized) == sorted(
        k for k in fresh.state_dict() if k.startswith(CLASS_HEADS))
    assert torch.allclose(fresh.decoder.enc_score_head.bias, torch.full((2,), prior_prob_bias(0.01)))
    theirs = demo.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in fresh.state_dict().items() if not k.startswith(CLASS_HEADS))
