"""Shared tiny setup for the trainer tests (also imported by the torchrun worker in test_ddp.py)."""
from __future__ import annotations

from pathlib import Path

#: a very small RT-DETR so that a training step takes well under a second on CPU
TINY_ARGS = {"encoder": {"hidden_dim": 32, "dim_feedforward": 64, "num_heads": 4},
             "decoder": {"hidden_dim": 32, "dim_feedforward": 64, "num_heads": 4, "num_queries": 10,
                         "num_decoder_layers": 2, "num_denoising": 8}}


def make_data(root: Path, num_train: int = 8, num_val: int = 4) -> dict[str, str]:
    from zoo.data.synthetic import make_synthetic_coco

    train = make_synthetic_coco(root, "train", num_train, seed=0, image_size=64)
    val = make_synthetic_coco(root, "val", num_val, seed=1, image_size=64)
    return {"train_ann": str(train), "train_images": str(root / "train"),
            "val_ann": str(val), "val_images": str(root / "val")}


def tiny_config(data: dict[str, str], output_dir: Path, **overrides):
    from zoo.engine.trainer import TrainConfig

    args = dict(model="rtdetr_mobilenetv3_small", model_args=TINY_ARGS, input_size=64, epochs=1, batch_size=4,
                lr=1e-3, warmup_steps=2, num_workers=0, progress=False, log_every=1, output_dir=str(output_dir),
                **data)
    args.update(overrides)
    return TrainConfig(**args)
