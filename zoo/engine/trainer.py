"""Training and fine-tuning of zoo detectors: one loop for a single process and for ``torchrun`` (DDP).

AdamW with a backbone learning-rate multiplier, linear warm-up (then constant or cosine), gradient clipping,
EMA of the weights (timm ``ModelEmaV3``), AMP where the device has it, periodic COCO evaluation of the EMA model,
a ``metrics.jsonl`` log and checkpoints that resume exactly:

    output_dir/last/model.safetensors   training weights
    output_dir/last/state.pt            optimizer, EMA, scheduler, scaler, epoch/step and RNG states
                                        (plain tensors and numbers: loads with torch.load(weights_only=True))
    output_dir/last/complete.json       written last: the folder is complete (a save rotates it through
                                        last.tmp/ and last.old/; resuming takes the newest complete one)
    output_dir/best.safetensors         EMA weights with the best validation AP (or the last EMA without val)
    output_dir/final/                   ``save_pretrained`` of the final EMA model (config.json,
                                        model.safetensors, README.md model card with the measured metrics)

Under ``torchrun`` every rank builds the same model and data; ranks read disjoint shards of one shuffled order
(``DistributedSampler``), so a global batch equals a single-process batch of the same images. Validation is
sharded too (:mod:`zoo.engine.distributed`, as ``zoo eval`` under torchrun).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from zoo.data.coco import CocoDetection
from zoo.data.collate import collate_detection
from zoo.data.images import Preprocess
from zoo.data.transforms import SampleMixing, default_scales, eval_transforms, multiscale_resize, train_transforms
from zoo.engine import distributed
from zoo.engine.reporting import make_reporter
from zoo.checks import check_input_side
from zoo.losses.targets import box_count
from zoo.weights.checkpoint import load_torch_file, read_checkpoint, safetensors_state

__all__ = ["TrainConfig", "Trainer", "train", "find_checkpoint", "save_torch"]


#: training settings a resumed run cannot change: the checkpoint's weights were made for them
FIXED_ON_RESUME = ("model", "model_args", "num_classes", "weights")
#: the checkpoint folders of a run: ``last/``, and the two names a save rotates it through
CHECKPOINT_NAMES = ("last", "last.tmp", "last.old")
#: written last into a checkpoint folder: the folder is complete (model and state of one step)
COMPLETE_MARKER = "complete.json"
#: what a run writes into its output folder; any of them but config.json means the folder holds a run
RUN_FILES = (*CHECKPOINT_NAMES, "best.safetensors", "best.safetensors.tmp", "metrics.jsonl", "final", "tensorboard",
             "config.json")


@dataclass
class TrainConfig:
    """Everything a run depends on (saved in ``output_dir/config.json`` and in every checkpoint)."""

    model: str = "rtdetr_r18vd"
    train_ann: str = ""
    train_images: str = ""
    val_ann: str | None = None
    val_images: str | None = None
    data: str | None = None               # a dataset folder in any format (zoo.data.formats), instead of *_ann
    output_dir: str = "runs/train"
    weights: str | None = None            # pretrained tag to fine-tune from (head adapted to num_classes)
    pretrained_backbone: bool | str = False  # ImageNet weights for a timm backbone (True: its default tag)
    num_classes: int | None = None        # default: the training set's category count
    model_args: dict[str, Any] = field(default_factory=dict)  # architecture overrides (create_model kwargs)
    input_size: int | None = None         # square training/eval size; default: the model's pretrained_cfg
    # None (here and below): the recipe's value, ``recipe`` (a named one the family declares, e.g. "deim"), else
    # the family's default (Detector.train_defaults), else the values in RECIPE
    recipe: str | None = None
    epochs: int | None = None
    batch_size: int = 16                  # global batch (split over processes)
    lr: float | None = None
    backbone_lr_mult: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    schedule: str | None = None           # after warm-up: "constant" (RT-DETR, D-FINE), "cosine" or "flat_cosine"
    flat_epochs: int | None = None        # flat_cosine (DEIM): the lr stays at its peak until this epoch, then
    min_lr_ratio: float | None = None     # ... decays (cosine) to lr * min_lr_ratio at the last no_aug_epochs
    lr_drops: tuple[int, ...] = ()        # epochs after which the lr is multiplied by 0.1 (MultiStepLR)
    clip_max_norm: float | None = None
    ema_decay: float | None = None        # 0 disables EMA
    amp: str = "auto"                     # auto (bf16/fp16 on CUDA, off on CPU), bf16, fp16, none
    augment: bool = True
    multiscale: bool | None = None
    eval_every: int = 1                   # epochs; 0 = only at the end
    num_workers: int = 2
    seed: int = 0
    device: str | None = None
    log_every: int = 10
    progress: bool = True
    report_to: str = "none"               # experiment logging: "none" or "tensorboard" (zoo.engine.reporting)
    # fine-tuning (zoo.engine.trainer.Trainer.accumulated_step, fit)
    accumulate: int = 1                   # batches per optimisation step (gradient accumulation)
    patience: int = 0                     # stop after this many epochs without a better validation AP (0: never)
    mosaic: float | None = None           # probability of a 4-image mosaic per sample (zoo.data.transforms.Mosaic)
    mixup: float | None = None            # probability of mixing in a second image (zoo.data.transforms.MixUp)
    no_aug_epochs: int | None = None      # the last N epochs: no mosaic, mixup, random augmentation or multi-scale
    # DEIM's data policy (start, stop): mosaic / mixup only in epochs [start, stop) (0-based), a mosaic without
    # zoom-out and IoU crop; before start flips only; from stop on the usual augmentation. () : every epoch
    mosaic_epochs: tuple[int, ...] = ()
    mosaic_style: str | None = None       # "grid" (zoo's Mosaic) or "deim" (DEIM's AffineMosaic)

    def __post_init__(self) -> None:
        """Refuse values no run can use (a ValueError naming the setting) instead of failing later or oddly."""
        minimum = {"epochs": 1, "batch_size": 1, "num_classes": 1, "input_size": 1, "warmup_steps": 0,
                   "eval_every": 0, "num_workers": 0, "log_every": 0, "flat_epochs": 0, "no_aug_epochs": 0}
        for name, least in minimum.items():
            value = getattr(self, name)
            if value is None and name in ("num_classes", "input_size", "epochs", "warmup_steps", "flat_epochs",
                                          "no_aug_epochs"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        for name in ("lr", "backbone_lr_mult", "weight_decay", "clip_max_norm", "min_lr_ratio"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.input_size is not None:
            check_input_side(self.input_size, "input_size")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1):
            raise ValueError(f"ema_decay must be in [0, 1) (0 disables EMA), got {self.ema_decay!r}")
        epochs = tuple(self.mosaic_epochs)
        if epochs and not (len(epochs) == 2 and all(isinstance(e, int) and not isinstance(e, bool) for e in epochs)
                           and 0 <= epochs[0] <= epochs[1]):
            raise ValueError(f"mosaic_epochs is (start, stop), two epochs with 0 <= start <= stop, got "
                             f"{self.mosaic_epochs!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: the official RT-DETR and DETR recipe (both use these), for models that declare no train_defaults
RECIPE = {"lr": 1e-4, "backbone_lr_mult": 0.1, "weight_decay": 1e-4, "clip_max_norm": 0.1, "epochs": 72,
          "warmup_steps": 2000, "schedule": "constant", "flat_epochs": 0, "min_lr_ratio": 1.0, "multiscale": True,
          "mosaic": 0.0, "mixup": 0.0, "no_aug_epochs": 0, "mosaic_style": "grid",
          "ema_decay": 0.9999}
#: what a recipe may set besides TrainConfig fields: keyword arguments of the family's ``criterion()``
RECIPE_EXTRAS = ("criterion",)


def recipe_of(model: nn.Module, name: str | None) -> dict[str, Any]:
    """The training recipe of ``model``: :data:`RECIPE`, under the family's ``train_defaults``, under its named
    recipe ``name`` (``train_recipes[name]``, e.g. D-FINE's "deim"); an unknown name is an error."""
    recipe = {**RECIPE, **getattr(model, "train_defaults", {})}
    if name is not None:
        named = getattr(model, "train_recipes", {})
        if name not in named:
            architecture = getattr(model, "config", {}).get("architecture", type(model).__name__)
            raise ValueError(f"{architecture} has no training recipe {name!r}; "
                             + (f"it has: {', '.join(sorted(named))}" if named else "it declares none")
                             + " (or leave recipe unset for its default)")
        recipe.update(named[name])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(recipe) - fields - set(RECIPE_EXTRAS))
    if unknown:
        raise ValueError(f"{type(model).__name__}'s recipe sets unknown training settings: {', '.join(unknown)}")
    return recipe


