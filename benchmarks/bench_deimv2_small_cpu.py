"""What one image costs the smallest DEIMv2 models on this CPU: Atto (320x320), Femto (416x416) and Pico
(640x640), the models DEIMv2 made for small devices, at their own input sizes, batch 1, float32.

Rows per model: zoo eager, zoo ``deploy()`` (RepVGG and BatchNorm folded, channels-last) and onnxruntime running the
verified ONNX export (raw outputs). Times are the median and best of ``--rounds`` interleaved calls (ms per
image); the load average and the convolution peak of the machine are printed first, as on a shared machine they
decide the numbers (see bench_deploy.py). Random weights: the cost does not depend on them.

    python benchmarks/bench_deimv2_small_cpu.py --threads 1 --rounds 20
    python benchmarks/bench_deimv2_small_cpu.py --models deimv2_atto --rounds 3   # smoke run
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

import zoo
from bench_deploy import machine_state

MODELS = ("deimv2_atto", "deimv2_femto", "deimv2_pico")


def runners(name: str, folder: Path, threads: int) -> tuple[int, dict[str, Callable[[], object]]]:
    """Input size and one callable per row, each running one image."""
    from zoo.export.session import open_session

    torch.manual_seed(0)
    model = zoo.create_model(name).eval()
    size = model.pretrained_cfg["input_size"][-1]
    x = torch.rand(1, 3, size, size)
    deployed = copy.deepcopy(model).deploy(channels_last=True)
    xc = x.contiguous(memory_format=torch.channels_last)
    path = zoo.export(model, folder / f"{name}.onnx", input_size=size)
    session = open_session(path, threads=threads)
    feed = {session.get_inputs()[0].name: x.numpy()}
    return size, {"eager": lambda: model(x), "deploy": lambda: deployed(xc),
                  "onnxruntime": lambda: session.run(None, feed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_state(args.threads))
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 1, float32, ms per image (median / best of "
          f"{args.rounds})\n")
    print("| model | input | eager | deploy() | onnxruntime |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for name in args.models:
            size, runs = runners(name, Path(tmp), args.threads)
            times = {key: [] for key in runs}
            for _ in range(args.warmup):
                for run in runs.values():
                    run()
            for _ in range(args.rounds):  # interleaved, so that load changes hit every row alike
                for key, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[key].append((time.perf_counter() - start) * 1e3)
            cells = [f"{statistics.median(t):.1f} / {min(t):.1f}" for t in times.values()]
            print(f"| `{name}` | {size}x{size} | " + " | ".join(cells) + " |", flush=True)
    print("\nload average after the run: " + " / ".join(f"{v:.1f}" for v in __import__("os").getloadavg()),
          file=sys.stdout)


if __name__ == "__main__":
    main()
