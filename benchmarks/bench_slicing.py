"""Sliced inference: recall at IoU 0.5 of the bundled demo detector (rtdetr_mobilenetv3_small.shapes_demo, trained at
96 px) on generated large images of many small shapes (zoo.data.synthetic.render_crowded_image), whole-image vs.
tile by tile, with the time each takes (best of ``--repeats``) and the number of detections kept.

    python benchmarks/bench_slicing.py --sizes 384 768 --objects 40 120 --tiles 96 128 --overlaps 0.2
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou

import zoo
from zoo.data.synthetic import render_crowded_image

DEMO = "rtdetr_mobilenetv3_small.shapes_demo"


def recall(truth: torch.Tensor, boxes: torch.Tensor, iou_threshold: float = 0.5) -> float:
    """Objects matched one-to-one (Hungarian on IoU) by a detection with IoU >= ``iou_threshold``."""
    if not len(boxes):
        return 0.0
    iou = box_iou(truth, boxes).numpy()
    rows, cols = linear_sum_assignment(-iou)
    return float((iou[rows, cols] >= iou_threshold).sum()) / len(truth)


def best_time(run, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 768])
    parser.add_argument("--objects", type=int, nargs="+", default=[40, 120], help="objects per size")
    parser.add_argument("--tiles", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--overlaps", type=float, nargs="+", default=[0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = zoo.create_model(DEMO, pretrained=True).eval()
    settings = [None] + [(t, o) for t in args.tiles for o in args.overlaps]
    rows = []
    for size, count in zip(args.sizes, args.objects):
        for seed in args.seeds:
            image, objects = render_crowded_image(seed, size, num_objects=count)
            truth = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objects)])
            for setting in settings:
                kwargs = {} if setting is None else {"slice": (setting[0], setting[0]), "overlap": setting[1]}
                model.predict(image, score_threshold=args.threshold, batch_size=args.batch_size, **kwargs)  # warm
                seconds, det = best_time(lambda: model.predict(image, score_threshold=args.threshold, top_k=1000,
                                                               batch_size=args.batch_size, **kwargs), args.repeats)
                rows.append((size, seed, len(objects), setting, recall(truth, det.boxes), len(det), seconds))
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; torch threads {torch.get_num_threads()}; "
          f"score threshold {args.threshold}; objects 14-26 px")
    print("| image | seed | objects | tiles | overlap | recall@0.5 | detections | ms |")
    print("|---|---|---|---|---|---|---|---|")
    for size, seed, n, setting, r, kept, seconds in rows:
        tiles = "whole image" if setting is None else f"{setting[0]}x{setting[0]} + whole"
        overlap = "-" if setting is None else f"{setting[1]:.2f}"
        print(f"| {size}x{size} | {seed} | {n} | {tiles} | {overlap} | {r:.3f} | {kept} | {seconds * 1000:.0f} |")
    print("\nmean over seeds:")
    print("| image | tiles | overlap | recall@0.5 | ms | x whole-image time |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        base = np.mean([r[6] for r in rows if r[0] == size and r[3] is None])
        for setting in settings:
            mine = [r for r in rows if r[0] == size and r[3] == setting]
            tiles = "whole image" if setting is None else f"{setting[0]}x{setting[0]}"
            overlap = "-" if setting is None else f"{setting[1]:.2f}"
            seconds = np.mean([r[6] for r in mine])
            print(f"| {size}x{size} | {tiles} | {overlap} | {np.mean([r[4] for r in mine]):.3f} | {seconds * 1000:.0f} "
                  f"| {seconds / base:.1f} |")


if __name__ == "__main__":
    main()
