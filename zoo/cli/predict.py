"""``zoo predict``: detect objects in images, write annotated copies and a JSON of the detections.

Also holds the model options every inference command shares (``NAME``, ``--weights``, ``--checkpoint``,
``--device``, ``--size``), so that predict, eval and benchmark read them the same way.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """NAME, --weights, --checkpoint, --device and --size, identical for every inference command."""
    parser.add_argument("name", metavar="NAME", help="model name, e.g. rtdetr_r18vd (see `zoo list`)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", metavar="TAG", default=None,
                         help="pretrained weights tag (create_model(NAME, pretrained=TAG)); 'default' for the "
                              "default weights")
    weights.add_argument("--checkpoint", metavar="PATH", default=None,
                         help="local checkpoint file (zoo, official or transformers layout)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--size", type=_positive_int, default=None, metavar="S",
                        help="input size override (default: the model's pretrained_cfg)")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="precision of the weights and inputs (postprocessing stays fp32; default fp32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (slow first batch)")


def model_from_args(args: argparse.Namespace, deploy: bool = True):
    """Build the model the shared options describe on the requested device, ready for inference: fused
    (``deploy()``, unless ``deploy`` is False), in ``--dtype``, compiled with ``--compile``."""
    from zoo.engine.device import resolve_device
    from zoo.engine.inference import prepare_for_inference
    from zoo.factory import create_model

    device = resolve_device(args.device)  # fail before building a model on a device that does not exist
    pretrained = True if args.weights == "default" else (args.weights or False)
    model = create_model(args.name, pretrained=pretrained, checkpoint_path=args.checkpoint).to(device)
    return prepare_for_inference(model, args.dtype, args.compile, deploy=deploy), device


def int_at_least(minimum: int):
    """argparse type: an int >= ``minimum`` (a usage error, exit code 2, otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return value
    return parse


_positive_int = int_at_least(1)


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect objects in images",
                       description="Detect objects in images; write annotated images and detections.json to --out.")
    add_model_arguments(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--out", default="predictions", metavar="DIR", help="output folder (default: ./predictions)")
    p.add_argument("--threshold", type=_threshold, default=0.5, metavar="T", help="minimum score (default 0.5)")
    p.add_argument("--top-k", type=_positive_int, default=100, metavar="K", help="detections kept per image")
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="B", help="images per batch")
    p.add_argument("--no-draw", action="store_true", help="write detections.json only")
    p.set_defaults(func=_predict)


def _expand(paths: list[str]) -> list[str]:
    """Folders become their image files (sorted); files are kept as given, even with unusual suffixes."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            images = sorted(str(p) for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
            found.extend(images)
        elif os.path.exists(path):
            found.append(path)
        else:
            raise FileNotFoundError(f"image not found: {path}")
    return found


def _output_names(paths: list[str]) -> list[str]:
    """Unique annotated-image file names: the input's stem, numbered when two inputs share it."""
    names, seen = [], {}
    for path in paths:
        stem = Path(path).stem
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(f"{stem}.jpg" if count == 0 else f"{stem}_{count}.jpg")
    return names


def _predict(args: argparse.Namespace) -> int:
    from zoo.engine.draw import draw
    from zoo.engine.predict import predict

    paths = _expand(args.images)
    model, device = model_from_args(args)
    results = predict(model, paths, score_threshold=args.threshold, top_k=args.top_k, batch_size=args.batch_size,
                      device=device, input_size=args.size, progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for path, name, det in zip(paths, _output_names(paths), results):
        record = det.to_dict()
        if not args.no_draw:
            draw(path, det).save(out / name, quality=95)
            record["annotated"] = str(out / name)
        records.append(record)
        counts: dict[str, int] = {}
        for label in det.label_names:
            counts[label] = counts.get(label, 0) + 1
        summary = ", ".join(f"{n} {label}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        print(f"{path}: {len(det)} detections" + (f" ({summary})" if summary else ""))
    with open(out / "detections.json", "w") as f:
        json.dump({"model": args.name, "weights": args.weights or args.checkpoint, "threshold": args.threshold,
                   "images": records}, f)
    print(f"wrote {out / 'detections.json'}" + ("" if args.no_draw else f" and {len(records)} annotated images"))
    return 0
