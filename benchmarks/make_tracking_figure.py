"""The frame strip of docs/tracking.md: ``zoo predict --track`` on a generated clip of moving shapes, drawn by zoo
(one colour and ``#id`` per tracked object, a trail of its recent centres), every ``--step``-th frame side by side.

The clip is zoo.data.synthetic.render_tracking_clip at twice the size the demo detector was trained at (192 px:
shapes, speeds and the pole doubled), so that captions stay legible; the detector resizes each frame to its 96 px
input, where the shapes have the sizes it knows.

    python benchmarks/make_tracking_figure.py --out docs/tracking.png
"""
from __future__ import annotations

import argparse
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

import zoo
from zoo.data.synthetic import render_tracking_clip
from zoo.data.video import VideoReader, VideoWriter
from zoo.engine.track import Tracker

DEMO = "rtdetr_mobilenetv3_small.shapes_demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/tracking.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--frames", type=int, default=48, help="frames in the clip")
    parser.add_argument("--step", type=int, default=8, help="every step-th frame goes into the strip")
    parser.add_argument("--tracker", default="bytetrack")
    parser.add_argument("--colors", type=int, default=160, help="palette size of the PNG (smaller file)")
    args = parser.parse_args()
    frames, _ = render_tracking_clip(args.seed, args.frames, image_size=192, num_objects=args.objects,
                                     size_range=(40.0, 60.0), speed_range=(2.0, 5.0), occluder_width=24)
    model = zoo.create_model(DEMO, pretrained=True).eval()
    tracker = Tracker(args.tracker, frame_rate=30)
    shown = []
    with tempfile.TemporaryDirectory() as tmp:  # through a video file, as zoo predict --track reads one
        clip = Path(tmp) / "shapes.mp4"
        with VideoWriter(clip, Fraction(30), 192, 192) as writer:
            for frame in frames:
                writer.write(frame)
        with VideoReader(clip) as reader:
            decoded = [pixels for _, _, pixels in reader]
    for index, det in enumerate(model.track(decoded, tracker=tracker)):
        if index % args.step == args.step - 1:
            shown.append(np.asarray(tracker.draw(decoded[index], det)))
    gap = np.full((192, 4, 3), 255, np.uint8)
    strip = np.concatenate([part for image in shown for part in (image, gap)][:-1], axis=1)
    Image.fromarray(strip).quantize(args.colors, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KB, {len(shown)} frames)")


if __name__ == "__main__":
    main()
