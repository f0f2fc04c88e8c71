"""``zoo train``: train or fine-tune a detector on a dataset folder (COCO, Roboflow, YOLO or VOC; single process or
under torchrun)."""
from __future__ import annotations

import argparse
import json
from zoo.cli.predict import int_at_least


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train or fine-tune a detector",
                       description="Train NAME on a dataset folder (COCO, Roboflow, YOLO or VOC). Multi-GPU / multi-process: "
                                   "torchrun --nproc_per_node N -m zoo train ...")
    p.add_argument("name", metavar="NAME", help="architecture, e.g. rtdetr_r18vd (see `zoo list`)")
    p.add_argument("--data", required=True, metavar="DIR",
                   help="dataset folder: COCO (train.json + train/, val.json + val/, or COCO's own layout), a Roboflow "
                        "COCO export, YOLO (data.yaml) or Pascal VOC; the format is detected (see `zoo data check`)")
    p.add_argument("--weights", metavar="TAG", default=None, help="fine-tune from these pretrained weights")
    p.add_argument("--pretrained-backbone", nargs="?", const=True, default=False, metavar="TAG",
                   help="start from ImageNet weights for the timm backbone (from the manifest; optionally a tag, "
                        "e.g. ra_in1k); the rest of the detector starts from its initialisation")
    p.add_argument("--num-classes", type=int_at_least(1), default=None,
                   help="classes (default: the dataset's categories)")
    p.add_argument("--output", default="runs/train", metavar="DIR", help="checkpoints and metrics.jsonl")
    again = p.add_mutually_exclusive_group()  # an OUTPUT that holds a run needs one of these
    again.add_argument("--resume", default=None, metavar="DIR",
                       help="continue from a checkpoint folder (OUTPUT/last; the newest complete one of its run)")
    again.add_argument("--overwrite", action="store_true",
                       help="start again in an OUTPUT that holds a run, deleting its checkpoints, metrics and final/ "
                            "(without it such a folder is refused)")
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help="a training recipe the family declares instead of its default one, e.g. deim for D-FINE "
                        "(MAL loss, mosaic / mixup on DEIM's epoch schedule, flat-cosine lr); options given here "
                        "win over it")
    p.add_argument("--epochs", type=int_at_least(1), default=None, help="default: the recipe's (72 for RT-DETR)")
    p.add_argument("--batch-size", type=int_at_least(1), default=16, help="global batch size")
    p.add_argument("--lr", type=float, default=None, help="default: the family's recipe (1e-4)")
    p.add_argument("--backbone-lr-mult", type=float, default=None, help="default: the family's recipe (0.1)")
    p.add_argument("--weight-decay", type=float, default=None, help="default: the family's recipe (1e-4)")
    p.add_argument("--warmup-steps", type=int_at_least(0), default=None, help="default: the recipe's (2000)")
    p.add_argument("--schedule", choices=("constant", "cosine", "flat_cosine"), default=None,
                   help="lr after warm-up; default: the recipe's (constant)")
    p.add_argument("--flat-epochs", type=int_at_least(0), default=None, metavar="N",
                   help="flat_cosine: epochs at the peak lr before the cosine decay")
    p.add_argument("--min-lr-ratio", type=float, default=None, metavar="R",
                   help="flat_cosine: the lr at the end of the decay, as a fraction of the peak")
    p.add_argument("--lr-drops", type=int, nargs="*", default=[], metavar="EPOCH",
                   help="epochs after which the lr is multiplied by 0.1")
    p.add_argument("--clip-max-norm", type=float, default=None, help="default: the family's recipe (0.1)")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="0 disables EMA; default: the family's recipe (0.9999)")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto")
    p.add_argument("--size", type=int_at_least(1), default=None,
                   help="input size: the square side (models resized to a square) or the shortest side "
                        "(models that keep the aspect ratio); default: the model's")
    p.add_argument("--no-augment", action="store_true", help="resize only")
    p.add_argument("--no-multiscale", action="store_true", help="no multi-scale training (default: the recipe's)")
    p.add_argument("--eval-every", type=int_at_least(0), default=1, help="epochs between evaluations (0: at the end)")
    p.add_argument("--workers", type=int_at_least(0), default=2, help="data loading processes (0: in the main one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--model-args", default="{}", metavar="JSON",
                   help='architecture overrides, e.g. \'{"num_queries": 100}\'')
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report-to", choices=("none", "tensorboard"), default="none",
                   help="experiment logging: tensorboard writes OUTPUT/tensorboard (needs zoo[logging])")
    tune = p.add_argument_group("fine-tuning")
    tune.add_argument("--accumulate", type=int, default=1, metavar="N",
                      help="batches per optimisation step (gradient accumulation: N x --batch-size per step)")
    tune.add_argument("--patience", type=int, default=0, metavar="N",
                      help="stop after N epochs without a better validation AP (0: never); best.safetensors keeps "
                           "the best")
    tune.add_argument("--mosaic", type=float, default=None, metavar="P",
                      help="probability of a 4-image mosaic (default: the recipe's, 0)")
    tune.add_argument("--mixup", type=float, default=None, metavar="P",
                      help="probability of mixing in another image (default: the recipe's, 0)")
    tune.add_argument("--no-aug-epochs", type=int, default=None, metavar="N",
                      help="the last N epochs without mosaic, mixup, random augmentation or multi-scale")
    tune.add_argument("--mosaic-epochs", type=int, nargs=2, default=None, metavar=("START", "STOP"),
                      help="DEIM's policy: mosaic / mixup only in epochs [START, STOP) (0-based), flips only before")
    tune.add_argument("--mosaic-style", choices=("grid", "deim"), default=None,
                      help="grid: 4 images in the tiles of a random centre; deim: DEIM's (4 images at half the input "
                           "size in a 2 x 2 grid, then a random affine); default: the recipe's (grid)")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from zoo.engine.distributed import process_group
    from zoo.engine.trainer import TrainConfig, train

    try:
        model_args = json.loads(args.model_args)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--model-args is not valid JSON: {exc}") from None
    if not isinstance(model_args, dict):
        raise ValueError("--model-args must be a JSON object")
    settings = {  # TrainConfig field: (value, the option that sets it)
        "model": (args.name, "name"), "data": (args.data, "data"),
        "output_dir": (args.output, "output"), "weights": (args.weights, "weights"),
        "pretrained_backbone": (args.pretrained_backbone, "pretrained_backbone"),
        "num_classes": (args.num_classes, "num_classes"), "model_args": (model_args, "model_args"),
        "input_size": (args.size, "size"), "lr_drops": (tuple(args.lr_drops), "lr_drops"),
        "augment": (not args.no_augment, "no_augment"),
        "multiscale": (False if args.no_multiscale else None, "no_multiscale"),
        "mosaic_epochs": (tuple(args.mosaic_epochs or ()), "mosaic_epochs"),
        "num_workers": (args.workers, "workers"), "progress": (not args.no_progress, "no_progress"),
        **{k: (getattr(args, k), k) for k in ("epochs", "batch_size", "lr", "backbone_lr_mult", "weight_decay",
                                              "warmup_steps", "schedule", "clip_max_norm", "ema_decay", "amp",
                                              "eval_every", "seed", "device", "report_to", "accumulate", "patience",
                                              "mosaic", "mixup", "no_aug_epochs", "recipe", "flat_epochs",
                                              "min_lr_ratio", "mosaic_style")}}
    with process_group(args.device):  # torchrun's group, destroyed at the end
        if args.resume:  # the checkpoint's settings, except those given on this command line
            given = _given_options(args)
            trainer = train(resume=args.resume, **{k: v for k, (v, option) in settings.items() if option in given})
        else:
            trainer = train(TrainConfig(**{k: v for k, (v, _) in settings.items()}), overwrite=args.overwrite)
    if trainer.rank == 0:
        print(f"done: {trainer.epoch} epochs{' (stopped early)' if trainer.stopped_early else ''}, best AP "
              f"{trainer.best_ap:.4f}" + (f" at epoch {trainer.best_epoch}" if trainer.val_data else "")
              + f"; weights in {trainer.cfg.output_dir}/best.safetensors")
    return 0


def _given_options(args: argparse.Namespace) -> set[str]:
    """The destinations of the options given on the command line (not left at their defaults)."""
    unset = object()
    parser = argparse.ArgumentParser(add_help=False)
    register(parser.add_subparsers(dest="command"))
    given = argparse.Namespace(**{a.dest: unset for a in _train_parser(parser)._actions})
    _train_parser(parser).parse_args(args.argv[args.argv.index("train") + 1:], namespace=given)
    return {k for k, v in vars(given).items() if v is not unset}


def _train_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices["train"]
