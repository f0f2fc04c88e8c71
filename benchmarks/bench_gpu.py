"""GPU latency of RT-DETR in zoo (fp16 eager, torch.compile, onnxruntime CUDA / TensorRT) vs transformers fp16 eager.

One prepared script for a GPU machine: rtdetr_r18vd and rtdetr_mobilenetv3_large, batch 1 and 8, 640x640, random
weights (shared with transformers when it is installed, so the comparison is like for like). Every row is optional:
a row whose package is missing (transformers, onnx/onnxruntime-gpu, the TensorRT execution provider) or that fails
is listed with the reason. Timing: CUDA events around each call after warm-up (the host's launch time counts, as
it does for a user); median and p90 over ``--iters`` calls. Prints a markdown table headed by the card's name.
Rows that build something (torch.compile, a TensorRT engine) are skipped once ``--budget`` seconds have passed,
so that the whole run stays under about 5 minutes.

    python benchmarks/bench_gpu.py                                # on the GPU machine (about 3-5 minutes)
    python benchmarks/bench_gpu.py --device cpu --quick           # a check of every code path on a CPU
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

import zoo
from zoo.engine.inference import DTYPES, prepare_for_inference

MODELS = ("rtdetr_r18vd", "rtdetr_mobilenetv3_large")


class Budget:
    """Seconds since the start; rows that build something ask :meth:`allows` before they start."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self) -> bool:
        return self.elapsed() < self.seconds


def twin_models(name: str) -> tuple[torch.nn.Module, torch.nn.Module | None, str]:
    """(zoo model, transformers model or None, why None): the same random weights when transformers is here."""
    try:
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_rtdetr_vs_transformers import twin_models as twins

        model, hf = twins(name)
        return model.eval(), hf.eval(), ""
    except ImportError as exc:
        torch.manual_seed(0)
        model = zoo.create_model(name).eval()
        with torch.no_grad():  # heads start at zero: make every weight matter, as twin_models does
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.add_(torch.randn_like(tensor) * 0.02)
        return model, None, f"transformers not available ({exc})"


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Milliseconds per call: CUDA events on a GPU (end recorded after the call returns), perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return times


def ort_runner(path: Path, provider: str, device: torch.device, x: torch.Tensor) -> Callable[[], object]:
    """An onnxruntime session on ``provider`` fed through IO binding (input and outputs stay on the device)."""
    import numpy as np
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider not in available:
        raise RuntimeError(f"{provider} not in onnxruntime's providers {available}")
    options = {}
    if provider == "TensorrtExecutionProvider":
        options = {"trt_fp16_enable": x.dtype == torch.float16, "trt_engine_cache_enable": True,
                   "trt_engine_cache_path": str(path.parent)}
    providers = [(provider, options)] + (["CUDAExecutionProvider"] if provider != "CPUExecutionProvider" else [])
    session = ort.InferenceSession(str(path), providers=providers)
    if session.get_providers()[0] != provider:
        raise RuntimeError(f"onnxruntime fell back to {session.get_providers()}")
    binding = session.io_binding()
    kind = "cuda" if device.type == "cuda" else "cpu"
    element = np.float16 if x.dtype == torch.float16 else np.float32
    binding.bind_input(session.get_inputs()[0].name, kind, device.index or 0, element, tuple(x.shape), x.data_ptr())
    for output in ("pred_logits", "pred_boxes"):
        binding.bind_output(output, kind, device.index or 0)
    return lambda: session.run_with_iobinding(binding)


