"""Experiment logging for the trainer (``TrainConfig.report_to`` / ``zoo train --report-to``).

``none`` (the default) logs nothing beyond ``metrics.jsonl``; ``tensorboard`` writes event files to
``output_dir/tensorboard`` with ``torch.utils.tensorboard``:

    train/<term>         every loss term of a step (total, per decoder layer, denoising), every ``log_every`` steps
    lr/<group>           each optimizer parameter group's learning rate, at the same steps
    epoch/<key>          the epoch's record in metrics.jsonl (train averages, time_s)
    val/<metric>         COCO metrics (AP, AP50, ...) at each evaluation
    predictions/<image>  a few validation (or, without a validation set, training) images with the evaluated
                         model's detections drawn by ``zoo.draw``, once per epoch
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["REPORT_TO", "Reporter", "TensorBoardReporter", "make_reporter"]

REPORT_TO = ("none", "tensorboard")


class Reporter:
    """Logs nothing: what ``report_to="none"`` and the processes other than rank 0 use."""

    def log_step(self, step: int, losses: Mapping[str, float], optimizer: torch.optim.Optimizer) -> None:
        """Loss terms and learning rates after optimisation step ``step``."""

    def log_epoch(self, step: int, record: Mapping[str, Any], model: nn.Module) -> None:
        """An epoch's metrics.jsonl ``record`` and predictions of ``model`` (the evaluated model)."""

    def close(self) -> None:
        """Flush and release what the reporter holds."""


def group_name(group: Mapping[str, Any], index: int) -> str:
    """A parameter group's ``name`` (the trainer names its groups), else its position."""
    return str(group.get("name", f"group{index}"))


class TensorBoardReporter(Reporter):
    """TensorBoard event files in ``log_dir``; ``sample_images`` (paths) are drawn with detections scoring at
    least ``score_threshold`` at the end of every epoch."""

    def __init__(self, log_dir: str | Path, sample_images: list[str], score_threshold: float = 0.3):
        from zoo.extras import require

        require("tensorboard", "logging", "report_to='tensorboard' (zoo train --report-to tensorboard)")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))
        self.sample_images, self.score_threshold = sample_images, score_threshold

    def log_step(self, step: int, losses: Mapping[str, float], optimizer: torch.optim.Optimizer) -> None:
        for name, value in losses.items():
            self.writer.add_scalar(f"train/{name}", value, step)
        for i, group in enumerate(optimizer.param_groups):
            self.writer.add_scalar(f"lr/{group_name(group, i)}", group["lr"], step)

    def log_epoch(self, step: int, record: Mapping[str, Any], model: nn.Module) -> None:
        for key, value in record.items():
            if key in ("epoch", "step") or not isinstance(value, (int, float)):
                continue
            tag = f"val/{key[4:]}" if key.startswith("val_") else f"epoch/{key}"
            self.writer.add_scalar(tag, value, step)
        self._log_predictions(step, model)
        self.writer.flush()

    def _log_predictions(self, step: int, model: nn.Module) -> None:
        if not self.sample_images:
            return
        import numpy as np

        from zoo.engine.draw import draw
        from zoo.engine.predict import predict

        detections = predict(model, self.sample_images, score_threshold=self.score_threshold)
        for path, det in zip(self.sample_images, detections):
            self.writer.add_image(f"predictions/{Path(path).name}", np.asarray(draw(path, det)), step,
                                  dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def _first_images(ann_file: str, image_dir: str, count: int) -> list[str]:
    """Paths of the first ``count`` images (by id) of a COCO annotation file."""
    images = sorted(json.loads(Path(ann_file).read_text()).get("images", []), key=lambda im: im["id"])
    return [str(Path(image_dir) / im["file_name"]) for im in images[:count]]


def make_reporter(config: Any, rank: int = 0, num_images: int = 4) -> Reporter:
    """The reporter a :class:`zoo.engine.trainer.TrainConfig` asks for (only rank 0 writes)."""
    if config.report_to not in REPORT_TO:
        raise ValueError(f"report_to must be one of {', '.join(REPORT_TO)}, got {config.report_to!r}")
    if config.report_to == "none" or rank != 0:
        return Reporter()
    if getattr(config, "data", None):  # a dataset folder in any format (zoo.data.formats)
        from zoo.data.formats import list_splits, read_split

        splits = list_splits(config.data)
        split = read_split(config.data, next((s for s in ("val", "valid", "validation") if s in splits), "train"))
        ims = sorted(split.coco["images"], key=lambda im: im["id"])[:num_images]
        return TensorBoardReporter(Path(config.output_dir) / "tensorboard",
                                   [str(split.image_dir / im["file_name"]) for im in ims])
    ann, images = (config.val_ann, config.val_images) if config.val_ann else (config.train_ann, config.train_images)
    return TensorBoardReporter(Path(config.output_dir) / "tensorboard", _first_images(ann, images, num_images))
