"""D-FINE through zoo's trainer: ``zoo train dfine_n`` end to end with every loss term in metrics.jsonl under
transformers' names, D-FINE's official recipe per size, the box heads in float32 under autocast, and DEIM's
recipe (``--recipe deim``: MAL, mosaic / mixup on DEIM's epoch schedule, flat-cosine lr)."""
from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch

import zoo
from trainer_setup import make_data

#: a dfine_n that fits 64x64 inputs (20 anchors) and trains a step in about a second
TINY_DFINE = {"num_queries": 10, "num_denoising": 8}


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _expected_terms(cls: str, layers: int = 3) -> set[str]:
    """transformers' names for D-FINE's terms (enc top-k as the last aux), plus the official _pre / _dn_pre and
    the last layer's FGL (its DDF would distil it from itself: there is none)."""
    heads = ["", *(f"_aux_{i}" for i in range(layers)), *(f"_dn_{i}" for i in range(layers)), "_pre", "_dn_pre"]
    local = {*(f"_aux_{i}" for i in range(layers - 1)), *(f"_dn_{i}" for i in range(layers))}
    return ({f"loss_{t}{h}" for h in heads for t in (cls, "bbox", "giou")} | {"loss_fgl"}
            | {f"loss_{t}{h}" for h in local for t in ("fgl", "ddf")})


def test_zoo_train_dfine_n_logs_every_term(tmp_path):
    from zoo.cli import main

    make_data(tmp_path / "data", num_train=4, num_val=1)  # a dataset folder: train.json + train/, val.json + val/
    code = main(["train", "dfine_n", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run"),
                 "--epochs", "1", "--batch-size", "4", "--size", "64", "--workers", "0", "--no-progress",
                 "--model-args", json.dumps(TINY_DFINE), "--warmup-steps", "1"])
    assert code == 0
    epoch = _records(tmp_path / "run")[-1]  # the epoch record: every term averaged over the epoch's steps
    assert epoch["step"] == 1 and "val_AP" in epoch
    expected = {f"train_{k}" for k in _expected_terms("vfl")}
    assert expected <= set(epoch), sorted(expected - set(epoch))
    assert all(math.isfinite(epoch[k]) for k in expected)
    assert abs(sum(epoch[k] for k in expected) - epoch["train_loss"]) < 1e-4 * epoch["train_loss"]
    # D-FINE-N's official recipe, as configs/dfine/dfine_hgnetv2_n_coco.yml
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["lr"], config["backbone_lr_mult"], config["weight_decay"], config["clip_max_norm"]) == \
        (8e-4, 0.5, 1e-4, 0.1)
    assert config["multiscale"] is False and config["epochs"] == 1 and config["warmup_steps"] == 1


@pytest.mark.parametrize("name, lr, backbone_lr, weight_decay, epochs, no_aug", [
    ("dfine_n", 8e-4, 4e-4, 1e-4, 160, 12), ("dfine_s", 2e-4, 1e-4, 1e-4, 132, 12),
    ("dfine_m", 2e-4, 2e-5, 1e-4, 132, 12), ("dfine_l", 2.5e-4, 1.25e-5, 1.25e-4, 80, 8),
    ("dfine_x", 2.5e-4, 2.5e-6, 1.25e-4, 80, 8)])
def test_official_dfine_recipes(name, lr, backbone_lr, weight_decay, epochs, no_aug):
    """configs/dfine/dfine_hgnetv2_*_coco.yml: optimizer lr / backbone lr / weight decay, epochs, policy epoch."""
    from zoo.engine.trainer import recipe_of
    from zoo.models.dfine.model import DFINE

    model = DFINE.__new__(DFINE)  # the recipe depends on the architecture name only
    torch.nn.Module.__init__(model)
    model.config = {"architecture": name}
    recipe = recipe_of(model, None)
    assert recipe["lr"] == lr and math.isclose(recipe["lr"] * recipe["backbone_lr_mult"], backbone_lr)
    assert (recipe["weight_decay"], recipe["epochs"], recipe["no_aug_epochs"]) == (weight_decay, epochs, no_aug)
    assert (recipe["warmup_steps"], recipe["clip_max_norm"], recipe["schedule"]) == (500, 0.1, "constant")
    deim = recipe_of(model, "deim")
    assert deim["criterion"] == {"cls_loss": "mal", "gamma": 1.5, "mal_alpha": None}
    assert deim["schedule"] == "flat_cosine" and deim["mosaic"] == deim["mixup"] == 0.5
    with pytest.raises(ValueError, match="no training recipe 'yolo'.*deim"):
        recipe_of(model, "yolo")


