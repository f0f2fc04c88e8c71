"""Video throughput of ``model.predict(video, stream=True)``: frames per second by batch size, next to decoding alone
and decoding + annotated-video writing (``zoo predict clip.mp4``), so the cost of each stage shows.

A clip is generated first (the bundled shapes image, shifted per frame, H.264 at 30 fps); the model has random
weights (no download), so only speed is measured. Each row is the best of ``--repeats`` passes over the clip (the
least disturbed by other processes on a shared machine).

    python benchmarks/bench_video.py --model rtdetr_r18vd --frames 64 --width 640 --height 480 --batch-sizes 1 4 8
"""
from __future__ import annotations

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import zoo
from zoo.data.video import VideoReader, VideoWriter
from zoo.engine.video import annotate_video


def make_clip(path: Path, frames: int, width: int, height: int) -> None:
    image = np.asarray(Image.open(Path(zoo.__file__).parent / "assets" / "shapes_demo.png").resize((width, height)))
    with VideoWriter(path, Fraction(30), width, height) as writer:
        for i in range(frames):
            writer.write(np.ascontiguousarray(np.roll(image, 4 * i, axis=1)))


def best_fps(run, frames: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return frames / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="rtdetr_r18vd")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = zoo.create_model(args.model).to(args.device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        make_clip(clip, args.frames, args.width, args.height)

        def decode() -> None:
            with VideoReader(clip) as reader:
                for _ in reader:
                    pass

        rows = [("decode only", "-", best_fps(decode, args.frames, args.repeats))]
        model.predict(str(clip), batch_size=max(args.batch_sizes), score_threshold=0.5)  # warm-up
        for batch_size in args.batch_sizes:
            fps = best_fps(lambda: list(model.predict(str(clip), stream=True, batch_size=batch_size)),
                           args.frames, args.repeats)
            rows.append(("predict stream", str(batch_size), fps))
        batch_size = max(args.batch_sizes)
        rows.append(("predict + draw + write (zoo predict)", str(batch_size),
                     best_fps(lambda: annotate_video(model, clip, Path(tmp) / "out", batch_size=batch_size),
                              args.frames, args.repeats)))
    print(f"{args.model} on {args.device}, {args.frames} frames of {args.width}x{args.height}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("| stage | batch | frames/s |\n|---|---|---|")
    for stage, batch, fps in rows:
        print(f"| {stage} | {batch} | {fps:.1f} |")


if __name__ == "__main__":
    main()