def bench_one(name: str, batch: int, size: int, device: torch.device, dtype: torch.dtype, args: argparse.Namespace,
              budget: Budget, folder: Path) -> list[dict]:
    """The rows of one (model, batch size)."""
    model, hf, hf_missing = twin_models(name)
    x32 = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x32.to(device=device, dtype=dtype)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    rows: list[dict] = []

    def row(label: str, make: Callable[[], Callable[[], object]], builds: bool = False, skip: str = "") -> None:
        if not skip and builds and not budget.allows():
            skip = f"time budget of {args.budget:.0f} s spent"
        if skip:
            rows.append({"model": name, "batch": batch, "row": label, "skipped": skip})
            print(f"  {name} b{batch} {label}: skipped ({skip})", flush=True)
            return
        try:
            start = time.perf_counter()
            with torch.inference_mode():
                fn = make()
                fn()  # the first call builds (compile, engines) and is reported separately
                first = time.perf_counter() - start
                times = time_calls(fn, device, args.warmup, args.iters)
        except Exception as exc:  # noqa: BLE001 (every row is optional: report why and go on)
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            rows.append({"model": name, "batch": batch, "row": label, "skipped": f"failed: {reason}"})
            print(f"  {name} b{batch} {label}: failed ({reason})", flush=True)
            if args.verbose:
                traceback.print_exc()
            return
        ordered = sorted(times)
        result = {"model": name, "batch": batch, "row": label, "median_ms": statistics.median(ordered),
                  "p90_ms": ordered[max(0, int(0.9 * len(ordered) + 0.5) - 1)], "first_call_s": first}
        rows.append(result)
        print(f"  {name} b{batch} {label}: {result['median_ms']:.2f} ms (first call {first:.1f} s)", flush=True)

    precision = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    if hf is not None:
        hf_half = hf.to(device=device, dtype=dtype)
        row(f"transformers eager {precision}", lambda: (lambda: hf_half(pixel_values=x)))
    else:
        row(f"transformers eager {precision}", None, skip=hf_missing)
    fused = prepare_for_inference(copy.deepcopy(model).to(device), dtype)
    row(f"zoo deploy() eager {precision}", lambda: (lambda: fused(x_cl)))
    compile_skip = "--no-compile" if args.no_compile else ""
    row(f"zoo deploy() torch.compile({args.compile_mode}) {precision}",
        lambda: (lambda m: (lambda: m(x_cl)))(torch.compile(fused, mode=args.compile_mode)),
        builds=True, skip=compile_skip)
    try:
        import onnxruntime  # noqa: F401
        from zoo.export import export
    except ImportError as exc:
        ort_skip = f"not available ({exc})"
    else:
        ort_skip = ""
    path = folder / f"{name}_b{batch}_{precision}.onnx"

    def exported() -> Path:
        if not path.exists():  # fixed size (what TensorRT builds fastest for); zoo exports batch 1 or a free batch
            export(model, path, input_size=(size, size), half=dtype == torch.float16, verify=False,
                   **({"dynamic_batch": True} if batch != 1 else {}))
        return path

    ort_provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    ort_input = x if dtype != torch.bfloat16 else x.float()
    row(f"onnxruntime {ort_provider.replace('ExecutionProvider', '')} EP {precision}",
        lambda: ort_runner(exported(), ort_provider, device, ort_input), builds=True, skip=ort_skip)
    trt_skip = ort_skip or ("" if device.type == "cuda" else "TensorRT needs a CUDA device")
    row(f"onnxruntime TensorRT EP {precision}",
        lambda: ort_runner(exported(), "TensorrtExecutionProvider", device, ort_input), builds=True, skip=trt_skip)
    return rows


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| model | batch | runtime | median ms | p90 ms | vs transformers eager | first call s |",
             "|---|---|---|---|---|---|---|"]
    baselines = {(r["model"], r["batch"]): r["median_ms"] for r in rows
                 if r["row"].startswith("transformers") and "median_ms" in r}
    for r in rows:
        if "median_ms" not in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['row']} | - | - | - | skipped: {r['skipped']} |")
            continue
        base = baselines.get((r["model"], r["batch"]))
        ratio = f"{r['median_ms'] / base:.2f}x" if base else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['row']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{ratio} | {r['first_call_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--compile-mode", default="reduce-overhead",
                        help="torch.compile mode (default reduce-overhead: CUDA graphs, which batch 1 needs)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--budget", type=float, default=240.0,
                        help="seconds after which rows that compile or build engines are skipped")
    parser.add_argument("--quick", action="store_true", help="a code-path check: 128x128, batch 1 and 2, 3 iterations")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of failed rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch_sizes, args.warmup, args.iters = 128, [1, 2], 1, 3
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu (and --quick to check the script)", file=sys.stderr)
        return 1
    dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        card = torch.cuda.get_device_name(device)
    else:
        card = f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    budget = Budget(args.budget)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            for batch in args.batch_sizes:
                print(f"{name}, batch {batch} ({budget.elapsed():.0f} s so far)", flush=True)
                rows += bench_one(name, batch, args.size, device, dtype, args, budget, Path(folder))
    versions = [f"torch {torch.__version__}"]
    for package in ("transformers", "onnxruntime", "tensorrt"):
        try:
            versions.append(f"{package} {__import__(package).__version__}")
        except ImportError:
            versions.append(f"no {package}")
    if device.type == "cuda":
        versions.append(f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    header = (f"**{card}**: {args.size}x{args.size}, random weights, median of {args.iters} calls after "
              f"{args.warmup} warm-up ({'CUDA events' if device.type == 'cuda' else 'perf_counter'}); "
              f"{', '.join(versions)}; total {budget.elapsed():.0f} s.")
    print()
    print(table(rows, header))
    if args.json:
        Path(args.json).write_text(json.dumps({"card": card, "args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
