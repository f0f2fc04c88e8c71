"""Resuming as the README shows it (``zoo train NAME --data D --output O --resume O/last``) keeps the run's settings,
explicit flags override them (printed), changes the checkpoint cannot honour are errors; checkpoint writes are
atomic; metrics.jsonl holds each step once; every parameter group's learning rate is logged."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from trainer_setup import TINY_ARGS, make_data, tiny_config  # noqa: E402

from zoo.cli import main  # noqa: E402
from zoo.engine.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_data(root)  # 8 training images: fewer than the default batch of 16
    return root


def _train(data_dir: Path, out: Path, *extra: str) -> int:
    return main(["train", "rtdetr_mobilenetv3_small", "--data", str(data_dir), "--output", str(out), *extra])


SETTINGS = ["--batch-size", "4", "--warmup-steps", "2", "--lr", "1e-3", "--size", "64", "--workers", "0",
            "--model-args", json.dumps(TINY_ARGS), "--no-progress", "--ema-decay", "0.9", "--no-multiscale"]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_keeps_the_settings(data_dir, tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(data_dir, straight, *SETTINGS, "--epochs", "2") == 0
    assert _train(data_dir, resumed, *SETTINGS, "--epochs", "1") == 0
    with open(resumed / "metrics.jsonl", "a") as f:  # a step logged after the checkpoint, then the run was killed
        f.write(json.dumps({"epoch": 1, "step": 3, "lr": 1.0, "loss": 1.0}) + "\n")
    capsys.readouterr()
    # as the README shows it: only the data, the output and the checkpoint, plus the one setting to change
    assert _train(data_dir, resumed, "--resume", str(resumed / "last"), "--epochs", "2") == 0
    assert "except: epochs 1 -> 2" in capsys.readouterr().out
    config = json.loads((resumed / "config.json").read_text())
    assert (config["batch_size"], config["warmup_steps"], config["epochs"], config["input_size"]) == (4, 2, 2, 64)
    a, b = load_file(str(straight / "last" / "model.safetensors")), load_file(str(resumed / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _records(resumed)] == [r["step"] for r in _records(straight)] == [2, 4]  # per epoch
    assert not (resumed / "last.tmp").exists() and not (resumed / "last.old").exists()


def test_resume_refuses_what_it_cannot_honour(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(data_dir, out, *SETTINGS, "--epochs", "1") == 0
    other = json.dumps({**TINY_ARGS, "decoder": {**TINY_ARGS["decoder"], "num_queries": 12}})
    capsys.readouterr()
    assert _train(data_dir, out, "--resume", str(out / "last"), "--model-args", other) == 1
    assert "cannot resume" in capsys.readouterr().err
    assert _train(data_dir, out, "--resume", str(out / "last"), "--num-classes", "5") == 1
    assert "num_classes" in capsys.readouterr().err
    # a dataset with other classes
    data = json.loads((data_dir / "train.json").read_text())
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "train").symlink_to(data_dir / "train", target_is_directory=True)
    data["categories"] = [{**c, "name": c["name"] + "s"} for c in data["categories"]]
    (renamed / "train.json").write_text(json.dumps(data))
    assert _train(renamed, out, "--resume", str(out / "last")) == 1
    assert "other classes" in capsys.readouterr().err
    # a damaged checkpoint: one line naming the file
    weights = out / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert _train(data_dir, out, "--resume", str(out / "last")) == 1
    err = capsys.readouterr().err
    assert str(weights) in err and "Traceback" not in err


def test_checkpoint_writes_are_atomic(data_dir, tmp_path, monkeypatch):
    data = {"train_ann": str(data_dir / "train.json"), "train_images": str(data_dir / "train")}
    trainer = Trainer(tiny_config(data, tmp_path, epochs=1))
    trainer.fit()
    before = {p.name: p.read_bytes() for p in (tmp_path / "last").iterdir()}
    trainer.train_step(*next(iter(trainer._loader(1))))  # the weights change

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    assert {p.name: p.read_bytes() for p in (tmp_path / "last").iterdir()} == before
    monkeypatch.undo()
    resumed = Trainer(tiny_config(data, tmp_path, epochs=1), resume=tmp_path / "last")
    assert resumed.global_step == 2


def test_every_group_learning_rate_is_logged(data_dir, tmp_path):
    data = {"train_ann": str(data_dir / "train.json"), "train_images": str(data_dir / "train")}
    Trainer(tiny_config(data, tmp_path, epochs=1, backbone_lr_mult=0.1, warmup_steps=0)).fit()
    steps = [r for r in _records(tmp_path) if "loss" in r]
    assert steps and all(r["lr"] == pytest.approx(1e-3) and r["lr_backbone"] == pytest.approx(1e-4) for r in steps)


def test_an_output_folder_holding_a_run_is_refused(data_dir, tmp_path, capsys):
    """Issue 21 item 2: a second run into the same --output used to overwrite last/ and best.safetensors and append
    its epochs to metrics.jsonl; it needs --resume or --overwrite."""
    out = tmp_path / "run"
    assert _train(data_dir, out, *SETTINGS, "--epochs", "1") == 0
    before = {p: p.read_bytes() for p in [out / "metrics.jsonl", out / "best.safetensors", *(out / "last").iterdir()]}
    capsys.readouterr()
    assert _train(data_dir, out, *SETTINGS, "--epochs", "1") == 1
    err = capsys.readouterr().err
    assert "holds a run" in err and "--resume" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in before} == before  # nothing touched
    with pytest.raises(SystemExit) as info:  # both is a contradiction: a usage error
        _train(data_dir, out, *SETTINGS, "--overwrite", "--resume", str(out / "last"))
    assert info.value.code == 2
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text() + json.dumps({"epoch": 9, "step": 99}) + "\n")
    assert _train(data_dir, out, *SETTINGS, "--epochs", "1", "--overwrite") == 0
    assert [r["step"] for r in _records(out)] == [2]  # the new run's records only


def _epoch(trainer: Trainer) -> None:
    for images, targets in trainer._loader(trainer.epoch):
        trainer.train_step(images, targets)
    trainer.epoch += 1


@pytest.mark.parametrize("kill_at", [1, 2], ids=["before-last-to-old", "between-the-renames"])
def test_a_kill_while_rotating_checkpoints_resumes_from_the_newest(data_dir, tmp_path, monkeypatch, capsys, kill_at):
    """Issue 21 item 2: a kill between os.replace(last, last.old) and os.replace(last.tmp, last) left no last/;
    --resume said "not a checkpoint folder" and the next save deleted last.old/, the only complete one."""
    import os

    from zoo.engine.trainer import checkpoint_step, find_checkpoint

    data = {"train_ann": str(data_dir / "train.json"), "train_images": str(data_dir / "train")}
    trainer = Trainer(tiny_config(data, tmp_path, epochs=3))
    _epoch(trainer)
    trainer.save_checkpoint()
    _epoch(trainer)
    replace, calls = os.replace, []

    def killed(*args):
        calls.append(args)
        if len(calls) == kill_at:
            raise KeyboardInterrupt("killed while rotating")
        return replace(*args)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert (tmp_path / "last").exists() == (kill_at == 1)
    assert checkpoint_step(tmp_path / "last.tmp") == 4  # the new checkpoint is complete
    assert find_checkpoint(tmp_path / "last") == tmp_path / "last.tmp"
    capsys.readouterr()
    resumed = Trainer(tiny_config(data, tmp_path, epochs=3), resume=tmp_path / "last")
    assert resumed.global_step == 4 and "resuming from" in capsys.readouterr().out
    # a damaged newest one: the older complete one is used, and never deleted
    (tmp_path / "last.tmp" / "complete.json").unlink()
    newest = find_checkpoint(tmp_path / "last")
    assert checkpoint_step(newest) == 2
    resumed = Trainer(tiny_config(data, tmp_path, epochs=3), resume=tmp_path / "last")
    assert resumed.global_step == 2
    _epoch(resumed)
    resumed.save_checkpoint()
    assert checkpoint_step(tmp_path / "last") == 4
    assert not (tmp_path / "last.tmp").exists() and not (tmp_path / "last.old").exists()


def test_a_run_with_no_complete_checkpoint_says_what_it_looked_at(data_dir, tmp_path):
    data = {"train_ann": str(data_dir / "train.json"), "train_images": str(data_dir / "train")}
    (tmp_path / "last.tmp").mkdir()
    with pytest.raises(FileNotFoundError, match="nor is any of .*last.tmp"):
        Trainer(tiny_config(data, tmp_path), resume=tmp_path / "last")
