"""``zoo predict``: detect objects in images and videos, write annotated copies and the detections as JSON.

Images are sharded under ``torchrun`` and resumable (:mod:`zoo.engine.predict_files`); videos, webcams and stream
URLs give an annotated .mp4 and per-frame JSON lines (:mod:`zoo.engine.video`).

Also holds the model options every inference command shares (``NAME``, ``--weights``, ``--checkpoint``,
``--device``, ``--size``), so that predict, eval and benchmark read them the same way.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

#: --random-weights builds the model from this seed, so that every process (and every run) has the same one
RANDOM_WEIGHTS_SEED = 0
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """NAME, the weights, --backend, --device, --size, --dtype and --compile, identical for every inference command."""
    parser.add_argument("name", metavar="NAME", help="model name, e.g. rtdetr_r18vd (see `zoo list`); with "
                                                     "--backend onnxruntime also an .onnx file from `zoo export`")
    add_weights_arguments(parser)
    parser.add_argument("--backend", choices=("torch", "onnxruntime", "openvino"), default=None,
                        help="run the model in PyTorch (default), onnxruntime or OpenVINO (NAME exported once to a "
                             "cache, or a file from `zoo export`); an .onnx NAME runs in onnxruntime, an .xml one "
                             "in OpenVINO")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--size", type=_positive_int, default=None, metavar="S",
                        help="input size override (default: the model's pretrained_cfg)")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="precision of the weights and inputs (postprocessing stays fp32; default fp32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (slow first batch)")


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """--weights TAG | --checkpoint PATH | --random-weights."""
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", metavar="TAG", default=None,
                         help="pretrained weights tag (create_model(NAME, pretrained=TAG)); 'default' for the "
                              "default weights")
    weights.add_argument("--checkpoint", metavar="PATH", default=None,
                         help="local checkpoint file (zoo, official or transformers layout)")
    weights.add_argument("--random-weights", action="store_true",
                         help="run with random (untrained) weights, seeded (seed 0: the same model in every process "
                              "and run); without this, a model with default weights uses them and one without weights "
                              "is refused")


def create_model_from_args(args: argparse.Namespace, random_ok: bool = False):
    """``create_model(NAME)`` with the weights that --weights / --checkpoint / --random-weights name.

    Without any of them, a model uses its default weights (as ``pretrained=True``); one without default weights is
    refused, unless ``random_ok`` (timing does not depend on the weights)."""
    from zoo.factory import create_model

    _check_name(args.name)
    pretrained = _pretrained(args, random_ok)
    if pretrained or args.checkpoint:
        return create_model(args.name, pretrained=pretrained, checkpoint_path=args.checkpoint)
    import torch

    if args.random_weights:
        print(f"{args.name}: random weights, seed {RANDOM_WEIGHTS_SEED} (the same model in every process)",
              file=sys.stderr)
    with torch.random.fork_rng(devices=[]):  # seeded: under torchrun every rank must build the same model
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return create_model(args.name, pretrained=False)


def _check_name(name: str) -> None:
    """A file or folder given as NAME (images first, or a saved model without its prefix) is named as such."""
    if name.startswith(("hf-hub:", "local-dir:")) or not os.path.exists(name):
        return
    hint = (f"; a save_pretrained folder is local-dir:{name}" if os.path.isdir(name) else
            "; an exported model is an .onnx file" if name.lower().endswith(".onnx") else "")
    raise ValueError(f"NAME {name} is a {'folder' if os.path.isdir(name) else 'file'}, not a model name: the model "
                     f"comes first (e.g. rtdetr_r18vd; `zoo list` shows them), then the images{hint}")


def backend_of(args: argparse.Namespace) -> str:
    """``--backend``, else onnxruntime for an .onnx NAME and OpenVINO for an .xml one (the file holds the model and
    its weights), else torch."""
    name = args.name.lower()
    exported = "onnxruntime" if name.endswith(".onnx") else "openvino" if name.endswith(".xml") else None
    chosen = getattr(args, "backend", None)
    if exported and chosen == "torch":
        raise ValueError(f"{args.name} is an exported model: it runs with --backend {exported} (the default for "
                         f"a {Path(name).suffix} NAME)")
    return chosen or exported or "torch"


def model_from_args(args: argparse.Namespace, random_ok: bool = False, deploy: bool = True):
    """Build the model the shared options describe on the requested device (this rank's GPU under torchrun), ready
    for inference: fused (``deploy()``, unless ``deploy`` is False), in ``--dtype``, compiled with ``--compile``;
    or the onnxruntime session of ``--backend onnxruntime``."""
    from zoo.engine.distributed import rank_device
    from zoo.engine.inference import prepare_for_inference

    device = rank_device(args.device)  # checked before building a model
    backend = backend_of(args)
    if backend in ("onnxruntime", "openvino"):
        from zoo.export.runtime import OnnxRuntimeDetector, OpenVinoDetector

        if args.dtype != "fp32" or args.compile:
            raise ValueError(f"--dtype and --compile apply to the torch backend; for a half-precision {backend} "
                             "model export it with `zoo export --half`")
        is_file = args.name.lower().endswith((".onnx", ".xml")) or os.path.isdir(args.name)  # (an IR folder)
        if is_file and (args.weights or args.checkpoint):
            raise ValueError(f"{args.name} is an exported file: it holds its weights, drop --weights/--checkpoint")
        model = args.name if is_file else create_model_from_args(args, random_ok)
        detector = OpenVinoDetector if backend == "openvino" else OnnxRuntimeDetector
        return detector(model, device=device), device
    model = create_model_from_args(args, random_ok).to(device)
    if args.size is not None:
        from zoo.data.images import Preprocess

        Preprocess.from_model(model, args.size)  # a --size the model cannot run on: a usage error before any work
    return prepare_for_inference(model, args.dtype, args.compile, deploy=deploy), device


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


def _positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a usage error, exit code 2, otherwise)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _threshold(text: str) -> float:
    """argparse type: the score threshold, checked by the same function as ``predict(score_threshold=...)``."""
    from zoo.engine.validate import score_threshold

    try:
        return score_threshold(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from exc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect objects in images and videos",
                       description="Detect objects in images; write annotated images and detections.json to --out. "
                                   "An image that cannot be read does not stop the others: every good image is "
                                   "processed and written, the bad ones are listed at the end with the reason, and "
                                   "the exit code is then 1. Under torchrun the images are shared by the ranks; a "
                                   "rerun with the same --out skips the images already done. Videos, webcam indices "
                                   "(0) and stream URLs (rtsp://, http://) give OUT/NAME.mp4 and OUT/NAME.jsonl (one "
                                   "record per frame; needs zoo[video]).")
    add_model_arguments(p)
    p.add_argument("images", nargs="+", metavar="SOURCE",
                   help="image files, folders of images, video files, webcam indices or stream URLs")
    p.add_argument("--out", default="predictions", metavar="DIR", help="output folder (default: ./predictions)")
    p.add_argument("--threshold", type=_threshold, default=None, metavar="T",
                   help="minimum score (default 0.5; 0.3 with --track, whose ByteTrack keeps tracks alive on low "
                        "scores)")
    p.add_argument("--top-k", type=_positive_int, default=100, metavar="K", help="detections kept per image")
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="B", help="images per batch")
    p.add_argument("--recursive", action="store_true", help="also read the images in sub-folders of a folder")
    p.add_argument("--no-draw", action="store_true", help="write detections.json only")
    p.add_argument("--track", nargs="?", const="bytetrack", default=None, choices=("bytetrack", "sort", "ocsort"),
                   help="videos: follow each object with a tracker (default bytetrack; needs zoo[track]): track ids "
                        "in the JSON lines, drawn with a trail per object")
    p.add_argument("--slice", nargs=2, type=_positive_int, default=None, metavar=("H", "W"),
                   help="images: detect small objects tile by tile, tiles of H x W pixels plus the whole image, "
                        "merged by class-wise NMS")
    p.add_argument("--overlap", type=_overlap, default=0.2, metavar="F",
                   help="with --slice: fraction of a tile that neighbouring tiles share (default 0.2)")
    p.add_argument("--timeout", type=_positive_float, default=30.0, metavar="S",
                   help="seconds a stream or camera may take to answer, and to send each frame (default 30)")
    p.set_defaults(func=_predict)


def _overlap(text: str) -> float:
    """argparse type: --overlap, a fraction in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


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


def _predict(args: argparse.Namespace) -> int:
    from zoo.data.video import is_video_source
    from zoo.engine.distributed import process_group, rank, world_size
    from zoo.engine.predict_files import predict_files

    videos = [source for source in args.images if is_video_source(source)]
    if args.threshold is None:
        args.threshold = 0.3 if args.track else 0.5
    if args.slice and videos:
        raise ValueError(f"--slice applies to images; drop it for the videos ({', '.join(videos)})")
    if args.track and len(videos) < len(args.images):
        raise ValueError(f"--track follows objects over the frames of a video; {len(args.images) - len(videos)} "
                         "source(s) are not videos (file suffixes: see zoo.data.video.VIDEO_SUFFIXES, webcam "
                         "indices, stream URLs): predict images without --track")
    with process_group(args.device):  # under torchrun the ranks share the images; rank 0 writes detections.json
        if videos and world_size() > 1:
            raise ValueError(f"videos are not sharded under torchrun ({', '.join(videos)}): run zoo predict on "
                             "videos in one process")
        paths = _expand([source for source in args.images if source not in videos], args.recursive)
        model, device = model_from_args(args)
        for source in videos:
            _predict_video(args, model, device, source)
        records = []
        if paths:
            records = predict_files(model, paths, args.out, model_name=args.name,
                                    weights=args.weights or args.checkpoint, score_threshold=args.threshold,
                                    top_k=args.top_k, batch_size=args.batch_size, device=device,
                                    input_size=args.size, draw=not args.no_draw,
                                    slice=tuple(args.slice) if args.slice else None, overlap=args.overlap)
        if rank() != 0:
            return 0
    failed = [r for r in records or [] if "error" in r]
    if failed:
        print(f"{len(failed)} of {len(paths)} images could not be read:", file=sys.stderr)
        for record in failed:
            print(f"  {record['source']}: {record['error']}", file=sys.stderr)
        return 1
    return 0


def _predict_video(args: argparse.Namespace, model, device, source: str) -> None:
    from zoo.engine.video import annotate_video
    from zoo.engine.predict_files import count_summary

    make_tracker = None
    if args.track:
        from zoo.engine.track import Tracker

        make_tracker = lambda frame_rate: Tracker(args.track, frame_rate=frame_rate)  # noqa: E731
    summary = annotate_video(model, source, args.out, draw_boxes=not args.no_draw, progress=True,
                             score_threshold=args.threshold, top_k=args.top_k, batch_size=args.batch_size,
                             device=device, input_size=args.size, make_tracker=make_tracker, timeout=args.timeout)
    found = count_summary(summary["detections"])
    print(f"{summary['source']}: {summary['frames']} frames at {summary['fps']:.2f} fps"
          + (" (interrupted)" if summary["interrupted"] else "") + (f", detections: {found}" if found else ""))
    print(f"wrote {summary['jsonl']}" + (f" and {summary['video']}" if summary["video"] else ""))