def test_recipe_milestones_scale_with_the_epochs_given(capsys):
    """DEIM's dfine_s schedule (132 epochs: mosaic [4, 64), flat 64, no-aug 12) run for 33 epochs: a quarter of each;
    a milestone given explicitly stays."""
    from zoo.engine.trainer import TrainConfig, _with_recipe
    from zoo.models.dfine.model import DFINE

    model = DFINE.__new__(DFINE)
    torch.nn.Module.__init__(model)
    model.config = {"architecture": "dfine_s"}
    cfg = _with_recipe(TrainConfig(model="dfine_s", recipe="deim", epochs=33), model)
    assert (cfg.epochs, cfg.mosaic_epochs, cfg.flat_epochs, cfg.no_aug_epochs) == (33, (1, 16), 16, 3)
    assert "33 epochs instead of the recipe's 132" in capsys.readouterr().out
    cfg = _with_recipe(TrainConfig(model="dfine_s", recipe="deim", epochs=33, no_aug_epochs=1), model)
    assert (cfg.mosaic_epochs, cfg.no_aug_epochs) == ((1, 16), 1)
    cfg = _with_recipe(TrainConfig(model="dfine_s", recipe="deim"), model)
    assert (cfg.epochs, cfg.mosaic_epochs, cfg.flat_epochs, cfg.no_aug_epochs) == (132, (4, 64), 64, 12)


