"""Tracking quality and speed: the bundled demo detector (rtdetr_mobilenetv3_small.shapes_demo, 96 px) with each
tracker of Roboflow's ``trackers`` on generated clips of moving shapes with known identities (crossings, shapes
passing over each other, a pole that hides them; zoo.data.synthetic.render_tracking_clip), encoded as H.264 and
read back, so the frames per second include decoding, detection and tracking. HOTA / IDF1 / MOTA / ID switches are
computed by trackeval (zoo.engine.track.tracking_metrics); objects less than half visible are not required.

    python benchmarks/bench_tracking.py --frames 300 --seeds 0 1 2 --objects 3 5
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

import zoo
from zoo.data.synthetic import render_tracking_clip
from zoo.data.video import VideoWriter
from zoo.engine.track import TRACKERS, tracking_metrics

DEMO = "rtdetr_mobilenetv3_small.shapes_demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--objects", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--trackers", nargs="+", default=list(TRACKERS), choices=list(TRACKERS))
    parser.add_argument("--threshold", type=float, default=0.3, help="detector score threshold")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = zoo.create_model(DEMO, pretrained=True).eval()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for num_objects in args.objects:
            for seed in args.seeds:
                frames, truth = render_tracking_clip(seed, args.frames, num_objects=num_objects)
                path = Path(tmp) / f"clip_{num_objects}_{seed}.mp4"
                with VideoWriter(path, Fraction(30), 96, 96) as writer:
                    for frame in frames:
                        writer.write(frame)
                model.predict(frames[:args.batch_size], batch_size=args.batch_size)  # warm-up
                start = time.perf_counter()
                for _ in model.predict(str(path), stream=True, score_threshold=args.threshold,
                                       batch_size=args.batch_size):
                    pass
                detect_fps = args.frames / (time.perf_counter() - start)
                for name in args.trackers:
                    start = time.perf_counter()
                    tracked = model.track(str(path), tracker=name, score_threshold=args.threshold,
                                          batch_size=args.batch_size)
                    fps = args.frames / (time.perf_counter() - start)
                    rows.append((num_objects, seed, name, tracking_metrics(truth, tracked), fps, detect_fps))
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; torch threads {torch.get_num_threads()}; "
          f"{args.frames} frames of 96x96 per clip, detector threshold {args.threshold}")
    print("| objects | seed | tracker | HOTA | DetA | AssA | IDF1 | MOTA | ID sw. | tracks (true) | fps "
          "| fps detect only |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for num_objects, seed, name, m, fps, detect_fps in rows:
        print(f"| {num_objects} | {seed} | {name} | {m['HOTA']:.3f} | {m['DetA']:.3f} | {m['AssA']:.3f} | "
              f"{m['IDF1']:.3f} | {m['MOTA']:.3f} | {m['IDSW']} | {m['predicted_tracks']} ({m['true_tracks']}) | "
              f"{fps:.1f} | {detect_fps:.1f} |")
    print("\nmean over clips:")
    print("| tracker | HOTA | IDF1 | MOTA | ID switches (total) | fps |")
    print("|---|---|---|---|---|---|")
    for name in args.trackers:
        mine = [r for r in rows if r[2] == name]
        print(f"| {name} | {np.mean([r[3]['HOTA'] for r in mine]):.3f} | {np.mean([r[3]['IDF1'] for r in mine]):.3f} "
              f"| {np.mean([r[3]['MOTA'] for r in mine]):.3f} | {sum(r[3]['IDSW'] for r in mine)} | "
              f"{np.mean([r[4] for r in mine]):.1f} |")


if __name__ == "__main__":
    main()
