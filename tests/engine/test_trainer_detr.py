"""The trainer is family-agnostic: DETR fine-tunes with its own criterion, recipe and preprocessing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer_setup import make_data

from zoo.cli import main
from zoo.engine.trainer import TrainConfig, Trainer
from zoo.models.detr.criterion import SetCriterion

#: a small DETR: ResNet-18 body, one encoder and decoder layer of width 32, 10 queries
TINY_DETR = {"backbone": {"model_name": "resnet18"}, "hidden_dim": 32, "num_queries": 10,
             "encoder": {"num_encoder_layers": 1, "dim_feedforward": 64, "nhead": 4, "dropout": 0.0},
             "decoder": {"num_decoder_layers": 2, "dim_feedforward": 64, "nhead": 4, "dropout": 0.0}}


@pytest.fixture(scope="module")
def data(tmp_path_factory, single_thread):
    return make_data(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=4)


def _config(data, output_dir, **overrides):
    args = dict(model="detr_resnet50", model_args=TINY_DETR, input_size=64, epochs=1, batch_size=4,
                warmup_steps=1, num_workers=0, progress=False, log_every=1, output_dir=str(output_dir),
                ema_decay=0.0, **data)
    args.update(overrides)
    return TrainConfig(**args)


def test_detr_uses_its_criterion_recipe_and_preprocessing(data, tmp_path):
    trainer = Trainer(_config(data, tmp_path))
    assert isinstance(trainer.criterion, SetCriterion)
    assert trainer.criterion.num_classes == trainer.model.num_classes == 3
    # facebookresearch/detr: lr 1e-4, backbone 1e-5, weight decay 1e-4, clip 0.1
    cfg = trainer.cfg
    assert (cfg.lr, cfg.backbone_lr_mult, cfg.weight_decay, cfg.clip_max_norm) == (1e-4, 0.1, 1e-4, 0.1)
    backbone = {id(p) for p in trainer.model.backbone.parameters()}
    lrs = {id(g["params"][0]) in backbone: g["initial_lr"] for g in trainer.optimizer.param_groups}
    assert lrs[True] == pytest.approx(1e-5) and lrs[False] == pytest.approx(1e-4)
    # shortest-edge resizing (aspect kept), as DETR's pretrained_cfg says: shortest side 64
    assert trainer.preprocess.resize_mode == "shortest_edge" and trainer.preprocess.size[0] == 64
    assert trainer.model.pretrained_cfg["shortest_edge"] == 64


def test_detr_loss_falls_and_evaluates(data, tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(_config(data, tmp_path, lr=1e-3, backbone_lr_mult=0.1, augment=False, multiscale=False))
    images, targets = next(iter(trainer._loader(0)))
    first = trainer.train_step(images, targets)
    assert any(k.startswith("loss_ce_aux") for k in first)  # auxiliary decoding losses are on
    for _ in range(25):
        last = trainer.train_step(images, targets)
    assert last["loss"] < 0.7 * first["loss"], (first["loss"], last["loss"])
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["AP"] <= 1.0


def test_padded_batches_give_detr_its_pixel_mask(data, tmp_path):
    """Images of different aspect ratios are padded in a batch; the mask marks the padding for the model."""
    trainer = Trainer(_config(data, tmp_path, augment=False, multiscale=False))
    images = torch.zeros(2, 3, 64, 96)
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
                "size": torch.tensor([64, 96])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
                "size": torch.tensor([64, 48])}]
    mask = trainer.model.training_inputs(images, targets)["pixel_mask"]
    assert mask[0].all() and mask[1, :, :48].all() and not mask[1, :, 48:].any()


def test_zoo_train_detr_command(data, tmp_path, capsys):
    out = tmp_path / "run"
    root = Path(data["train_ann"]).parent
    code = main(["train", "detr_resnet50", "--data", str(root), "--output", str(out), "--epochs", "1",
                 "--batch-size", "4", "--size", "64", "--warmup-steps", "1", "--workers", "0", "--ema-decay", "0",
                 "--no-progress", "--model-args", json.dumps(TINY_DETR)])
    assert code == 0, capsys.readouterr()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "val_AP" in records[-1]
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["architecture"] == "detr_resnet50"