def test_box_heads_run_in_float32_under_bf16_autocast():
    model = zoo.create_model("dfine_n", num_classes=3, **TINY_DFINE).train()
    dtypes = {}

    def hook(name, module, inputs, output):
        dtypes[name] = output.dtype

    heads = {"pre_bbox_head": model.decoder.pre_bbox_head, "enc_bbox_head": model.decoder.enc_bbox_head,
             **{f"dec_bbox_head.{i}": h for i, h in enumerate(model.decoder.dec_bbox_head)}}
    for name, head in heads.items():
        head.register_forward_hook(partial(hook, name))
    x = torch.rand(1, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert dtypes.pop("enc_bbox_head") == torch.bfloat16  # autocast is on: the other heads do run in bf16
    assert dtypes == {name: torch.float32 for name in heads if name != "enc_bbox_head"}
    assert out["pred_corners"].dtype == torch.float32
    with torch.no_grad():  # without autocast nothing changes: float64 stays float64
        model.double()(x.double())
    assert set(dtypes.values()) == {torch.float64}


def _flat_cosine_schedule(total_iter, warmup_iter, flat_iter, no_aug_iter, current_iter, init_lr, min_lr):
    """Copied from ShihuaHuang95/DEIM engine/optim/lr_scheduler.py (the reference)."""
    if current_iter <= warmup_iter:
        return init_lr * (current_iter / float(warmup_iter)) ** 2
    elif warmup_iter < current_iter <= flat_iter:
        return init_lr
    elif current_iter >= total_iter - no_aug_iter:
        return min_lr
    else:
        cosine_decay = 0.5 * (1 + math.cos(math.pi * (current_iter - flat_iter) /
                                           (total_iter - flat_iter - no_aug_iter)))
        return min_lr + (init_lr - min_lr) * cosine_decay


def test_flat_cosine_equals_deims_schedule():
    from zoo.engine.trainer import _lr_lambda

    total, warmup, flat, no_aug = 1320, 20, 640, 120
    factor = _lr_lambda(warmup, total, "flat_cosine", flat=flat, no_aug=no_aug, min_ratio=0.5)
    for step in range(total + 5):
        expected = _flat_cosine_schedule(total, warmup, flat, no_aug, step, 4e-4, 2e-4)
        assert abs(4e-4 * factor(step) - expected) <= 1e-18, step
    assert factor(10) == 0.25 and factor(300) == 1.0 and factor(1250) == 0.5 and 0.5 < factor(900) < 1.0


def test_deim_recipe_schedule_and_mal(tmp_path):
    """``recipe="deim"`` on dfine_s: DEIM's data stages by epoch (deim_hgnetv2_s_coco.yml policy [4, 64, 120] of
    132 epochs), MAL with gamma 1.5, flat-cosine; then a short run whose samples follow the stages."""
    from zoo.engine.trainer import TrainConfig, Trainer

    data = make_data(tmp_path / "d", num_train=4, num_val=1)
    trainer = Trainer(TrainConfig(model="dfine_s", recipe="deim", input_size=64, batch_size=2, num_workers=0,
                                  progress=False, output_dir=str(tmp_path / "s"),
                                  model_args={"num_queries": 8, "num_denoising": 4}, **data))
    cfg = trainer.cfg
    assert (cfg.epochs, cfg.lr, cfg.backbone_lr_mult, cfg.schedule, cfg.flat_epochs, cfg.min_lr_ratio) == \
        (132, 4e-4, 0.5, "flat_cosine", 64, 0.5)
    assert (cfg.mosaic, cfg.mixup, cfg.mosaic_epochs, cfg.no_aug_epochs, cfg.warmup_steps, cfg.mosaic_style) == \
        (0.5, 0.5, (4, 64), 12, 2000, "deim")
    assert type(trainer.train_data.mosaic).__name__ == "AffineMosaic"
    trainer.train_data.stage, trainer.train_data.mosaic_p = "mix", 1.0  # a DEIM mosaic through the training transforms
    image, target = trainer.train_data[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert len(target["boxes"]) == len(target["labels"]) and ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
    stages = [trainer.data_stage(e) for e in range(132)]
    assert stages == ["light"] * 4 + ["mix"] * 60 + ["augment"] * 56 + ["plain"] * 12
    assert (trainer.criterion.cls_loss, trainer.criterion.gamma, trainer.criterion.mal_alpha) == ("mal", 1.5, None)
    assert trainer.criterion.matching == "union" and trainer.criterion.style == "official"
    # mosaic (p=1 here; zoo's grid mosaic, which keeps every box) only in epoch 1 of 0..2
    run = Trainer(TrainConfig(model="dfine_n", recipe="deim", epochs=3, mosaic_epochs=(1, 2), mosaic=1.0, mixup=0.0,
                              mosaic_style="grid",
                              no_aug_epochs=0, input_size=64, batch_size=4, num_workers=0, progress=False,
                              eval_every=0, output_dir=str(tmp_path / "n"), augment=False, model_args=TINY_DFINE,
                              **data))
    counts = {}
    for epoch in range(3):
        run._loader(epoch)
        counts[epoch] = [len(run.train_data[i][1]["labels"]) for i in range(4)]
    own = [len(run.train_set.load(i)[1]["labels"]) for i in range(4)]
    assert counts[0] == own and counts[2] == own  # (augment=False: resized only) each image keeps its boxes
    assert all(c > o for c, o in zip(counts[1], own))  # a mosaic adds three images' boxes
    seen = []
    run.criterion.set_epoch = seen.append  # what fit tells the criterion (DEIMv2's matcher switch)
    run._loader = lambda epoch: []  # no steps: the epochs' bookkeeping only
    run.fit()
    assert seen == [0, 1, 2]


def test_deim_mosaic_pastes_four_tiles_and_moves_them_by_one_affine(tmp_path):
    from torchvision import tv_tensors

    from zoo.data.transforms import AffineMosaic

    def sample(h, w, boxes, labels):
        image = tv_tensors.Image(torch.randint(0, 255, (3, h, w), dtype=torch.uint8))
        return image, {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY",
                                                         canvas_size=(h, w)),
                       "labels": torch.tensor(labels), "image_id": 7}

    samples = [sample(64, 96, [[8, 8, 40, 32]], [0]), sample(80, 80, [[0, 0, 80, 80], [10, 20, 30, 40]], [1, 2]),
               sample(40, 60, [[30, 10, 60, 40]], [3]), sample(32, 32, [[4, 4, 12, 28]], [4])]
    # no movement: tiles resized to a shortest side of 32, in a grid of the largest tile (32 x 48), boxes offset
    image, target = AffineMosaic(tile=32, degrees=0.0, translate=(0.0, 0.0), scale=(1.0, 1.0))(samples)
    assert image.shape == (3, 64, 96) and target["image_id"] == 7
    expected = torch.tensor([[4, 4, 20, 16],                              # 64x96 -> 32x48 at (0, 0): x0.5
                             [48, 0, 80, 32], [52, 8, 60, 16],            # 80x80 -> 32x32 at (48, 0): x0.4
                             [24, 40, 48, 64],                            # 40x60 -> 32x48 at (0, 32): x0.8
                             [52, 36, 60, 60]], dtype=torch.float32)      # 32x32 at (48, 32)
    assert torch.allclose(target["boxes"].as_subclass(torch.Tensor), expected, atol=1e-4)
    assert target["labels"].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(image[:, 32:64, 48:80], samples[3][0]) and not image[:, 32:, 80:].any()  # fill 0
    # DEIM's affine: every kept box inside the canvas, at least 1 pixel, with its label
    torch.manual_seed(0)
    for _ in range(5):
        image, target = AffineMosaic(tile=32)(samples)
        boxes = target["boxes"].as_subclass(torch.Tensor)
        assert len(boxes) == len(target["labels"]) >= 1
        assert (boxes[:, 2:] - boxes[:, :2] >= 1).all() and boxes.min() >= 0
        assert (boxes[:, [0, 2]] <= 96).all() and (boxes[:, [1, 3]] <= 64).all()


def test_zoo_train_recipe_deim_logs_mal(tmp_path):
    """``zoo train dfine_n --recipe deim``: one step, MAL's terms (not VFL's) in metrics.jsonl."""
    from zoo.cli import main

    make_data(tmp_path / "data", num_train=4, num_val=1)
    assert main(["train", "dfine_n", "--recipe", "deim", "--data", str(tmp_path / "data"), "--output",
                 str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--size", "64", "--workers", "0",
                 "--no-progress", "--model-args", json.dumps(TINY_DFINE), "--warmup-steps", "1"]) == 0
    epoch = _records(tmp_path / "run")[-1]
    expected = {f"train_{k}" for k in _expected_terms("mal")}
    assert expected <= set(epoch), sorted(expected - set(epoch))
    assert not any("vfl" in k for k in epoch)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["recipe"], config["schedule"], config["lr"]) == ("deim", "flat_cosine", 8e-4)


