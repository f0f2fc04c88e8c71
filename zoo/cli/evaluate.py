"""``zoo eval``: COCO box AP of a model on an annotation file and its images (pycocotools, official protocol).

Under ``torchrun`` the ranks share the images and rank 0 prints and writes the results (``world_size`` in
metrics.json says how many processes shared the work)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoo.cli.predict import add_model_arguments, int_at_least, model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="COCO evaluation (pycocotools)",
                       description="Evaluate a model on a COCO-format dataset: top-300 detections per image, no "
                                   "score threshold, pycocotools COCOeval. Prints the 12 standard numbers.")
    add_model_arguments(p)
    p.add_argument("--ann", required=True, metavar="FILE", help="COCO annotation file (instances_val2017.json)")
    p.add_argument("--images", required=True, metavar="DIR", help="folder with the annotated images")
    p.add_argument("--batch-size", type=int_at_least(1), default=8, metavar="B", help="images per batch")
    p.add_argument("--workers", type=int_at_least(0), default=2, metavar="N", help="image-loading worker processes")
    p.add_argument("--out", default=None, metavar="DIR", help="write metrics.json and detections.json here")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from zoo.engine.distributed import process_group, rank
    from zoo.engine.evaluate import evaluate

    with process_group(args.device):
        model, device = model_from_args(args)
        result = evaluate(model, args.ann, args.images, batch_size=args.batch_size, num_workers=args.workers,
                          device=device, input_size=args.size)
        if rank() != 0:
            return 0
    print(json.dumps({k: round(v, 4) for k, v in result.metrics.items()}))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "metrics.json", "w") as f:
            json.dump({"model": args.name, "weights": args.weights or args.checkpoint, "ann": args.ann,
                       "input_size": args.size, "world_size": result.world_size,
                       "metrics": result.metrics}, f, indent=1)
        with open(out / "detections.json", "w") as f:
            json.dump(result.detections, f)
        print(f"wrote {out / 'metrics.json'} and {out / 'detections.json'}")
    return 0
