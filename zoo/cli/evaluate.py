"""``zoo eval``: COCO box AP of a model on an annotation file and its images, or on a split of a dataset folder in
any format zoo reads (pycocotools, official protocol), with per-class AP / AP50 and, with ``--out``, the
precision-recall curves and the confusion matrix as PNGs.

Under ``torchrun`` the ranks share the images and rank 0 prints and writes the results (``world_size`` in
metrics.json says how many processes shared the work)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from zoo.cli.predict import add_model_arguments, int_at_least, model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="COCO evaluation (pycocotools)",
                       description="Evaluate a model on a dataset: top-300 detections per image, no score threshold, "
                                   "pycocotools COCOeval. Prints the 12 standard numbers and a per-class table; "
                                   "--out also writes pr_curve.png and confusion_matrix.png (zoo[plots]).")
    add_model_arguments(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", default=None, metavar="DIR",
                        help="dataset folder (COCO, Roboflow, YOLO or Pascal VOC; format detected)")
    source.add_argument("--ann", default=None, metavar="FILE",
                        help="COCO annotation file (instances_val2017.json), with --images")
    p.add_argument("--images", default=None, metavar="DIR", help="folder with the images of --ann")
    p.add_argument("--split", default="val", help="the split of --data to evaluate (default: val)")
    p.add_argument("--plot-threshold", type=float, default=0.5, metavar="SCORE",
                   help="score threshold of the confusion matrix (default 0.5)")
    p.add_argument("--batch-size", type=int_at_least(1), default=8, metavar="B", help="images per batch")
    p.add_argument("--workers", type=int_at_least(0), default=2, metavar="N", help="image-loading worker processes")
    p.add_argument("--out", default=None, metavar="DIR", help="write metrics.json and detections.json here")
    p.add_argument("--label-map", type=_label_map, default=None, metavar="JSON",
                   help="model label -> category id, as JSON: a list ([1, 2, 3]: label i is id list[i]) or an object "
                        "({\"0\": 1, ...}), or a .json file holding one; needed when the model's classes are not the "
                        "annotations' categories in id order")
    p.set_defaults(func=_eval, parser=p)


def _label_map(text: str) -> list[int] | dict[int, int]:
    """argparse type: ``--label-map`` as a list or {label: id} object of ints, inline JSON or a .json file."""
    source = Path(text)
    try:
        value = json.loads(source.read_text() if text.endswith(".json") and source.is_file() else text)
        if isinstance(value, list) and all(isinstance(v, int) for v in value):
            return value
        if isinstance(value, dict):
            return {int(k): int(v) for k, v in value.items()}
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"not a JSON list or object of integers: {text!r} ({exc})") from None
    raise argparse.ArgumentTypeError(f"expected a JSON list of category ids or a {{label: id}} object, got {text!r}")


def _eval(args: argparse.Namespace) -> int:
    from zoo.engine.distributed import process_group, rank
    from zoo.engine.evaluate import evaluate

    from zoo.engine.evaluate import format_per_class
    from zoo.engine.validate import score_threshold

    if (args.ann is None) != (args.images is None):
        args.parser.error("--ann FILE and --images DIR go together (or use --data DIR)")
    threshold = score_threshold(args.plot_threshold)
    source = {"data": args.data, "split": args.split} if args.data else {"ann": args.ann, "images": args.images}
    with process_group(args.device):
        model, device = model_from_args(args)
        result = evaluate(model, args.ann, args.images, batch_size=args.batch_size, num_workers=args.workers,
                          device=device, input_size=args.size, label_map=args.label_map, data=args.data,
                          split=args.split)
        if rank() != 0:
            return 0
    print(json.dumps({k: round(v, 4) for k, v in result.metrics.items()}))
    print(format_per_class(result.per_class))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "metrics.json", "w") as f:
            json.dump({"model": args.name, "weights": args.weights or args.checkpoint, **source,
                       "input_size": args.size, "world_size": result.world_size,
                       "metrics": result.metrics, "per_class": result.per_class}, f, indent=1)
        with open(out / "detections.json", "w") as f:
            json.dump(result.detections, f)
        print(f"wrote {out / 'metrics.json'} and {out / 'detections.json'}")
        _write_plots(result, out, threshold)
    return 0


def _write_plots(result, out: Path, threshold: float) -> None:
    """pr_curve.png and confusion_matrix.png; without matplotlib, say how to get them (the metrics are written)."""
    import sys

    from zoo.engine.eval_plots import write_eval_plots
    from zoo.extras import MissingExtraError

    try:
        paths = write_eval_plots(result, out, threshold)
    except MissingExtraError as exc:
        print(f"zoo eval: no plots: {exc}", file=sys.stderr)
        return
    print("wrote " + " and ".join(str(p) for p in paths))
