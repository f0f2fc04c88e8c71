"""docs/architecture.md's "Adding a family" example works as written: a new detector in its own module, registered
by importing it, predicts, trains with the family-agnostic trainer, evaluates, saves and reloads with other classes.

It runs in a subprocess so that the example's registration does not leak into the other tests' registry."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

CHECK = textwrap.dedent('''
    import json, sys
    import torch
    import tiny_model  # the "one import line"
    import zoo
    from zoo.data.synthetic import make_synthetic_coco
    from zoo.engine.trainer import TrainConfig, Trainer

    root = sys.argv[1]
    assert "tiny_detector" in zoo.list_models("tiny*")
    model = zoo.create_model("tiny_detector")
    found = model.predict(torch.zeros(3, 40, 50, dtype=torch.uint8), score_threshold=0.0)
    assert found.boxes.shape == (5, 4) and found.image_size == (40, 50)

    train = make_synthetic_coco(root, "train", 8, seed=0, image_size=64)
    val = make_synthetic_coco(root, "val", 4, seed=1, image_size=64)
    config = TrainConfig(model="tiny_detector", train_ann=str(train), train_images=root + "/train",
                         val_ann=str(val), val_images=root + "/val", output_dir=root + "/run", epochs=2,
                         batch_size=4, lr=1e-2, warmup_steps=1, num_workers=0, progress=False, ema_decay=0.0)
    trainer = Trainer(config)
    first = trainer.train_step(*next(iter(trainer._loader(0))))
    metrics = trainer.fit()
    assert "AP" in metrics, metrics
    records = [json.loads(line) for line in open(root + "/run/metrics.jsonl")]
    assert records[-1]["train_loss"] < first["loss"], (first, records[-1])

    two = zoo.create_model("local-dir:" + root + "/run/final", num_classes=2)
    assert two.class_head.out_features == 3  # 2 classes + no-object
    assert sorted(two.load_report.reinitialized) == ["class_head.bias", "class_head.weight"]

    # the declared layout: a checkpoint of the old version loads, converted
    old = {k.replace("class_head.", "cls.", 1): v for k, v in model.state_dict().items()}
    torch.save({"model": old}, root + "/old.pth")
    again = zoo.create_model("tiny_detector", checkpoint_path=root + "/old.pth")
    assert again.load_report.format == "tiny-v0"
    assert torch.equal(again.class_head.weight, model.class_head.weight)

    # the registered family: the export runtime finds its class (and its postprocessing) by name
    from zoo.export.runtime import _family_class
    assert _family_class("tiny") is type(model)
    print("example ok")
''')


def _example_module() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Adding a family"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_adding_a_family_example_runs(tmp_path):
    (tmp_path / "tiny_model.py").write_text(_example_module())
    (tmp_path / "check.py").write_text(CHECK)
    proc = subprocess.run([sys.executable, str(tmp_path / "check.py"), str(tmp_path / "data")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{Path.cwd()}"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "example ok" in proc.stdout


def test_every_module_is_named():
    """The page names every module of the package (`name` or name.py) and every family folder (`name/`)."""
    text = DOC.read_text(encoding="utf-8")
    package = DOC.parents[1] / "zoo"
    missing = [str(path.relative_to(package)) for path in sorted(package.rglob("*.py"))
               if path.stem not in ("__init__", "__main__") and f"`{path.stem}`" not in text
               and f"{path.stem}.py" not in text]
    missing += [f"{path.parent.name}/" for path in package.glob("models/*/__init__.py")
                if f"`{path.parent.name}/`" not in text]
    assert not missing, f"docs/architecture.md does not name: {', '.join(missing)}"
