"""``zoo benchmark``: inference latency, throughput and peak memory of a model.

What is timed is what ``model.predict`` does after decoding and resizing: normalisation, the forward pass and
postprocessing (top-300, boxes to pixels), on random images of the requested size, in deploy mode (BatchNorm
folded, RepVGG blocks fused, channels-last memory), in ``--dtype``, compiled with ``--compile``. Warm-up
iterations come first (with ``--compile`` they include the compilation); CUDA is synchronised around every
iteration.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from typing import Callable

from zoo.cli.predict import add_model_arguments, int_at_least, model_from_args

__all__ = ["measure_latency", "latency_stats", "peak_memory_mib", "benchmark_model", "conv_peak_gflops",
           "machine_state", "BUSY_LOAD"]

#: a 1-minute load average above this (beyond the threads of the run itself) means other work shares the cores
BUSY_LOAD = 1.5


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="latency, throughput and memory",
                       description="Time a model's inference (normalisation + forward + postprocess) on random "
                                   "images: warm-up, then median and p90 latency, throughput and peak memory.")
    add_model_arguments(p)
    p.add_argument("--batch-size", type=int_at_least(1), default=1, metavar="B", help="images per batch (default 1)")
    p.add_argument("--warmup", type=int_at_least(0), default=5, metavar="N", help="untimed iterations (default 5)")
    p.add_argument("--iters", type=int_at_least(1), default=30, metavar="N", help="timed iterations (default 30)")
    p.add_argument("--threads", type=int_at_least(1), default=None, metavar="N", help="CPU threads for torch")
    p.add_argument("--no-deploy", action="store_true", help="time the un-fused (training-layout) model")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_benchmark)


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(fn: Callable[[], object], device, warmup: int, iters: int, progress: bool = False) -> list[float]:
    """Seconds per call of ``fn`` over ``iters`` timed calls, after ``warmup`` untimed ones."""
    from tqdm.auto import tqdm

    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in tqdm(range(iters), desc="benchmark", unit="it", disable=not progress):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def latency_stats(times: list[float], batch_size: int) -> dict[str, float]:
    """Median and 90th-percentile (nearest rank) latency in ms, and throughput (images/s at the median)."""
    ordered = sorted(times)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    median = statistics.median(ordered)
    return {"median_ms": median * 1e3, "p90_ms": p90 * 1e3, "images_per_s": batch_size / median}


def peak_memory_mib(device) -> tuple[float, str]:
    """(MiB, what it measures): CUDA max allocated tensor memory, or the process' peak resident memory on CPU."""
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def _best_gflops(op, flops: float, threads: int | None, repeat: int) -> float:
    """GFLOP/s of the fastest of ``repeat`` calls of ``op()`` (after one warm-up) with ``threads`` torch threads."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    best = float("inf")
    try:
        with torch.inference_mode():
            op()
            for _ in range(repeat):
                start = time.perf_counter()
                op()
                best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return flops / best / 1e9


def conv_peak_gflops(threads: int | None = None, repeat: int = 5) -> float:
    """This CPU's float32 convolution throughput in GFLOP/s, the ceiling of what any fp32 runtime can reach on
    convolutional detectors: the best of ``repeat`` runs of torch's 3x3, 256-channel convolution on an 80x80 map
    in channels-last memory (rtdetr_r18vd's typical layer), with ``threads`` torch threads (default: as set)."""
    import torch

    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 256, 80, 80).contiguous(memory_format=torch.channels_last)
    return _best_gflops(lambda: conv(x), 2 * 256 * 256 * 9 * 80 * 80, threads, repeat)


def matmul_peak_gflops(threads: int | None = None, repeat: int = 5) -> float:
    """This CPU's float32 matrix-product throughput in GFLOP/s, the ceiling for the ViT detectors (LW-DETR,
    RF-DETR, DEIMv2 S-X): the best of ``repeat`` runs of a ViT-S MLP layer (1600 tokens, 384 -> 1536, with bias)."""
    import torch

    x, weight, bias = torch.rand(1600, 384), torch.rand(1536, 384), torch.rand(1536)
    return _best_gflops(lambda: torch.nn.functional.linear(x, weight, bias), 2 * 1600 * 384 * 1536, threads, repeat)


