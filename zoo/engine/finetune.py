"""``zoo.train``: train or fine-tune a detector on a dataset folder in one call (the Python face of ``zoo train``).

    model, run = zoo.train("rtdetr_r18vd.coco", data="my_yolo_set", epochs=12, patience=3)
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["train"]


def train(model: str | nn.Module, data: str | os.PathLike, epochs: int = 12,
          output_dir: str | os.PathLike = "runs/train", overwrite: bool = False,
          **settings: Any) -> tuple[nn.Module, Path]:
    """Train ``model`` on the dataset folder ``data`` (COCO, Roboflow, YOLO or Pascal VOC: ``zoo.data.formats``;
    its ``train`` split, validated on ``val`` when there is one) and return ``(model, run folder)``.

    ``model``: an architecture (``"rtdetr_r18vd"``: its default initialisation, ImageNet backbone where the
    family has one), ``"architecture.tag"`` to fine-tune pretrained weights (class heads adapted to the dataset's
    class names), or a module you built (its ``num_classes`` must be the dataset's). ``settings``: any other
    :class:`zoo.engine.trainer.TrainConfig` field (``batch_size``, ``lr``, ``accumulate``, ``patience``,
    ``mosaic``, ``mixup``, ``no_aug_epochs``, ``input_size``, ``recipe`` — a named recipe of the family, e.g.
    ``recipe="deim"`` for D-FINE, whose epoch milestones scale to ``epochs`` —, ...).

    The returned model is the EMA model with the best validation AP (``best.safetensors``; with ``patience`` the
    run may stop early), or the final one when there is no validation split; it carries ``pretrained_cfg`` (label
    names, input size) for ``predict``. The run folder holds what ``zoo train`` writes there; one that already holds
    a run is refused unless ``overwrite`` (which deletes that run's files first).
    """
    from zoo.engine.trainer import TrainConfig, Trainer
    from zoo.factory import parse_model_name
    from zoo.weights.checkpoint import read_checkpoint

    given = None
    if isinstance(model, nn.Module):
        given, name, tag = model, model.config.get("architecture", type(model).__name__), None
    else:
        source, name, tag = parse_model_name(model)
        if source != "zoo":
            raise ValueError(f"zoo.train takes a registered name (optionally name.tag) or a module, got {model!r}; "
                             f"for {source}: models, pass zoo.create_model({model!r}, num_classes=...) ")
    unknown = sorted(set(settings) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise TypeError(f"unknown training settings: {', '.join(unknown)} (see zoo.engine.trainer.TrainConfig)")
    config = TrainConfig(model=name, weights=tag, data=os.fspath(data), epochs=epochs,
                         output_dir=os.fspath(output_dir), **settings)
    trainer = Trainer(config, model=given, overwrite=overwrite)
    trainer.fit()
    result = trainer.eval_model
    best = Path(config.output_dir) / "best.safetensors"
    if trainer.val_data is not None and best.is_file():
        result = copy.deepcopy(result)
        result.load_state_dict(read_checkpoint(best))
    return result.eval(), Path(config.output_dir)
