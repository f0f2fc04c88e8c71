"""``zoo predict``: detect objects in images, write annotated copies and a JSON of the detections.

Also holds the model options every inference command shares (``NAME``, ``--weights``, ``--checkpoint``,
``--device``, ``--size``), so that predict, eval and benchmark read them the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
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
    weights.add_argument("--random-weights", action="store_true",
                         help="run with random (untrained) weights; without this, a model with default weights uses "
                              "them and one without weights is refused")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--size", type=_positive_int, default=None, metavar="S",
                        help="input size override (default: the model's pretrained_cfg)")


def model_from_args(args: argparse.Namespace, random_ok: bool = False):
    """Build the model the shared options describe, on the requested device, in eval mode.

    Without --weights, --checkpoint or --random-weights, a model uses its default weights (as ``pretrained=True``);
    one without default weights is refused, unless ``random_ok`` (timing does not depend on the weights).
    """
    from zoo.engine.device import resolve_device
    from zoo.factory import create_model

    device = resolve_device(args.device)  # fail before building a model on a device that does not exist
    model = create_model(args.name, pretrained=_pretrained(args, random_ok), checkpoint_path=args.checkpoint)
    return model.to(device).eval(), device


def _pretrained(args: argparse.Namespace, random_ok: bool) -> bool | str:
    """``create_model``'s ``pretrained`` for the options: never random weights that nobody asked for."""
    from zoo.factory import parse_model_name

    if args.weights:
        return True if args.weights == "default" else args.weights
    source, location, tag = parse_model_name(args.name)
    if args.checkpoint or args.random_weights or random_ok or source != "zoo" or tag:
        return False  # the weights are named (a checkpoint, a tag, a repo or folder) or random on purpose
    from zoo.weights.manifest import load_manifest
    from zoo.registry import resolve_model_name

    architecture = resolve_model_name(location)
    tag = load_manifest().default_tag(architecture)
    if tag is None:
        raise ValueError(f"{args.name} has no default pretrained weights: pass --weights TAG (`zoo list "
                         f"--pretrained '{architecture}.*'` lists them), --checkpoint PATH, or --random-weights to run "
                         "it untrained (its detections are meaningless)")
    print(f"{args.name}: default weights {architecture}.{tag} (--weights, --checkpoint or --random-weights to "
          "change)", file=sys.stderr)
    return True


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
    """argparse type: the score threshold, checked by the same function as ``predict(score_threshold=...)``."""
    from zoo.engine.validate import score_threshold

    try:
        return score_threshold(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from exc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect objects in images",
                       description="Detect objects in images; write annotated images and detections.json to --out. "
                                   "An image that cannot be read does not stop the others: every good image is "
                                   "processed and written, the bad ones are listed at the end with the reason, and "
                                   "the exit code is then 1.")
    add_model_arguments(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--out", default="predictions", metavar="DIR", help="output folder (default: ./predictions)")
    p.add_argument("--threshold", type=_threshold, default=0.5, metavar="T", help="minimum score (default 0.5)")
    p.add_argument("--top-k", type=_positive_int, default=100, metavar="K", help="detections kept per image")
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="B", help="images per batch")
    p.add_argument("--recursive", action="store_true", help="also read the images in sub-folders of a folder")
    p.add_argument("--no-draw", action="store_true", help="write detections.json only")
    p.set_defaults(func=_predict)


def _expand(paths: list[str], recursive: bool = False) -> list[str]:
    """Folders become their image files (sorted; sub-folders with ``recursive``, else they are reported as skipped);
    files are kept as given, even with unusual suffixes."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            entries = sorted(Path(path).rglob("*") if recursive else Path(path).iterdir())
            images = [str(p) for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
            if not images:
                raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}"
                                        + ("" if recursive else " (--recursive reads sub-folders)"))
            skipped = [] if recursive else [p for p in entries if p.is_dir()]
            if skipped:
                print(f"{path}: skipped {len(skipped)} sub-folder(s) ({', '.join(p.name for p in skipped[:5])}"
                      f"{' ...' if len(skipped) > 5 else ''}); --recursive reads them", file=sys.stderr)
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


def _read(paths: list[tuple[str, str]], failed: dict[str, str]) -> list[tuple[str, str, object]]:
    """``(path, output name, image tensor)`` for every ``(path, output name)`` whose file decodes; the others go to
    ``failed`` with the reason."""
    from zoo.data.images import load_image

    loaded = []
    for path, name in paths:
        try:
            loaded.append((path, name, load_image(path)))
        except (ValueError, TypeError, OSError) as exc:
            failed[path] = str(exc)
    return loaded


def _predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from zoo.engine.draw import draw
    from zoo.engine.predict import predict

    paths = _expand(args.images, args.recursive)
    model, device = model_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records, failed = [], {}
    named = list(zip(paths, _output_names(paths)))
    with tqdm(total=len(paths), unit="img", desc="predict") as bar:
        for start in range(0, len(paths), args.batch_size):
            loaded = _read(named[start:start + args.batch_size], failed)
            results = predict(model, [image for _, _, image in loaded], score_threshold=args.threshold,
                              top_k=args.top_k, batch_size=args.batch_size, device=device, input_size=args.size)
            for (path, name, image), det in zip(loaded, results):
                det.source = path
                record = det.to_dict()
                if not args.no_draw:
                    draw(image, det).save(out / name, quality=95)
                    record["annotated"] = str(out / name)
                records.append(record)
                bar.write(f"{path}: {len(det)} detections" + _summary(det.label_names))
            bar.update(min(args.batch_size, len(paths) - start))
    with open(out / "detections.json", "w") as f:
        json.dump({"model": args.name, "weights": args.weights or args.checkpoint, "threshold": args.threshold,
                   "images": records, "failed": [{"source": p, "error": e} for p, e in failed.items()]}, f)
    print(f"wrote {out / 'detections.json'}" + ("" if args.no_draw else f" and {len(records)} annotated images"))
    if failed:
        print(f"{len(failed)} of {len(paths)} images could not be read:", file=sys.stderr)
        for path, error in failed.items():
            print(f"  {path}: {error}", file=sys.stderr)
        return 1
    return 0


def _summary(label_names: list[str]) -> str:
    """`` (2 circle, 1 square)``: the detections per label, most frequent first ("" when there are none)."""
    counts: dict[str, int] = {}
    for label in label_names:
        counts[label] = counts.get(label, 0) + 1
    return (" (" + ", ".join(f"{n} {label}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1])) + ")"
            if counts else "")
