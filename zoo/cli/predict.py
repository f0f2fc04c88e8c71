"""``zoo predict``: detect objects in images and videos, write annotated copies and the detections as JSON.

Images are sharded under ``torchrun`` and resumable (:mod:`zoo.engine.predict_files`); videos, webcams and stream
URLs give an annotated .mp4 and per-frame JSON lines (:mod:`zoo.data.video`).

Also holds the model options every inference command shares (``NAME``, ``--weights``, ``--checkpoint``,
``--device``, ``--size``), so that predict, eval and benchmark read them the same way.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """NAME, --weights, --checkpoint, --backend, --device and --size, identical for every inference command."""
    parser.add_argument("name", metavar="NAME", help="model name, e.g. rtdetr_r18vd (see `zoo list`); with "
                                                     "--backend onnxruntime also an .onnx file from `zoo export`")
    add_weights_arguments(parser)
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                        help="run the model in PyTorch (default) or onnxruntime (NAME exported once to a cache)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--size", type=_positive_int, default=None, metavar="S",
                        help="input size override (default: the model's pretrained_cfg)")


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """--weights TAG | --checkpoint PATH."""
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", metavar="TAG", default=None,
                         help="pretrained weights tag (create_model(NAME, pretrained=TAG)); 'default' for the "
                              "default weights")
    weights.add_argument("--checkpoint", metavar="PATH", default=None,
                         help="local checkpoint file (zoo, official or transformers layout)")


def create_model_from_args(args: argparse.Namespace):
    """``create_model(NAME)`` with the weights that --weights / --checkpoint name."""
    from zoo.factory import create_model

    pretrained = True if args.weights == "default" else (args.weights or False)
    return create_model(args.name, pretrained=pretrained, checkpoint_path=args.checkpoint)


def model_from_args(args: argparse.Namespace):
    """Build the model the shared options describe, on the requested device, in eval mode."""
    from zoo.engine.distributed import rank_device

    device = rank_device(args.device)  # checked before building a model; this rank's GPU under torchrun
    if getattr(args, "backend", "torch") == "onnxruntime":
        from zoo.export.runtime import OnnxRuntimeDetector

        is_file = args.name.lower().endswith(".onnx")
        if is_file and (args.weights or args.checkpoint):
            raise ValueError(f"{args.name} is an exported file: it holds its weights, drop --weights/--checkpoint")
        return OnnxRuntimeDetector(args.name if is_file else create_model_from_args(args), device=device), device
    return create_model_from_args(args).to(device).eval(), device


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
    p = sub.add_parser("predict", help="detect objects in images and videos",
                       description="Detect objects in images; write annotated images and detections.json to --out. "
                                   "Videos, webcam indices (0) and stream URLs (rtsp://, http://) give OUT/NAME.mp4 "
                                   "and OUT/NAME.jsonl (one record per frame; needs zoo[video]).")
    add_model_arguments(p)
    p.add_argument("images", nargs="+", metavar="SOURCE",
                   help="image files, folders of images, video files, webcam indices or stream URLs")
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


def _predict(args: argparse.Namespace) -> int:
    from zoo.data.video import is_video_source
    from zoo.engine.distributed import process_group, world_size
    from zoo.engine.predict_files import predict_files

    videos = [source for source in args.images if is_video_source(source)]
    with process_group(args.device):  # under torchrun the ranks share the images; rank 0 writes detections.json
        if videos and world_size() > 1:
            raise ValueError(f"videos are not sharded under torchrun ({', '.join(videos)}): run zoo predict on "
                             "videos in one process")
        paths = _expand([source for source in args.images if source not in videos])
        model, device = model_from_args(args)
        for source in videos:
            _predict_video(args, model, device, source)
        if paths:
            predict_files(model, paths, args.out, model_name=args.name, weights=args.weights or args.checkpoint,
                          score_threshold=args.threshold, top_k=args.top_k, batch_size=args.batch_size,
                          device=device, input_size=args.size, draw=not args.no_draw)
    return 0


def _predict_video(args: argparse.Namespace, model, device, source: str) -> None:
    from zoo.data.video import annotate_video
    from zoo.engine.predict_files import count_summary

    summary = annotate_video(model, source, args.out, draw_boxes=not args.no_draw, progress=True,
                             score_threshold=args.threshold, top_k=args.top_k, batch_size=args.batch_size,
                             device=device, input_size=args.size)
    found = count_summary(summary["detections"])
    print(f"{summary['source']}: {summary['frames']} frames at {summary['fps']:.2f} fps"
          + (" (interrupted)" if summary["interrupted"] else "") + (f", detections: {found}" if found else ""))
    print(f"wrote {summary['jsonl']}" + (f" and {summary['video']}" if summary["video"] else ""))
