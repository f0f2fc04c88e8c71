"""What verifying a weight file costs: sha256 of the file (page cache warm and cold) against the load it protects.

zoo hashes every cache hit and every ``local-dir:`` folder by default (docs/weights.md, "The trust model"); this
script is the measurement behind that default. For each architecture it saves random weights with
``save_pretrained`` (rtdetr_r18vd: 81 MB, rtdetr_r101vd: 307 MB), then reports the median of ``--repeat`` runs of:

- ``stat``: the size check alone (what a cache hit cost before);
- ``sha256 warm``: hashing with the file in the page cache (a repeated load);
- ``sha256 cold``: hashing after dropping the file's pages (``posix_fadvise(DONTNEED)``, this file only);
- ``load``: ``create_model("local-dir:...")`` (page cache warm) checking sizes only (``verify_cache=False``), by
  default (the file is unchanged since it was hashed, so the remembered hash is used) and hashing every time
  (``verify_cache=True``):

    python benchmarks/bench_verify_cost.py [--arch rtdetr_r18vd rtdetr_r101vd] [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _median_seconds(fn, repeat: int, before=None) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _drop_pages(path: Path) -> None:
    """Evict this file's pages from the page cache (only this file: other processes are not affected)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(arch: str, folder: Path, repeat: int) -> dict:
    import torch

    import zoo
    from zoo.weights.hashing import sha256_file
    from zoo.weights.sources import WEIGHTS_NAME

    torch.manual_seed(0)
    zoo.create_model(arch).save_pretrained(folder, model_card=False)
    weights = folder / WEIGHTS_NAME
    sha256_file(weights)  # warm the page cache
    row = {"arch": arch, "size_mb": weights.stat().st_size / 1e6,
           "stat_ms": 1e3 * _median_seconds(lambda: os.path.getsize(weights), repeat),
           "sha256_warm_s": _median_seconds(lambda: sha256_file(weights), repeat),
           "sha256_cold_s": _median_seconds(lambda: sha256_file(weights), repeat, lambda: _drop_pages(weights))}
    location = f"local-dir:{folder}"
    for verify in (False, None, True):
        row[f"load_s_verify_{verify}"] = _median_seconds(
            lambda: zoo.create_model(location, verify_cache=verify), repeat)
    row["throughput_mb_s"] = row["size_mb"] / row["sha256_warm_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["rtdetr_r18vd", "rtdetr_r101vd"])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="zoo-bench-verify-") as tmp:
        os.environ["ZOO_CACHE"] = str(Path(tmp) / "zoo-cache")  # remembered hashes of this run only
        for arch in args.arch:
            rows.append(measure(arch, Path(tmp) / arch, args.repeat))
    print(f"median of {args.repeat}, {os.cpu_count()} CPUs, one torch thread\n")
    print("| weights | size | stat | sha256 (warm) | sha256 (cold) | load: sizes only | load: default "
          "(remembered hash) | load: hash every time | hash / load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        load = r["load_s_verify_False"]
        print(f"| {r['arch']} | {r['size_mb']:.0f} MB | {r['stat_ms']:.3f} ms | {r['sha256_warm_s']:.3f} s "
              f"({r['throughput_mb_s']:.0f} MB/s) | {r['sha256_cold_s']:.3f} s | {load:.3f} s | "
              f"{r['load_s_verify_None']:.3f} s | {r['load_s_verify_True']:.3f} s | {r['sha256_warm_s'] / load:.0%} |")


if __name__ == "__main__":
    main()
