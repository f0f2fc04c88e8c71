"""``zoo train lwdetr_tiny`` end to end on CPU (a tiny configuration, synthetic shapes at 64 px): Group DETR
training through the family's criterion and recipe, every loss term computed and the logged ones in
metrics.jsonl, the recipe's settings in config.json."""
from __future__ import annotations

import json

import pytest
import torch

from zoo.cli import main
from zoo.data.synthetic import make_synthetic_coco
from zoo.engine.trainer import TrainConfig, Trainer

#: lwdetr_tiny cut down: a 2-block ViT of width 32, one projector block, 2 decoder layers, 3 groups of 10 queries
TINY = {"backbone": {"dim": 32, "depth": 2, "num_heads": 2, "out_indices": [1], "window_blocks": [0]},
        "encoder": {"hidden_dim": 32, "num_blocks": 1},
        "decoder": {"hidden_dim": 32, "num_queries": 10, "group_detr": 3, "num_decoder_layers": 2, "sa_heads": 2,
                    "ca_heads": 2, "dim_feedforward": 64}}
TERMS = {f"loss_{t}{s}" for t in ("ce", "bbox", "giou") for s in ("", "_0", "_enc")}


@pytest.fixture(scope="module")
def data(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("shapes")
    make_synthetic_coco(root, "train", 20, seed=0, image_size=64)  # 10 steps: one step record
    make_synthetic_coco(root, "val", 2, seed=1, image_size=64)
    return root


def test_zoo_train_lwdetr_tiny(data, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "lwdetr_tiny", "--data", str(data), "--output", str(out), "--epochs", "1",
                 "--batch-size", "2", "--size", "64", "--workers", "0", "--no-progress",
                 "--model-args", json.dumps(TINY)])
    assert code == 0, capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    # the recipe (zoo.models.lwdetr.recipe, lwdetr_tiny) fills what the command line left unset
    assert (config["lr"], config["backbone_lr_mult"], config["weight_decay"]) == (1e-4, 1.5, 1e-4)
    assert (config["warmup_steps"], config["ema_decay"], config["clip_max_norm"]) == (0, 0.9997, 0.1)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "time_s" in r]
    assert len(epochs) == 1 and "val_AP" in epochs[-1]
    for r in epochs:  # the trainer logs the total and the last layer's terms
        assert {"train_loss", "train_loss_ce", "train_loss_bbox", "train_loss_giou"} <= set(r)
        assert all(r[k] > 0 for k in ("train_loss", "train_loss_ce", "train_loss_bbox", "train_loss_giou"))
        assert r["train_loss"] > r["train_loss_ce"] + r["train_loss_bbox"] + r["train_loss_giou"]  # + aux + enc
    steps = [r for r in records if "time_s" not in r]
    assert steps and {"lr", "lr_decoder", "lr_backbone_layer2", "lr_backbone_layer0"} <= set(steps[0])
    # the embeddings: lr_encoder x component decay^2 x layer decay^(2 blocks + 1)
    assert steps[0]["lr_backbone_layer0"] == pytest.approx(1e-4 * 1.5 * 0.7 ** 2 * 0.8 ** 3)


def test_a_training_step_computes_every_term(data, tmp_path):
    """One step: all nine terms (last layer, the earlier layer, the encoder proposals) of the 30 grouped queries."""
    trainer = Trainer(TrainConfig(model="lwdetr_tiny", model_args=TINY, data=str(data), output_dir=str(tmp_path),
                                  input_size=64, epochs=1, batch_size=2, num_workers=0, progress=False,
                                  multiscale=False, augment=False, ema_decay=0.0))
    images, targets = next(iter(trainer._loader(0)))
    trainer.model.train()
    assert trainer.model(images)["pred_logits"].shape[1] == 30
    before = trainer.model.decoder.class_embed.weight.detach().clone()
    logs = trainer.train_step(images, targets)
    assert set(logs) == TERMS | {"loss"}
    assert logs["loss"] == pytest.approx(sum(logs[k] for k in TERMS), rel=1e-6)
    assert not torch.equal(before, trainer.model.decoder.class_embed.weight)


def test_multi_scale_sizes_fit_the_windows(data, tmp_path):
    """LW-DETR's ViT takes multiples of 64 (16-px patches, 4 x 4 windows): the trainer draws its multi-scale sizes
    in those steps (RT-DETR's 32 would give 224 and 288 here, which the windows cannot split)."""
    trainer = Trainer(TrainConfig(model="lwdetr_tiny", model_args=TINY, data=str(data), output_dir=str(tmp_path),
                                  input_size=256, epochs=1, batch_size=2, num_workers=0, progress=False,
                                  augment=False, ema_decay=0.0))
    assert trainer.model.size_divisor == trainer.scale_step == 64
    sizes = {}
    for step in range(40):
        trainer.global_step = step
        sizes.setdefault(trainer._step_size(), step)
    assert set(sizes) == {192, 256, 320}
    images, targets = next(iter(trainer._loader(0)))
    trainer.global_step = sizes[192]
    logs = trainer.train_step(images, targets)
    assert set(logs) == TERMS | {"loss"}


def test_a_mixed_precision_step(data, tmp_path):
    """AMP (bf16 autocast, here on CPU): bf16 class logits reach the criterion, which sums in float32."""
    trainer = Trainer(TrainConfig(model="lwdetr_tiny", model_args=TINY, data=str(data), output_dir=str(tmp_path),
                                  input_size=64, epochs=1, batch_size=2, num_workers=0, progress=False,
                                  augment=False, ema_decay=0.0, amp="bf16"))
    images, targets = next(iter(trainer._loader(0)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert trainer.model.train()(images)["pred_logits"].dtype == torch.bfloat16
    logs = trainer.train_step(images, targets)
    assert set(logs) == TERMS | {"loss"} and all(v == v and abs(v) < 1e3 for v in logs.values())