#: recipe settings counted in epochs: they scale with ``epochs`` when a run sets another number than the recipe's
EPOCH_SETTINGS = ("no_aug_epochs", "flat_epochs", "mosaic_epochs")


def _with_recipe(config: TrainConfig, model: nn.Module) -> TrainConfig:
    """Fill the fields left at None (or an empty ``mosaic_epochs``) from :func:`recipe_of`. When ``epochs`` is
    given and differs from the recipe's, the recipe's epoch milestones (:data:`EPOCH_SETTINGS`) scale with it (DEIM's
    schedule of 132 epochs run for 33: mosaic in [1, 16) instead of [4, 64)), as the official configs set them per
    length; milestones given explicitly are kept."""
    recipe = recipe_of(model, config.recipe)
    unset = {k: v for k, v in recipe.items() if k not in RECIPE_EXTRAS
             and (getattr(config, k) is None or (k == "mosaic_epochs" and not config.mosaic_epochs))}
    if config.epochs is not None and config.epochs != recipe["epochs"]:
        scale = config.epochs / recipe["epochs"]
        scaled = {k: tuple(round(e * scale) for e in v) if k == "mosaic_epochs" else round(v * scale)
                  for k, v in unset.items() if k in EPOCH_SETTINGS and v}
        if scaled and distributed.rank() == 0:
            print(f"{config.epochs} epochs instead of the recipe's {recipe['epochs']}: its "
                  + ", ".join(f"{k} {unset[k]} -> {v}" for k, v in scaled.items()))
        unset.update(scaled)
    return dataclasses.replace(config, **{k: tuple(v) if k == "mosaic_epochs" else v for k, v in unset.items()})