def test_zoo_train_deimv2_atto_logs_its_terms(tmp_path):
    """``zoo train deimv2_atto``: DEIMv2's loss for the light sizes (MAL + L1 + GIoU on every head, no FGL / DDF)
    in metrics.jsonl, summing to the total, and Atto's official recipe in config.json."""
    from zoo.cli import main

    make_data(tmp_path / "data", num_train=4, num_val=1)
    assert main(["train", "deimv2_atto", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run"),
                 "--epochs", "1", "--batch-size", "4", "--size", "64", "--workers", "0", "--no-progress",
                 "--model-args", json.dumps(TINY_DFINE), "--warmup-steps", "1"]) == 0
    epoch = _records(tmp_path / "run")[-1]
    heads = ["", "_aux_0", "_aux_1", "_aux_2", "_dn_0", "_dn_1", "_dn_2", "_pre", "_dn_pre"]
    expected = {f"train_loss_{t}{h}" for h in heads for t in ("mal", "bbox", "giou")}
    assert expected == {k for k in epoch if k.startswith("train_loss_")}, sorted(expected ^ set(epoch))
    assert abs(sum(epoch[k] for k in expected) - epoch["train_loss"]) < 1e-4 * epoch["train_loss"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["lr"], config["backbone_lr_mult"], config["schedule"], config["mosaic"], config["mixup"]) == \
        (2e-3, 0.5, "flat_cosine", 0.3, 0.0)


