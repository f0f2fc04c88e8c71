"""A small-data fine-tuning recipe, measured: ``rtdetr_mobilenetv3_small`` (ImageNet MobileNetV3 backbone with
``--pretrained-backbone``, which needs the Hub or a filled cache) trained on a few hundred synthetic shapes images
written as a YOLO folder, on CPU. Prints the validation AP / AP50 of every epoch and the minutes it took (and the
load average: the machine may be shared).

    python benchmarks/bench_finetune_small.py --pretrained-backbone                  # the recipe: 200 images
    python benchmarks/bench_finetune_small.py --train 40 --val 20 --epochs 2         # a quick check of the script

The recipe (documented in docs/training.md, "A small-data recipe"): narrow encoder/decoder (as the bundled demo),
AdamW lr 2e-4 with the backbone at 0.1x, 50 warm-up steps then cosine, EMA 0.999, mosaic 0.5 and mixup 0.1 with the
usual augmentations, the last 2 epochs without augmentation, early stopping with patience 4.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

#: the narrow encoder / decoder of the bundled demo weights (docs/training.md): CPU-trainable
NARROW = {"encoder": {"hidden_dim": 64, "dim_feedforward": 256, "num_heads": 4, "depth_mult": 0.34},
          "decoder": {"hidden_dim": 64, "dim_feedforward": 256, "num_heads": 4, "num_queries": 30,
                      "num_denoising": 20, "num_decoder_layers": 2}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=200, help="training images")
    p.add_argument("--val", type=int, default=50, help="validation images")
    p.add_argument("--image-size", type=int, default=128, help="synthetic image side = training input size")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--mosaic", type=float, default=0.5)
    p.add_argument("--mixup", type=float, default=0.1)
    p.add_argument("--no-aug-epochs", type=int, default=2)
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--pretrained-backbone", action="store_true",
                   help="ImageNet weights for the MobileNetV3 backbone (from the weight manifest; needs the Hub)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="keep the data and the run here (default: a temporary folder)")
    args = p.parse_args()

    import torch

    import zoo
    from zoo.data.formats import convert
    from zoo.data.synthetic import write_synthetic_dataset

    torch.set_num_threads(args.threads)
    root = Path(args.out or tempfile.mkdtemp(prefix="bench_finetune_"))
    write_synthetic_dataset(root / "coco", num_train=args.train, num_val=args.val, image_size=args.image_size)
    convert(root / "coco", root / "yolo", "yolo")
    torch.manual_seed(0)
    model = zoo.create_model("rtdetr_mobilenetv3_small", num_classes=3, pretrained_backbone=args.pretrained_backbone,
                             **NARROW)
    start = time.time()
    _, run = zoo.train(model, data=root / "yolo", epochs=args.epochs, output_dir=root / "run",
                       input_size=args.image_size, batch_size=args.batch_size, lr=args.lr, backbone_lr_mult=0.1,
                       warmup_steps=50, schedule="cosine", ema_decay=0.999, mosaic=args.mosaic, mixup=args.mixup,
                       no_aug_epochs=args.no_aug_epochs, patience=args.patience, multiscale=False, num_workers=0,
                       progress=False)
    minutes = (time.time() - start) / 60
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    print(f"rtdetr_mobilenetv3_small (narrow), backbone {'ImageNet' if args.pretrained_backbone else 'random'}; "
          f"{args.train} train / {args.val} val images at {args.image_size}, YOLO folder {root / 'yolo'}; "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    print("| epoch | training minutes (cumulative) | train loss | val AP | val AP50 |\n|---|---|---|---|---|")
    elapsed = 0.0
    for r in records:
        if "val_AP" in r:
            elapsed += r["time_s"] / 60
            print(f"| {r['epoch']} | {elapsed:.1f} | {r['train_loss']:.3f} | {r['val_AP']:.3f} | {r['val_AP50']:.3f} |")
    stop = next((r for r in records if r.get("early_stop")), None)
    print(f"total {minutes:.1f} min" + (f"; stopped early, best epoch {stop['best_epoch']}" if stop else ""))


if __name__ == "__main__":
    main()
