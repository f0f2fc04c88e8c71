"""How long the command line takes to answer, against the imports it avoids and against timm's listing.

Each row runs a fresh interpreter ``--repeat`` times and reports the median wall time. ``zoo --help`` and
``zoo list`` import no torch (tests/cli/test_startup.py checks that); the rows below them are the floor any
listing that imports the families would have (``import torch, torchvision``) and timm's ``list_models()``:

    python benchmarks/bench_cli_start.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

ROWS = [
    ("python -c pass", [sys.executable, "-c", "pass"]),
    ("zoo --help", [sys.executable, "-m", "zoo", "--help"]),
    ("zoo predict --help", [sys.executable, "-m", "zoo", "predict", "--help"]),
    ("zoo list", [sys.executable, "-m", "zoo", "list"]),
    ("zoo list --pretrained", [sys.executable, "-m", "zoo", "list", "--pretrained"]),
    ("zoo info rtdetr_r18vd", [sys.executable, "-m", "zoo", "info", "rtdetr_r18vd"]),
    ("import torch", [sys.executable, "-c", "import torch"]),
    ("import torch, torchvision", [sys.executable, "-c", "import torch, torchvision"]),
    ("timm.list_models()", [sys.executable, "-c", "import timm; timm.list_models()"]),
]


def _median_seconds(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    seconds = {label: _median_seconds(argv, args.repeat) for label, argv in ROWS}
    reference = seconds["timm.list_models()"]
    print(f"| command | median of {args.repeat} (s) | vs timm.list_models() |")
    print("|---|---|---|")
    for label, value in seconds.items():
        print(f"| `{label}` | {value:.2f} | {value / reference:.2f}x |")


if __name__ == "__main__":
    main()