def machine_state(threads: int, running: int = 0) -> dict:
    """The load average (1, 5, 15 min), the core count, the measured fp32 convolution and matrix-product peaks and
    whether the machine is busy: a 1-minute load above :data:`BUSY_LOAD` plus ``running``, the threads this process
    itself keeps busy (0 before a run; a quiet machine right after a 2-thread run shows a load near 2). ``text``
    says it in a line, with a warning when busy."""
    import os

    load = os.getloadavg()
    peak, matmul = conv_peak_gflops(threads), matmul_peak_gflops(threads)
    busy = load[0] > BUSY_LOAD + running
    text = (f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min) on {os.cpu_count()} cores; "
            f"fp32 peaks {peak:.0f} GFLOP/s conv (torch 3x3, channels-last), {matmul:.0f} GFLOP/s matmul "
            f"(ViT-S MLP layer), {threads} threads")
    if busy:
        text += (f"\nWARNING: the machine is busy (1-minute load {load[0]:.2f} > {BUSY_LOAD + running:g}): other "
                 "processes share the cores, so these numbers are not those of a quiet machine; rerun alone "
                 "before quoting them")
    return {"load_average": [round(v, 2) for v in load], "cpu_count": os.cpu_count(),
            "conv_peak_gflops": round(peak, 1), "matmul_peak_gflops": round(matmul, 1), "busy": busy, "text": text}


def benchmark_model(model, batch_size: int = 1, size: int | None = None, device=None, warmup: int = 5,
                    iters: int = 30, progress: bool = False) -> dict:
    """Time ``model`` as described in the module docstring; returns latencies, throughput and peak memory."""
    import torch

    from zoo.data.images import Preprocess
    from zoo.engine.device import resolve_device
    from zoo.engine.predict import run_detector

    device = resolve_device(device, model)
    model = model.to(device).eval()
    preprocess = Preprocess.from_model(model, size)
    height, width = preprocess.size if preprocess.resize_mode == "stretch" else (preprocess.size[0],) * 2
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
              for _ in range(batch_size)]
    sizes = [(height, width)] * batch_size
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        times = measure_latency(lambda: run_detector(model, preprocess, images, sizes, device, 0.0, 300),
                                device, warmup, iters, progress)
    memory, memory_kind = peak_memory_mib(device)
    return {"batch_size": batch_size, "input_size": [height, width], "device": str(device),
            "threads": torch.get_num_threads(), "warmup": warmup, "iters": iters,
            **latency_stats(times, batch_size), "peak_memory_mib": memory, "peak_memory_kind": memory_kind}


def _benchmark(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, device = model_from_args(args, random_ok=True, deploy=not args.no_deploy)
    machine = machine_state(torch.get_num_threads()) if device.type == "cpu" else None
    weights = ((getattr(model, "pretrained_cfg", None) or {}).get("weights") or args.checkpoint
               or "random (latency does not depend on the weights' values)")
    result = {"model": args.name, "weights": weights, "deploy": not args.no_deploy, "dtype": args.dtype,
              "compile": args.compile,
              **benchmark_model(model, args.batch_size, args.size, device, args.warmup, args.iters, progress=True)}
    if machine:
        result["machine"] = {k: v for k, v in machine.items() if k != "text"}
    if args.json:
        print(json.dumps(result, indent=2))
        if machine and machine["busy"]:
            print(machine["text"].splitlines()[-1], file=sys.stderr)
        return 0
    h, w = result["input_size"]
    print(f"{args.name} {'deployed' if result['deploy'] else 'not deployed'}, {args.dtype}"
          f"{', compiled' if args.compile else ''}, batch {args.batch_size}, {h}x{w}, "
          f"{result['device']} ({result['threads']} threads), {args.iters} iterations after {args.warmup} warm-up")
    print(f"  weights  {weights}")
    print(f"  latency  median {result['median_ms']:.2f} ms   p90 {result['p90_ms']:.2f} ms")
    print(f"  throughput {result['images_per_s']:.2f} images/s")
    print(f"  peak memory {result['peak_memory_mib']:.0f} MiB ({result['peak_memory_kind']})")
    if machine:
        print(f"  machine  {machine['text']}")
    return 0