def _criterion_settings(recipe: dict[str, Any], epochs: int) -> dict[str, Any]:
    """The recipe's ``criterion()`` arguments; those counted in epochs (``*_epoch``, e.g. DEIMv2's
    ``matcher_change_epoch``) scale with ``epochs`` as the recipe's epoch milestones do."""
    settings = dict(recipe.get("criterion", {}))
    if epochs != recipe["epochs"]:
        settings.update({k: round(v * epochs / recipe["epochs"]) for k, v in settings.items()
                         if k.endswith("_epoch") and isinstance(v, int)})
    return settings


def _param_groups(model: nn.Module, lr: float, backbone_mult: float, weight_decay: float) -> list[dict]:
    """The model's own ``param_groups(lr, backbone_lr_mult, weight_decay)`` where it has one (a family's recipe:
    e.g. layer-wise decay); else the backbone at ``lr * backbone_mult`` and no weight decay on 1-d parameters
    (norms, biases); "the backbone" is what ``model.backbone_lr_prefix`` names (default ``"backbone."``; DEIMv2's
    DINOv3 variants: the ViT only, not its adapter). Groups carry a unique ``name`` (logged as ``lr_<name>``,
    ``_no_decay`` aside)."""
    if callable(getattr(model, "param_groups", None)):
        return model.param_groups(lr, backbone_mult, weight_decay)
    prefix = getattr(model, "backbone_lr_prefix", "backbone.")
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith(prefix), p.ndim <= 1), []).append(p)
    return [{"params": ps, "lr": lr * (backbone_mult if bb else 1.0), "weight_decay": 0.0 if flat else weight_decay,
             "name": ("backbone" if bb else "rest") + ("_no_decay" if flat else "")}
            for (bb, flat), ps in sorted(groups.items())]


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The current learning rate of each kind of parameter group: ``lr`` (the detector outside the backbone) and
    ``lr_backbone``; groups that differ only in weight decay share their rate."""
    rates: dict[str, float] = {}
    for group in optimizer.param_groups:
        kind = group.get("name", "rest").removesuffix("_no_decay")
        rates.setdefault("lr" if kind == "rest" else f"lr_{kind}", group["lr"])
    return rates


SCHEDULES = ("constant", "cosine", "flat_cosine")


def _lr_lambda(warmup: int, total: int, schedule: str, drop_steps: Sequence[int] = (), flat: int = 0,
               no_aug: int = 0, min_ratio: float = 1.0):
    """lr factor per step: linear warm-up, then constant or cosine, times 0.1 per passed drop step.

    ``"flat_cosine"`` (DEIM's ``flat_cosine_schedule``, steps counted as its iterations): quadratic warm-up, the
    peak until step ``flat``, cosine down to ``min_ratio`` at step ``total - no_aug``, then ``min_ratio``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")

    def flat_cosine(step: int) -> float:
        if step <= warmup:
            return (step / warmup) ** 2 if warmup else 1.0
        if step <= flat:
            return 1.0
        if step >= total - no_aug:
            return min_ratio
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * (step - flat) / (total - flat - no_aug)))

    def factor(step: int) -> float:
        if schedule == "flat_cosine":
            return flat_cosine(step)
        drop = 0.1 ** sum(step >= d for d in drop_steps)
        if step < warmup:
            return drop * (step + 1) / warmup
        if schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return drop * 0.5 * (1 + math.cos(math.pi * progress))
        return drop
    return factor


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp not in ("auto", "bf16", "fp16", "none"):
        raise ValueError(f"amp must be auto, bf16, fp16 or none, got {amp!r}")
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


