"""Training and fine-tuning of zoo detectors: one loop for a single process and for ``torchrun`` (DDP).

AdamW with a backbone learning-rate multiplier, linear warm-up (then constant or cosine), gradient clipping,
EMA of the weights (timm ``ModelEmaV3``), AMP where the device has it, periodic COCO evaluation of the EMA model,
a ``metrics.jsonl`` log and checkpoints that resume exactly:

    output_dir/last/model.safetensors   training weights
    output_dir/last/state.pt            optimizer, EMA, scheduler, scaler, epoch/step and RNG states
                                        (plain tensors and numbers: loads with torch.load(weights_only=True))
    output_dir/best.safetensors         EMA weights with the best validation AP (or the last EMA without val)
    output_dir/final/                   ``save_pretrained`` of the final EMA model (config.json,
                                        model.safetensors, README.md model card with the measured metrics)

Under ``torchrun`` every rank builds the same model and data; ranks read disjoint shards of one shuffled order
(``DistributedSampler``), so a global batch equals a single-process batch of the same images. Validation is
sharded too (:mod:`zoo.engine.distributed`, as ``zoo eval`` under torchrun).
"""
from __future__ import annotations

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
from zoo.data.transforms import default_scales, eval_transforms, multiscale_resize, train_transforms
from zoo.engine import distributed
from zoo.engine.reporting import make_reporter
from zoo.weights.checkpoint import load_torch_file, read_checkpoint

__all__ = ["TrainConfig", "Trainer", "train"]


#: training settings a resumed run cannot change: the checkpoint's weights were made for them
FIXED_ON_RESUME = ("model", "model_args", "num_classes", "weights")


@dataclass
class TrainConfig:
    """Everything a run depends on (saved in ``output_dir/config.json`` and in every checkpoint)."""

    model: str = "rtdetr_r18vd"
    train_ann: str = ""
    train_images: str = ""
    val_ann: str | None = None
    val_images: str | None = None
    output_dir: str = "runs/train"
    weights: str | None = None            # pretrained tag to fine-tune from (head adapted to num_classes)
    num_classes: int | None = None        # default: the training set's category count
    model_args: dict[str, Any] = field(default_factory=dict)  # architecture overrides (create_model kwargs)
    input_size: int | None = None         # square training/eval size; default: the model's pretrained_cfg
    epochs: int = 72
    batch_size: int = 16                  # global batch (split over processes)
    # optimiser recipe: None takes the family's default (Detector.train_defaults, else the values in RECIPE)
    lr: float | None = None
    backbone_lr_mult: float | None = None
    weight_decay: float | None = None
    warmup_steps: int = 2000
    schedule: str = "constant"            # after warm-up: "constant" (official RT-DETR) or "cosine"
    lr_drops: tuple[int, ...] = ()        # epochs after which the lr is multiplied by 0.1 (MultiStepLR)
    clip_max_norm: float | None = None
    ema_decay: float = 0.9999             # 0 disables EMA
    amp: str = "auto"                     # auto (bf16/fp16 on CUDA, off on CPU), bf16, fp16, none
    augment: bool = True
    multiscale: bool = True
    eval_every: int = 1                   # epochs; 0 = only at the end
    num_workers: int = 2
    seed: int = 0
    device: str | None = None
    log_every: int = 10
    progress: bool = True
    report_to: str = "none"               # experiment logging: "none" or "tensorboard" (zoo.engine.reporting)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: the official RT-DETR and DETR recipe (both use these), for models that declare no train_defaults
RECIPE = {"lr": 1e-4, "backbone_lr_mult": 0.1, "weight_decay": 1e-4, "clip_max_norm": 0.1}


def _with_recipe(config: TrainConfig, model: nn.Module) -> TrainConfig:
    """Fill the optimiser fields left at None from the model's ``train_defaults`` (then :data:`RECIPE`)."""
    defaults = {**RECIPE, **getattr(model, "train_defaults", {})}
    return dataclasses.replace(config, **{k: v for k, v in defaults.items() if getattr(config, k) is None})