@pytest.mark.parametrize("name, lr, backbone_lr, weight_decay, epochs, policy, flat, change", [
    ("deimv2_atto", 2e-3, 1e-3, 1e-4, 500, (4, 250, 400), 250, 450),
    ("deimv2_femto", 1.6e-3, 8e-4, 1e-4, 500, (4, 250, 400), 250, 450),
    ("deimv2_pico", 1.6e-3, 8e-4, 1e-4, 500, (4, 250, 400), 250, 450),
    ("deimv2_n", 8e-4, 4e-4, 1e-4, 160, (4, 78, 148), 160, 136),
    ("deimv2_s", 5e-4, 2.5e-5, 1e-4, 132, (4, 64, 120), 64, 100),
    ("deimv2_m", 5e-4, 2.5e-5, 1e-4, 102, (4, 49, 90), 49, 80),
    ("deimv2_l", 5e-4, 1.25e-5, 1.25e-4, 68, (4, 34, 60), 34, 50),
    ("deimv2_x", 5e-4, 1e-5, 1.25e-4, 58, (4, 29, 50), 29, 45)])
def test_official_deimv2_recipes_and_losses(name, lr, backbone_lr, weight_decay, epochs, policy, flat, change):
    """configs/deimv2/deimv2_*_coco.yml over configs/base/deimv2.yml: optimiser, epochs, policy epochs, flat epochs,
    and the criterion: weights, matching (union but for Atto/Femto/Pico), the matcher's change epoch, which scales
    with the epochs a run sets."""
    from zoo.engine.trainer import _criterion_settings, recipe_of
    from zoo.models.deimv2.model import DEIMv2

    probe = type("Probe", (DEIMv2,), {"num_classes": 80})  # the recipe depends on the architecture name only
    model = probe.__new__(probe)
    torch.nn.Module.__init__(model)
    model.config = {"architecture": name}
    model.decoder = type("Decoder", (), {"reg_max": 32})()
    recipe = recipe_of(model, None)
    assert recipe["lr"] == lr and math.isclose(recipe["lr"] * recipe["backbone_lr_mult"], backbone_lr)
    assert (recipe["weight_decay"], recipe["epochs"], recipe["flat_epochs"]) == (weight_decay, epochs, flat)
    assert (recipe["mosaic_epochs"], recipe["no_aug_epochs"]) == (policy[:2], epochs - policy[2])
    assert recipe["schedule"] == "flat_cosine" and recipe["min_lr_ratio"] == (1.0 if name == "deimv2_n" else 0.5)
    light = name in ("deimv2_atto", "deimv2_femto", "deimv2_pico")
    criterion = model.criterion(**_criterion_settings(recipe, epochs))
    assert (criterion.cls_loss, criterion.gamma, criterion.alpha, criterion.matcher_change_epoch) == \
        ("mal", 1.5, 0.75, change)
    assert criterion.matching == ("per_layer" if light else "union") and criterion.style == "official"
    assert set(criterion.weight_dict) == {"loss_mal", "loss_bbox", "loss_giou"} | (
        set() if light else {"loss_fgl", "loss_ddf"})
    assert model.criterion(**_criterion_settings(recipe, epochs // 2)).matcher_change_epoch == round(change / 2)
    assert model.train_recipes == {}


@pytest.mark.parametrize("name, backbone_lr_only", [("deimv2_s", "backbone.dinov3."), ("deimv2_atto", "backbone.")])
def test_deimv2_backbone_lr_groups(name, backbone_lr_only):
    """The official optimiser groups (configs/deimv2/deimv2_dinov3_*.yml): the DINOv3 ViT at the backbone lr, its
    spatial tuning adapter (``sta``, ``convs``, ``norms``) at the main lr; HGNetV2 variants: all the backbone."""
    from zoo.engine.trainer import _param_groups

    model = zoo.create_model(name)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in _param_groups(model, lr=5e-4, backbone_mult=0.05, weight_decay=1e-4):
        for p in group["params"]:
            slow = names[id(p)].startswith(backbone_lr_only)
            assert math.isclose(group["lr"], 5e-4 * (0.05 if slow else 1.0)), names[id(p)]
            assert group["weight_decay"] == (0.0 if p.ndim <= 1 else 1e-4)
    if name == "deimv2_s":
        assert any(n.startswith("backbone.sta.") for n in names.values())