class Trainer:
    """Build model, data, optimizer and EMA from a :class:`TrainConfig` (or pass ``model`` to train a module
    you built) and run :meth:`fit`. ``resume`` is a ``.../last`` checkpoint folder to continue from. Without it,
    an output folder that holds a run is refused unless ``overwrite`` (which deletes that run's files)."""

    def __init__(self, config: TrainConfig, model: nn.Module | None = None, resume: str | os.PathLike | None = None,
                 overwrite: bool = False):
        self.cfg = config
        distributed.init_distributed(config.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.out = Path(config.output_dir)
        self._resuming = resume is not None
        self._replaced = [] if resume is not None else self._check_output(overwrite)
        if config.batch_size % self.world:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by {self.world} processes")
        self.device = distributed.rank_device(config.device)
        torch.manual_seed(config.seed + self.rank)  # ranks draw different denoising noise and augmentations
        random.seed(config.seed + self.rank)

        self.train_set, self.val_data, self.data_source = _training_data(config)
        num_classes = config.num_classes or self.train_set.num_classes
        self.model = model if model is not None else self._create_model(num_classes)
        if self.model.num_classes != self.train_set.num_classes:
            raise ValueError(f"the model predicts {self.model.num_classes} classes but {self.data_source} has "
                             f"{self.train_set.num_classes} categories; pass num_classes={self.train_set.num_classes}")
        self.cfg = config = _with_recipe(config, self.model)
        self.recipe = recipe_of(self.model, config.recipe)
        # the model's own resize rule (stretch for RT-DETR, shortest edge for DETR), at the training size
        self.preprocess = Preprocess.from_model(self.model, config.input_size)
        self.input_size = self.preprocess.size[0]
        # multi-scale sizes in steps the model takes (LW-DETR's windowed ViT: multiples of 64)
        self.scale_step = math.lcm(32, int(getattr(self.model, "size_divisor", 32) or 32))
        self.scales = scales = default_scales(self.input_size, self.scale_step) if config.multiscale else None
        if scales and self.preprocess.resize_mode == "stretch":  # the smallest multi-scale size must run too
            from zoo.engine.validate import UsageError

            try:
                self.model.check_input_size(min(scales), min(scales))
            except UsageError as exc:
                raise UsageError(f"multi-scale training at input size {self.input_size} draws sizes down to "
                                 f"{min(scales)}: {exc}; or train without multi-scale (--no-multiscale)") from None
        self.train_set.transforms = (train_transforms(self.preprocess, scales=scales) if config.augment
                                     else eval_transforms(self.preprocess))
        self.train_data = self._mixing(config)
        # what inference needs to use the trained model as trained
        self.model.pretrained_cfg = {**self.model.pretrained_cfg, **self.preprocess.pretrained_cfg(),
                                     "label_names": list(self.train_set.class_names)}
        self.model.to(self.device)

        self.criterion = self.model.criterion(**_criterion_settings(self.recipe, config.epochs))
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, config.lr, config.backbone_lr_mult, config.weight_decay), lr=config.lr)
        if isinstance(config.accumulate, bool) or not isinstance(config.accumulate, int) or config.accumulate < 1:
            raise ValueError(f"accumulate must be a positive int (batches per optimisation step), "
                             f"got {config.accumulate!r}")
        self.steps_per_epoch = len(self.train_set) // (config.batch_size * config.accumulate)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.train_set)} training images is fewer than one batch of {config.batch_size}"
                             + (f" x {config.accumulate} accumulated" if config.accumulate > 1 else ""))
        self.total_steps = self.steps_per_epoch * config.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(config.warmup_steps, self.total_steps, config.schedule,
                                       [e * self.steps_per_epoch for e in config.lr_drops],
                                       flat=config.flat_epochs * self.steps_per_epoch,
                                       no_aug=config.no_aug_epochs * self.steps_per_epoch,
                                       min_ratio=config.min_lr_ratio))
        self.amp_dtype = _amp_dtype(config.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = None
        if config.ema_decay > 0:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=config.ema_decay, use_warmup=True)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None, find_unused_parameters=True)
                    if self.world > 1 else None)
        self.epoch, self.global_step, self.best_ap = 0, 0, -1.0
        self.best_epoch, self.stopped_early, self.per_class = 0, False, {}
        self.reporter = make_reporter(config, self.rank)
        if resume is not None:
            self.load_checkpoint(resume)

    def _check_output(self, overwrite: bool) -> list[str]:
        """The files of an earlier run in the output folder (deleted by :meth:`fit` when ``overwrite``): a new run
        would mix its metrics and checkpoints with them, so without ``overwrite`` they are an error."""
        held = [name for name in RUN_FILES if name != "config.json" and (self.out / name).exists()]
        held = distributed.broadcast_object(held if self.rank == 0 else None)  # rank 0's folder decides
        if held and not overwrite:
            raise FileExistsError(
                f"{self.out} holds a run ({', '.join(held)}); starting again there would overwrite it. Continue it "
                f"with --resume {self.out / 'last'} (train(resume=...)), delete it with --overwrite "
                "(overwrite=True), or choose another --output")
        return [name for name in RUN_FILES if (self.out / name).exists()] if held else []

    def _create_model(self, num_classes: int) -> nn.Module:
        """A fresh model, or the pretrained one with its class heads adapted to the dataset: classes whose name is
        among the weights' labels keep their pretrained rows, the others start from the prior-probability init."""
        from zoo.factory import create_model

        # ImageNet backbone weights for a new run; a resumed one takes every weight from its checkpoint
        backbone = {"pretrained_backbone": self.cfg.pretrained_backbone} \
            if self.cfg.pretrained_backbone and not self._resuming else {}
        if not self.cfg.weights:
            model = create_model(self.cfg.model, num_classes=num_classes, **backbone, **self.cfg.model_args)
            if backbone and self.rank == 0:
                print(f"backbone from {model.load_report}")
            return model
        if self.cfg.pretrained_backbone:
            raise ValueError("pretrained_backbone (--pretrained-backbone) with weights (--weights): the detector "
                             "weights include their backbone; pass one of them")
        names = list(self.train_set.class_names)
        if len(names) != num_classes:
            raise ValueError(f"num_classes={num_classes} but {self.data_source} has {len(names)} categories")
        model = create_model(self.cfg.model, pretrained=self.cfg.weights, class_names=names, **self.cfg.model_args)
        if self.rank == 0:
            print(f"fine-tuning from {model.load_report}")
        return model

    # ------------------------------------------------------------------ loop
    def _loader(self, epoch: int) -> DataLoader:
        sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=self.cfg.seed, drop_last=True)
        sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch * self.world + self.rank)
        if self.train_data is not self.train_set:  # mosaic / mixup until the last no_aug_epochs
            self.train_data.stage = self.data_stage(epoch)
        return DataLoader(self.train_data, batch_size=self.cfg.batch_size // self.world, sampler=sampler,
                          num_workers=self.cfg.num_workers, collate_fn=collate_detection, drop_last=True,
                          generator=generator, persistent_workers=False)

    def _step_size(self) -> int:
        """Batch-level multi-scale size for stretch-resize models (shortest-edge models draw it per image)."""
        if not self.cfg.multiscale or self.preprocess.resize_mode != "stretch" or self._no_aug(self.epoch):
            return self.input_size
        scales = default_scales(self.input_size, self.scale_step)
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.global_step)  # same on every rank
        return scales[int(torch.randint(len(scales), (1,), generator=g))]

    def train_step(self, images: torch.Tensor, targets: list[dict]) -> dict[str, float]:
        """One optimisation step on a (per-process) batch; returns the loss terms averaged over processes."""
        return self.accumulated_step([(images, targets)])

    def accumulated_step(self, batches: Sequence[tuple[torch.Tensor, list[dict]]]) -> dict[str, float]:
        """One optimisation step on the gradients of several batches (``--accumulate``): the losses are normalised
        by the boxes per batch averaged over all of them and each batch's loss is divided by their number, as DDP
        does across processes, so that N batches of B give the gradient of one batch of N*B. Returns the loss
        terms averaged over batches and processes."""
        model = self.ddp or self.model
        model.train()
        size = self._step_size()  # one size for the whole step
        amp, n = self.amp_dtype is not None, len(batches)
        boxes = None
        if n > 1:  # boxes per batch over the step's batches and processes (count_boxes takes it as given)
            boxes = torch.tensor([float(sum(len(t["labels"]) for _, ts in batches for t in ts)) / n])
            if self.world > 1:
                boxes = boxes.to(self.device)
                dist.all_reduce(boxes)
                boxes /= self.world
            boxes = float(boxes.item())
        self.optimizer.zero_grad(set_to_none=True)
        log = None
        for i, (images, targets) in enumerate(batches):
            images = images.to(self.device, non_blocking=True)
            if self.preprocess.resize_mode == "stretch":
                images = multiscale_resize(images, size)
            targets = [{k: t[k].to(self.device) for k in ("labels", "boxes", "size") if k in t} for t in targets]
            extra = self.model.training_inputs(images, targets)  # e.g. denoising queries, pixel mask
            sync = self.ddp.no_sync() if self.ddp is not None and i < n - 1 else contextlib.nullcontext()
            with sync, box_count(boxes):
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=amp):
                    outputs = model(images, **extra)
                losses = self.criterion(outputs, targets)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {self.global_step}: "
                                             + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()))
                self.scaler.scale(loss / n if n > 1 else loss).backward()
            terms = torch.stack([loss.detach().float()] + [v.detach().float() for v in losses.values()])
            log = terms if log is None else log + terms
        if self.cfg.clip_max_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)
        log = log / n if n > 1 else log
        if self.world > 1:
            dist.all_reduce(log)
            log /= self.world
        names = ["loss"] + list(losses)
        return dict(zip(names, log.tolist()))

    def _steps(self, loader: DataLoader):
        """The loader's batches in groups of ``accumulate`` (one optimisation step each; a last incomplete group is
        left out, as the loader leaves out a last incomplete batch)."""
        group = []
        for batch in loader:
            group.append(batch)
            if len(group) == self.cfg.accumulate:
                yield group
                group = []

    def _no_aug(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) is one of the last ``no_aug_epochs``: plain resized images only."""
        return self.cfg.no_aug_epochs > 0 and epoch >= self.cfg.epochs - self.cfg.no_aug_epochs

    def data_stage(self, epoch: int) -> str:
        """What the training data does in ``epoch`` (0-based; :class:`zoo.data.transforms.SampleMixing` stages):
        "plain" in the last ``no_aug_epochs``; with ``mosaic_epochs`` (start, stop), DEIM's policy: "light"
        (flips only) before start, "mix" (mosaic / mixup) in [start, stop), "augment" (no mixing) after; else "mix"."""
        if self._no_aug(epoch):
            return "plain"
        if self.cfg.mosaic_epochs:
            start, stop = self.cfg.mosaic_epochs
            return "light" if epoch < start else "mix" if epoch < stop else "augment"
        return "mix"

    def _mixing(self, config: TrainConfig) -> Any:
        """The training data: the dataset itself, or with mosaic / mixup (zoo.data.transforms.SampleMixing); the
        last ``no_aug_epochs`` use plain resized images (:meth:`_loader` switches)."""
        for name in ("mosaic", "mixup"):
            value = getattr(config, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} is a probability in [0, 1], got {value!r}")
        if isinstance(config.no_aug_epochs, bool) or not isinstance(config.no_aug_epochs, int) \
                or config.no_aug_epochs < 0:
            raise ValueError(f"no_aug_epochs must be a non-negative int, got {config.no_aug_epochs!r}")
        if not config.no_aug_epochs and not config.mosaic and not config.mixup and not config.mosaic_epochs:
            return self.train_set
        light = mosaic = None
        if config.augment:  # DEIM: flips only before mosaic_epochs; a mosaic skips zoom-out and IoU crop
            light = train_transforms(self.preprocess, photometric_p=0.0, zoom_out_p=0.0, iou_crop_p=0.0,
                                     scales=self.scales)
            if config.mosaic_epochs:
                mosaic = train_transforms(self.preprocess, zoom_out_p=0.0, iou_crop_p=0.0, scales=self.scales)
        return SampleMixing(self.train_set, mosaic=config.mosaic, mixup=config.mixup,
                            plain=eval_transforms(self.preprocess), mosaic_size=self.input_size, light=light,
                            mosaic_transforms=mosaic, mosaic_style=config.mosaic_style)

    def fit(self) -> dict[str, Any]:
        """Train from ``self.epoch`` to ``cfg.epochs``; returns the last evaluation metrics (or {})."""
        from tqdm.auto import tqdm

        cfg, metrics = self.cfg, {}
        if self.rank == 0:
            for name in self._replaced:  # overwrite=True: the earlier run's files
                path = self.out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            self._replaced = []
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        while self.epoch < cfg.epochs:
            if hasattr(self.criterion, "set_epoch"):  # e.g. DEIMv2's matcher changes late in training
                self.criterion.set_epoch(self.epoch)
            loader = self._loader(self.epoch)
            bar = tqdm(self._steps(loader), desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="it",
                       total=len(loader) // cfg.accumulate, disable=not cfg.progress or self.rank, dynamic_ncols=True)
            start, sums = time.time(), {}
            for batches in bar:
                logs = self.train_step(*batches[0]) if len(batches) == 1 else self.accumulated_step(batches)
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                rates = learning_rates(self.optimizer)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", **{k: f"{v:.2e}" for k, v in rates.items()})
                if cfg.log_every and self.global_step % cfg.log_every == 0:  # every term, as the criterion names it
                    self._log({"epoch": self.epoch, "step": self.global_step, **rates, **logs})
                    self.reporter.log_step(self.global_step, logs, self.optimizer)
            self.epoch += 1
            epoch_log = {"epoch": self.epoch, "step": self.global_step, "time_s": round(time.time() - start, 2),
                         **{f"train_{k}": v / max(1, len(loader) // cfg.accumulate) for k, v in sums.items()}}
            last = self.epoch == cfg.epochs
            if self.val_data and (last or (cfg.eval_every and self.epoch % cfg.eval_every == 0)):
                metrics = self.evaluate()
                epoch_log.update({f"val_{k}": v for k, v in metrics.items()})
                epoch_log["per_class"] = self.per_class
            self._log(epoch_log)
            self.reporter.log_epoch(self.global_step, epoch_log, self.eval_model)
            improved = bool(metrics) and metrics["AP"] > self.best_ap
            self.save_checkpoint(metrics.get("AP") if metrics else None)
            if improved:
                self.best_epoch = self.epoch
            if self._patience_ran_out(metrics):
                break
        if self.rank == 0:
            self.export(self.out / "final", metrics)
        self.reporter.close()
        return metrics

    def _patience_ran_out(self, metrics: dict[str, float]) -> bool:
        """Early stopping: ``patience`` epochs since the best validation AP (best.safetensors keeps its weights)."""
        if not self.cfg.patience or not metrics or self.epoch - self.best_epoch < self.cfg.patience:
            return False
        self.stopped_early = True
        if self.rank == 0:
            print(f"early stop after epoch {self.epoch}: no better validation AP for {self.epoch - self.best_epoch} "
                  f"epochs (patience {self.cfg.patience}); best AP {self.best_ap:.4f} at epoch {self.best_epoch}, "
                  f"weights in {self.out / 'best.safetensors'}")
        self._log({"epoch": self.epoch, "step": self.global_step, "early_stop": True, "best_epoch": self.best_epoch,
                   "best_AP": self.best_ap})
        return True

    # ------------------------------------------------------------------ evaluation, logging, checkpoints
    @property
    def eval_model(self) -> nn.Module:
        """The EMA model when EMA is on, else the trained model (carrying ``config`` / ``pretrained_cfg``)."""
        if self.ema is None:
            return self.model
        module = self.ema.module
        module.config, module.pretrained_cfg = self.model.config, self.model.pretrained_cfg
        return module

    def evaluate(self) -> dict[str, float]:
        """COCO metrics of :attr:`eval_model` on the validation set, every rank evaluating its shard with rank 0's
        weights (per-rank BatchNorm statistics differ), as ``zoo eval`` of the exported model would."""
        from zoo.engine.evaluate import evaluate

        model = self.eval_model
        distributed.broadcast_module(model)
        result = evaluate(model, *self.val_data, batch_size=8, num_workers=0,
                          device=self.device, input_size=self.input_size,
                          label_map=[self.train_set.label_to_category[i] for i in range(self.model.num_classes)],
                          progress=False, verbose=False)
        self.per_class = result.per_class
        return result.metrics

    def export(self, folder: str | os.PathLike, metrics: dict[str, float] | None = None) -> Path:
        """``save_pretrained`` of :attr:`eval_model`; the card lists ``metrics`` (AP, AP50) as measured here, in
        percent like the manifest and COCO results."""
        from zoo.weights.publish import save_pretrained

        records = []
        if metrics and self.val_data:
            val_source = self.cfg.val_ann or f"{self.cfg.data} (val)"
            dataset = Path(self.cfg.val_ann).stem if self.cfg.val_ann else Path(self.cfg.data).name
            source = f"zoo.engine.trainer evaluation on {val_source} after {self.epoch} epochs"
            records = [{"task": "object-detection", "dataset": dataset, "metric": metric,
                        "value": round(100 * metrics[key], 2), "provenance": "measured by zoo", "source": source}
                       for metric, key in (("box_ap", "AP"), ("box_ap50", "AP50")) if key in metrics]
        model = self.eval_model
        return save_pretrained(model, folder, metrics=records)

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _drop_records_after(self, step: int) -> None:
        """Resuming: forget metrics.jsonl records written after the checkpoint (a run killed mid-epoch), so that
        the steps repeated now are not recorded twice."""
        path = self.out / "metrics.jsonl"
        if self.rank != 0 or not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            path.write_text("".join(line + "\n" for line in kept))

    def _rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG states (gathered on all ranks), so that resuming restores each rank's own."""
        own = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            own["cuda"] = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        if self.world == 1:
            return [own]
        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, own)
        return states

    def _state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        state = {"epoch": self.epoch, "global_step": self.global_step, "best_ap": self.best_ap,
                 "best_epoch": self.best_epoch,
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "config": json.dumps(self.cfg.to_dict()), "rng": rng,
                 "label_names": list(self.train_set.class_names)}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def save_checkpoint(self, ap: float | None = None) -> None:
        """Write ``last/`` (and ``best.safetensors`` when ``ap`` improves, or always without validation).

        Crash-safe: the files are written to ``last.tmp/``, completed by a marker file written last, and rotated into
        place (``last/`` -> ``last.old/``, ``last.tmp/`` -> ``last/``). A kill at any point leaves a complete
        checkpoint under one of the three names (:func:`find_checkpoint` resumes from the newest), and nothing
        deletes the only complete one."""
        rng = self._rng_states()
        if self.rank == 0:
            settle_checkpoints(self.out)  # last/ is now the newest complete checkpoint (if any)
            last, tmp, old = (self.out / name for name in CHECKPOINT_NAMES)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file(safetensors_state(self.model.state_dict()), str(tmp / "model.safetensors"))
            best = ap is None or ap > self.best_ap
            if best and ap is not None:
                self.best_ap = ap
            save_torch(self._state(rng), tmp / "state.pt")
            (tmp / COMPLETE_MARKER).write_text(json.dumps({"epoch": self.epoch, "global_step": self.global_step}))
            shutil.rmtree(old, ignore_errors=True)  # last/ and last.tmp/ are complete
            if last.exists():
                os.replace(last, old)
            os.replace(tmp, last)
            shutil.rmtree(old, ignore_errors=True)
            if best:
                weights = safetensors_state(self.eval_model.state_dict())
                save_file(weights, str(self.out / "best.safetensors.tmp"),
                          metadata={"architecture": self.model.config["architecture"], "epoch": str(self.epoch),
                                    "config": json.dumps(self.model.config),
                                    "pretrained_cfg": json.dumps(self.model.pretrained_cfg)})
                os.replace(self.out / "best.safetensors.tmp", self.out / "best.safetensors")
        distributed.barrier()

    def load_checkpoint(self, folder: str | os.PathLike) -> None:
        """Restore weights and the full training state from a ``last/`` folder (the newest complete checkpoint of
        its run: :func:`find_checkpoint`), to continue exactly."""
        folder = find_checkpoint(folder, announce=self.rank == 0)
        state = load_torch_file(folder / "state.pt")
        saved = json.loads(state.get("config", "{}"))
        current = json.loads(json.dumps(self.cfg.to_dict()))  # as saved: tuples become lists
        changed = [k for k in FIXED_ON_RESUME if k in saved and saved[k] != current[k]]
        if changed:
            raise ValueError(f"cannot resume {folder} with other {', '.join(changed)}: its weights were made for "
                             + ", ".join(f"{k}={saved[k]!r}" for k in changed) + "; start a new run instead")
        labels = state.get("label_names")
        if labels is not None and labels != list(self.train_set.class_names):
            raise ValueError(f"cannot resume {folder} on a dataset with other classes: the checkpoint has {labels}, "
                             f"{self.data_source} has {list(self.train_set.class_names)}")
        self.model.load_state_dict(read_checkpoint(folder / "model.safetensors"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.global_step, self.best_ap = state["epoch"], state["global_step"], state["best_ap"]
        self.best_epoch = int(state.get("best_epoch", self.epoch))
        self._drop_records_after(self.global_step)
        if len(state["rng"]) != self.world:
            raise ValueError(f"checkpoint was written by {len(state['rng'])} processes, this run has {self.world}: "
                             "resume with the same number of processes")
        rng = state["rng"][self.rank]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)


def _training_data(config: TrainConfig) -> tuple[CocoDetection, tuple[Any, Any] | None, str]:
    """The training set, the validation (annotations, image folder) or None, and where the training set is from:
    ``config.data`` (any format, checked: a set with errors is refused) or the COCO json paths."""
    if not config.data:
        val = (config.val_ann, config.val_images) if config.val_ann else None
        return CocoDetection(config.train_images, config.train_ann), val, config.train_ann
    from zoo.data.formats import list_splits, load_split

    if config.train_ann or config.val_ann:
        raise ValueError("pass data= (a dataset folder) or train_ann=/val_ann= (COCO json files), not both")
    train = load_split(config.data, "train")
    has_val = any(s in ("val", "valid", "validation") for s in list_splits(config.data, train.format))
    val = load_split(config.data, "val", train.format) if has_val else None
    if val is not None and val.class_names != train.class_names:
        raise ValueError(f"{config.data}: the val split's classes {val.class_names} differ from train's "
                         f"{train.class_names}")
    return (CocoDetection(train.image_dir, train.to_coco()), (val.to_coco(), val.image_dir) if val else None,
            f"{train.source} ({train.format} train split)")


def resume_config(folder: str | os.PathLike, overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """The settings of the run that wrote the checkpoint ``folder``, with ``overrides`` (settings given explicitly)
    on top; returns ``(config, {setting: (saved, new)} for those that change)``. Settings the checkpoint's weights
    depend on (:data:`FIXED_ON_RESUME`) cannot change."""
    folder = find_checkpoint(folder)
    saved = json.loads(load_torch_file(folder / "state.pt").get("config", "{}"))
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise TypeError(f"unknown training settings: {', '.join(unknown)}")
    config = TrainConfig(**{k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    config.lr_drops, config.mosaic_epochs = tuple(config.lr_drops), tuple(config.mosaic_epochs)
    current = config.to_dict()
    changes = {k: (current[k], v) for k, v in overrides.items()
               if (tuple(v) if isinstance(v, list) else v) != current[k]}
    fixed = [k for k in changes if k in FIXED_ON_RESUME]
    if fixed:
        raise ValueError(f"cannot resume {folder} with other {', '.join(fixed)} ("
                         + "; ".join(f"{k}: saved {changes[k][0]!r}, given {changes[k][1]!r}" for k in fixed)
                         + "): the checkpoint's weights were made for the saved ones; start a new run instead")
    return dataclasses.replace(config, **{k: new for k, (_, new) in changes.items()}), changes


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that reports a failed write as the OSError it is, naming the file (torch's own error for a
    full disk says "unexpected pos ...")."""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
    except (RuntimeError, OSError) as exc:
        cause = exc if isinstance(exc, OSError) else exc.__context__
        if isinstance(cause, OSError) and cause.errno:
            raise OSError(cause.errno, f"could not write {path}: {os.strerror(cause.errno)}") from exc
        raise


def checkpoint_step(folder: str | os.PathLike) -> int | None:
    """The global step of the complete checkpoint in ``folder``; None when it holds none. A folder without the
    completion marker (written by zoo before it had one) is complete when it has both files and is not a
    ``last.tmp/`` (which is written in place); it ranks below every marked one."""
    folder = Path(folder)
    marker = folder / COMPLETE_MARKER
    if marker.is_file():
        try:
            return int(json.loads(marker.read_text())["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    if folder.name != "last.tmp" and (folder / "model.safetensors").is_file() and (folder / "state.pt").is_file():
        return -1
    return None


def find_checkpoint(folder: str | os.PathLike, announce: bool = False) -> Path:
    """The checkpoint folder to resume from ``folder``. For a run's ``last/`` (or ``last.tmp/``, ``last.old/``):
    the newest complete of the three, since a run killed while it rotated them leaves the newest under another name;
    ``announce`` prints which one when it is not ``folder``."""
    folder = Path(folder)
    names = CHECKPOINT_NAMES if folder.name in CHECKPOINT_NAMES else (folder.name,)
    steps = {name: checkpoint_step(folder.parent / name) for name in names}
    complete = {name: step for name, step in steps.items() if step is not None}
    if not complete:
        others = (f"; nor is any of {', '.join(str(folder.parent / n) for n in names if n != folder.name)}"
                  if len(names) > 1 else "")
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (model.safetensors + state.pt, written by "
                                f"zoo train){others}")
    newest = max(complete, key=lambda name: complete[name])  # ties: last/ first
    if newest != folder.name and announce:
        print(f"{folder} is incomplete or older (a run killed while saving): resuming from {folder.parent / newest}, "
              f"the newest complete checkpoint (step {complete[newest]})")
    return folder.parent / newest


def settle_checkpoints(output_dir: str | os.PathLike) -> None:
    """Make ``last/`` the newest complete checkpoint of the run in ``output_dir`` (after a kill between the renames
    of a save it is under ``last.tmp/`` or ``last.old/``). Every step keeps that checkpoint under some name."""
    out = Path(output_dir)
    last, tmp, old = (out / name for name in CHECKPOINT_NAMES)
    complete = {p: s for p in (last, tmp, old) if (s := checkpoint_step(p)) is not None}
    if not complete:
        return
    newest = max(complete, key=lambda p: complete[p])
    if newest == last:
        return
    if newest == tmp:
        if last.exists():  # incomplete or older; last.old/ is not the newest
            shutil.rmtree(old, ignore_errors=True)
            os.replace(last, old)
        os.replace(tmp, last)
    else:  # last.old/ is the newest: last.tmp/ and last/ are incomplete or older
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(last, ignore_errors=True)
        os.replace(old, last)


def train(config: TrainConfig | None = None, resume: str | os.PathLike | None = None, overwrite: bool = False,
          **kwargs: Any) -> Trainer:
    """``train(model="rtdetr_r18vd", train_ann=..., train_images=..., epochs=12)``: build a :class:`Trainer`,
    run it, and return it (``trainer.eval_model`` is the model to keep).

    ``train(resume="runs/a/last", epochs=20)`` continues a run with its saved settings; keyword arguments change
    them (printed), ``config`` replaces them. Without ``resume``, an output folder that holds a run is refused
    unless ``overwrite`` (which deletes that run's files)."""
    if resume is not None and config is None:
        config, changes = resume_config(resume, kwargs)
        if changes and distributed.rank() == 0:
            print(f"resuming {resume} with its saved settings, except: "
                  + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()))
    else:
        config = dataclasses.replace(config or TrainConfig(), **kwargs)
    trainer = Trainer(config, resume=resume, overwrite=overwrite)
    trainer.fit()
    return trainer