def _param_groups(model: nn.Module, lr: float, backbone_mult: float, weight_decay: float) -> list[dict]:
    """Backbone at ``lr * backbone_mult``; no weight decay on 1-d parameters (norms, biases, embeddings' none)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("backbone."), p.ndim <= 1), []).append(p)
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


def _lr_lambda(warmup: int, total: int, schedule: str, drop_steps: Sequence[int] = ()):
    """lr factor per step: linear warm-up, then constant or cosine, times 0.1 per passed drop step."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")

    def factor(step: int) -> float:
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
    you built) and run :meth:`fit`. ``resume`` is a ``.../last`` checkpoint folder to continue from."""

    def __init__(self, config: TrainConfig, model: nn.Module | None = None, resume: str | os.PathLike | None = None):
        self.cfg = config
        distributed.init_distributed(config.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if config.batch_size % self.world:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by {self.world} processes")
        self.device = distributed.rank_device(config.device)
        torch.manual_seed(config.seed + self.rank)  # ranks draw different denoising noise and augmentations
        random.seed(config.seed + self.rank)

        self.train_set = CocoDetection(config.train_images, config.train_ann)
        num_classes = config.num_classes or self.train_set.num_classes
        self.model = model if model is not None else self._create_model(num_classes)
        if self.model.num_classes != self.train_set.num_classes:
            raise ValueError(f"the model predicts {self.model.num_classes} classes but {config.train_ann} has "
                             f"{self.train_set.num_classes} categories; pass num_classes={self.train_set.num_classes}")
        self.cfg = config = _with_recipe(config, self.model)
        # the model's own resize rule (stretch for RT-DETR, shortest edge for DETR), at the training size
        self.preprocess = Preprocess.from_model(self.model, config.input_size)
        self.input_size = self.preprocess.size[0]
        scales = default_scales(self.input_size) if config.multiscale else None
        if scales and self.preprocess.resize_mode == "stretch":  # the smallest multi-scale size must run too
            from zoo.engine.validate import UsageError

            try:
                self.model.check_input_size(min(scales), min(scales))
            except UsageError as exc:
                raise UsageError(f"multi-scale training at input size {self.input_size} draws sizes down to "
                                 f"{min(scales)}: {exc}; or train without multi-scale (--no-multiscale)") from None
        self.train_set.transforms = (train_transforms(self.preprocess, scales=scales) if config.augment
                                     else eval_transforms(self.preprocess))
        # what inference needs to use the trained model as trained
        self.model.pretrained_cfg = {**self.model.pretrained_cfg, **self.preprocess.pretrained_cfg(),
                                     "label_names": list(self.train_set.class_names)}
        self.model.to(self.device)

        self.criterion = self.model.criterion()
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.model, config.lr, config.backbone_lr_mult, config.weight_decay), lr=config.lr)
        self.steps_per_epoch = len(self.train_set) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.train_set)} training images is fewer than one batch of {config.batch_size}")
        self.total_steps = self.steps_per_epoch * config.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(config.warmup_steps, self.total_steps, config.schedule,
                                       [e * self.steps_per_epoch for e in config.lr_drops]))
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
        self.out = Path(config.output_dir)
        self.reporter = make_reporter(config, self.rank)
        if resume is not None:
            self.load_checkpoint(resume)

    def _create_model(self, num_classes: int) -> nn.Module:
        """A fresh model, or the pretrained one with its class heads adapted to the dataset: classes whose name is
        among the weights' labels keep their pretrained rows, the others start from the prior-probability init."""
        from zoo.factory import create_model

        if not self.cfg.weights:
            return create_model(self.cfg.model, num_classes=num_classes, **self.cfg.model_args)
        names = list(self.train_set.class_names)
        if len(names) != num_classes:
            raise ValueError(f"num_classes={num_classes} but {self.cfg.train_ann} has {len(names)} categories")
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
        return DataLoader(self.train_set, batch_size=self.cfg.batch_size // self.world, sampler=sampler,
                          num_workers=self.cfg.num_workers, collate_fn=collate_detection, drop_last=True,
                          generator=generator, persistent_workers=False)

    def _step_size(self) -> int:
        """Batch-level multi-scale size for stretch-resize models (shortest-edge models draw it per image)."""
        if not self.cfg.multiscale or self.preprocess.resize_mode != "stretch":
            return self.input_size
        scales = default_scales(self.input_size)
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.global_step)  # same on every rank
        return scales[int(torch.randint(len(scales), (1,), generator=g))]

    def train_step(self, images: torch.Tensor, targets: list[dict]) -> dict[str, float]:
        """One optimisation step on a (per-process) batch; returns the loss terms averaged over processes."""
        model = self.ddp or self.model
        model.train()
        images = images.to(self.device, non_blocking=True)
        if self.preprocess.resize_mode == "stretch":
            images = multiscale_resize(images, self._step_size())
        targets = [{k: t[k].to(self.device) for k in ("labels", "boxes", "size") if k in t} for t in targets]
        extra = self.model.training_inputs(images, targets)  # e.g. denoising queries, pixel mask
        amp = self.amp_dtype is not None
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=amp):
            outputs = model(images, **extra)
        losses = self.criterion(outputs, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.global_step}: "
                                     + ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items()))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.clip_max_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)
        log = torch.stack([loss.detach().float()] + [v.detach().float() for v in losses.values()])
        if self.world > 1:
            dist.all_reduce(log)
            log /= self.world
        names = ["loss"] + list(losses)
        return dict(zip(names, log.tolist()))

    def fit(self) -> dict[str, Any]:
        """Train from ``self.epoch`` to ``cfg.epochs``; returns the last evaluation metrics (or {})."""
        from tqdm.auto import tqdm

        cfg, metrics = self.cfg, {}
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        while self.epoch < cfg.epochs:
            loader = self._loader(self.epoch)
            bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not cfg.progress or self.rank,
                       unit="it", dynamic_ncols=True)
            start, sums = time.time(), {}
            for images, targets in bar:
                logs = self.train_step(images, targets)
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                rates = learning_rates(self.optimizer)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", **{k: f"{v:.2e}" for k, v in rates.items()})
                if cfg.log_every and self.global_step % cfg.log_every == 0:
                    self._log({"epoch": self.epoch, "step": self.global_step, **rates, "loss": logs["loss"]})
                    self.reporter.log_step(self.global_step, logs, self.optimizer)
            self.epoch += 1
            epoch_log = {"epoch": self.epoch, "step": self.global_step, "time_s": round(time.time() - start, 2),
                         **{f"train_{k}": v / max(1, len(loader)) for k, v in sums.items()
                            if k.count("_") <= 1}}  # total and last-layer terms
            last = self.epoch == cfg.epochs
            if cfg.val_ann and (last or (cfg.eval_every and self.epoch % cfg.eval_every == 0)):
                metrics = self.evaluate()
                epoch_log.update({f"val_{k}": v for k, v in metrics.items()})
            self._log(epoch_log)
            self.reporter.log_epoch(self.global_step, epoch_log, self.eval_model)
            self.save_checkpoint(metrics.get("AP") if metrics else None)
        if self.rank == 0:
            self.export(self.out / "final", metrics)
        self.reporter.close()
        return metrics

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
        result = evaluate(model, self.cfg.val_ann, self.cfg.val_images, batch_size=8, num_workers=0,
                          device=self.device, input_size=self.input_size,
                          label_map=[self.train_set.label_to_category[i] for i in range(self.model.num_classes)],
                          progress=False, verbose=False)
        return result.metrics

    def export(self, folder: str | os.PathLike, metrics: dict[str, float] | None = None) -> Path:
        """``save_pretrained`` of :attr:`eval_model`; the card lists ``metrics`` (AP, AP50) as measured here, in
        percent like the manifest and COCO results."""
        from zoo.weights.publish import save_pretrained

        records = []
        if metrics and self.cfg.val_ann:
            dataset = Path(self.cfg.val_ann).stem
            source = f"zoo.engine.trainer evaluation on {self.cfg.val_ann} after {self.epoch} epochs"
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
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "config": json.dumps(self.cfg.to_dict()), "rng": rng,
                 "label_names": list(self.train_set.class_names)}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def save_checkpoint(self, ap: float | None = None) -> None:
        """Write ``last/`` (and ``best.safetensors`` when ``ap`` improves, or always without validation).

        Atomic: the files are written to ``last.tmp/`` (``best.safetensors.tmp``) and renamed into place, so that a
        kill during a save leaves the previous checkpoint whole, never a model and a state of different steps."""
        rng = self._rng_states()
        if self.rank == 0:
            last, tmp = self.out / "last", self.out / "last.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(tmp / "model.safetensors"))
            best = ap is None or ap > self.best_ap
            if best and ap is not None:
                self.best_ap = ap
            torch.save(self._state(rng), tmp / "state.pt")
            old = self.out / "last.old"
            shutil.rmtree(old, ignore_errors=True)
            if last.exists():
                os.replace(last, old)
            os.replace(tmp, last)
            shutil.rmtree(old, ignore_errors=True)
            if best:
                weights = {k: v.contiguous() for k, v in self.eval_model.state_dict().items()}
                save_file(weights, str(self.out / "best.safetensors.tmp"),
                          metadata={"architecture": self.model.config["architecture"], "epoch": str(self.epoch),
                                    "config": json.dumps(self.model.config),
                                    "pretrained_cfg": json.dumps(self.model.pretrained_cfg)})
                os.replace(self.out / "best.safetensors.tmp", self.out / "best.safetensors")
        distributed.barrier()

    def load_checkpoint(self, folder: str | os.PathLike) -> None:
        """Restore weights and the full training state from a ``last/`` folder, to continue exactly."""
        folder = Path(folder)
        if not (folder / "model.safetensors").is_file() or not (folder / "state.pt").is_file():
            raise FileNotFoundError(f"{folder} is not a checkpoint folder (model.safetensors + state.pt)")
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
                             f"{self.cfg.train_ann} has {list(self.train_set.class_names)}")
        self.model.load_state_dict(read_checkpoint(folder / "model.safetensors"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.global_step, self.best_ap = state["epoch"], state["global_step"], state["best_ap"]
        self._drop_records_after(self.global_step)
        if len(state["rng"]) != self.world:
            raise ValueError(f"checkpoint was written by {len(state['rng'])} processes, this run has {self.world}: "
                             "resume with the same number of processes")
        rng = state["rng"][self.rank]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)


def resume_config(folder: str | os.PathLike, overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """The settings of the run that wrote the checkpoint ``folder``, with ``overrides`` (settings given explicitly)
    on top; returns ``(config, {setting: (saved, new)} for those that change)``. Settings the checkpoint's weights
    depend on (:data:`FIXED_ON_RESUME`) cannot change."""
    folder = Path(folder)
    if not (folder / "state.pt").is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder (model.safetensors + state.pt)")
    saved = json.loads(load_torch_file(folder / "state.pt").get("config", "{}"))
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise TypeError(f"unknown training settings: {', '.join(unknown)}")
    config = TrainConfig(**{k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    config.lr_drops = tuple(config.lr_drops)
    current = config.to_dict()
    changes = {k: (current[k], v) for k, v in overrides.items()
               if (tuple(v) if isinstance(v, list) else v) != current[k]}
    fixed = [k for k in changes if k in FIXED_ON_RESUME]
    if fixed:
        raise ValueError(f"cannot resume {folder} with other {', '.join(fixed)} ("
                         + "; ".join(f"{k}: saved {changes[k][0]!r}, given {changes[k][1]!r}" for k in fixed)
                         + "): the checkpoint's weights were made for the saved ones; start a new run instead")
    return dataclasses.replace(config, **{k: new for k, (_, new) in changes.items()}), changes


def train(config: TrainConfig | None = None, resume: str | os.PathLike | None = None, **kwargs: Any) -> Trainer:
    """``train(model="rtdetr_r18vd", train_ann=..., train_images=..., epochs=12)``: build a :class:`Trainer`,
    run it, and return it (``trainer.eval_model`` is the model to keep).

    ``train(resume="runs/a/last", epochs=20)`` continues a run with its saved settings; keyword arguments change
    them (printed), ``config`` replaces them."""
    if resume is not None and config is None:
        config, changes = resume_config(resume, kwargs)
        if changes and distributed.rank() == 0:
            print(f"resuming {resume} with its saved settings, except: "
                  + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()))
    else:
        config = dataclasses.replace(config or TrainConfig(), **kwargs)
    trainer = Trainer(config, resume=resume)
    trainer.fit()
    return trainer
