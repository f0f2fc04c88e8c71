"""Peak memory of prediction on very large images (issue 21 item 14): one 12000x12000 PNG peaked at 3.3 GB RSS in
``zoo predict`` and three in a batch at 4.1 GB.

Each case runs in a fresh process: the demo model is built and run once on a small image (so that the baseline
holds torch, the model and its workspace), VmHWM is reset, then the case runs; the table shows the peak RSS of the
case and its growth over the baseline. The images are synthetic (the shapes demo image tiled), 12000x12000 unless
``--side`` says otherwise:

    python benchmarks/bench_predict_memory.py --side 12000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024

CASE = r"""
import json, sys, tempfile
import torch
import zoo
from zoo.cli import main

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

kind, paths = sys.argv[1], sys.argv[2:]
torch.set_num_threads(1)
model = zoo.create_model("rtdetr_mobilenetv3_small.shapes_demo")
demo = str(__import__("pathlib").Path(zoo.__file__).parent / "assets" / "shapes_demo.png")
model.predict(demo)
main(["predict", "rtdetr_mobilenetv3_small.shapes_demo", demo, "--out", tempfile.mkdtemp()])
baseline = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
if kind == "predict":
    model.predict(paths, batch_size=len(paths))
else:
    args = ["--no-draw"] if kind == "cli --no-draw" else []
    assert main(["predict", "rtdetr_mobilenetv3_small.shapes_demo", *paths, "--batch-size", str(len(paths)),
                 "--out", tempfile.mkdtemp(), *args]) == 0
print(json.dumps({"baseline": baseline, "peak": status("VmHWM")}))
"""


def make_images(folder: Path, side: int) -> dict[str, Path]:
    from PIL import Image

    tile = Image.open(REPO / "zoo" / "assets" / "shapes_demo.png").convert("RGB")
    big = Image.new("RGB", (side, side), (255, 255, 255))
    for x in range(0, side, 4 * tile.width):
        for y in range(0, side, 4 * tile.height):
            big.paste(tile, (x, y))
    paths = {"png": folder / "big.png", "jpeg": folder / "big.jpg"}
    big.save(paths["png"], optimize=False)
    big.save(paths["jpeg"], quality=90)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=12000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    images = make_images(folder, args.side)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    print(f"{args.side}x{args.side} images (one decoded copy: {args.side * args.side * 3 / MB:.0f} MB); "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| case | format | images | peak RSS (MB) | over baseline (MB) |")
    print("|---|---|---|---|---|")
    for kind in ("predict", "cli --no-draw", "cli"):
        for fmt, path in images.items():
            for count in (1, 3):
                done = subprocess.run([sys.executable, "-c", CASE, kind, *[str(path)] * count], env=env,
                                      capture_output=True, text=True, timeout=1200)
                if done.returncode != 0:
                    print(f"| {kind} | {fmt} | {count} | failed: {done.stderr.strip().splitlines()[-1]} | |")
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"| {kind} | {fmt} | {count} | {result['peak'] / MB:.0f} | "
                      f"{(result['peak'] - result['baseline']) / MB:.0f} |", flush=True)


if __name__ == "__main__":
    main()
