"""Every way zoo runs RT-DETR, against transformers' RTDetrForObjectDetection with the same weights, in one table.

Rows: zoo eager fp32, zoo ``deploy()`` fp32 (what predict and the CLI run), zoo deploy bf16, zoo deploy +
``torch.compile``, onnxruntime fp32 (a verified ``zoo.export`` file), OpenVINO fp32 (verified IR) and onnxruntime int8 dynamic quantization (only when
the int8 export of the demo weights keeps its AP on the demo set within 1 point), transformers fp32 and bf16.
The weights are random but shared: transformers' are saved and loaded into zoo through its converter. Runs are
interleaved (one timed forward of every row per round), so load on the machine hits every row alike; the table
gives the median and the interquartile range, the ratio to transformers fp32, and how far each row's 100 best
scores are from zoo eager fp32's. Rows that cannot run here are listed with the reason. The load average and
this CPU's measured fp32 convolution peak are printed before and after the table, with a warning when the
machine is busy. A latency plot (PNG,
matplotlib) is written next to the table.

    python benchmarks/bench_deploy.py                                  # rtdetr_r18vd, batch 1, 640x640
    python benchmarks/bench_deploy.py --rounds 20 --plot docs/performance_cpu.png --json bench.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

import zoo
from bench_rtdetr_vs_transformers import twin_models
from zoo.engine.inference import prepare_for_inference

Run = Callable[[], tuple[torch.Tensor, torch.Tensor]]  # -> (pred_logits, pred_boxes)
DEMO = "rtdetr_mobilenetv3_small.shapes_demo"


def _zoo_run(model: torch.nn.Module, x: torch.Tensor) -> Run:
    def run():
        out = model(x)
        return out["pred_logits"], out["pred_boxes"]
    return run


def _onnx_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_run(session, x: torch.Tensor) -> Run:
    feed = {session.get_inputs()[0].name: x.numpy()}

    def run():
        logits, boxes = session.run(["pred_logits", "pred_boxes"], feed)
        return torch.from_numpy(logits), torch.from_numpy(boxes)
    return run


def _int8_demo_ap(folder: Path, threads: int) -> tuple[float, float]:
    """(AP fp32, AP int8) of the demo weights exported to ONNX, on the demo's held-out set (50 images, seed 1)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from zoo.data.synthetic import make_synthetic_coco
    from zoo.export import OnnxRuntimeDetector, export

    ann = make_synthetic_coco(folder / "shapes", "val", 50, seed=1, image_size=96)
    fp32 = export(zoo.create_model(DEMO), folder / "demo.onnx")
    quantize_dynamic(str(fp32), str(folder / "demo_int8.onnx"), weight_type=QuantType.QInt8)
    aps = []
    for path in (fp32, folder / "demo_int8.onnx"):
        detector = OnnxRuntimeDetector(path, device="cpu", threads=threads)
        result = zoo.evaluate(detector, ann, folder / "shapes" / "val", batch_size=1, num_workers=0, progress=False,
                              verbose=False)
        aps.append(100 * result.metrics["AP"])
    return aps[0], aps[1]


def build_rows(name: str, x: torch.Tensor, folder: Path, threads: int, skip_compile: bool, skip_bf16: bool
               ) -> tuple[dict[str, Run], dict[str, str], dict[str, str]]:
    """(runs by row name, skipped rows with the reason, notes)."""
    model, hf = twin_models(name)
    runs: dict[str, Run] = {}
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    x_cl = x.contiguous(memory_format=torch.channels_last)
    runs["zoo eager fp32"] = _zoo_run(model, x)
    runs["zoo deploy() fp32"] = _zoo_run(prepare_for_inference(copy.deepcopy(model), "fp32"), x_cl)
    if skip_bf16:
        skipped["zoo deploy() bf16"] = skipped["transformers bf16"] = "--no-bf16"
    else:
        runs["zoo deploy() bf16"] = _zoo_run(prepare_for_inference(copy.deepcopy(model), "bf16"), x_cl.bfloat16())
    if skip_compile:
        skipped["zoo deploy() + torch.compile fp32"] = "--no-compile"
    else:
        compiled = prepare_for_inference(copy.deepcopy(model), "fp32", compile=True)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(x_cl)
        notes["zoo deploy() + torch.compile fp32"] = f"first call (compilation) {time.perf_counter() - start:.0f} s"
        runs["zoo deploy() + torch.compile fp32"] = _zoo_run(compiled, x_cl)
    try:
        import onnxruntime  # noqa: F401
        from zoo.export import export
    except ImportError as exc:
        skipped["onnxruntime fp32"] = skipped["onnxruntime int8 (dynamic)"] = f"not available: {exc}"
    else:
        from zoo.export import ExportError

        # verified: onnxruntime must agree with eager PyTorch to float rounding, else the row is not the model
        try:
            path = export(model, folder / f"{name}.onnx", input_size=tuple(x.shape[-2:]))
        except ExportError as exc:
            skipped["onnxruntime fp32"] = skipped["openvino fp32"] = f"verification failed: {exc}"
            return _transformers_rows(runs, skipped, notes, hf, x, skip_bf16)
        runs["onnxruntime fp32"] = _ort_run(_onnx_session(path, threads), x)
        ap32, ap8 = _int8_demo_ap(folder, threads)
        if abs(ap32 - ap8) <= 1.0:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(path), str(folder / f"{name}_int8.onnx"), weight_type=QuantType.QInt8)
            runs["onnxruntime int8 (dynamic)"] = _ort_run(_onnx_session(folder / f"{name}_int8.onnx", threads), x)
            notes["onnxruntime int8 (dynamic)"] = f"demo AP {ap8:.1f} vs {ap32:.1f} in fp32"
        else:
            skipped["onnxruntime int8 (dynamic)"] = f"demo AP {ap8:.1f} vs {ap32:.1f} in fp32: more than 1 point lost"
    try:
        from zoo.export.openvino import OpenVinoSession
        import openvino  # noqa: F401
    except ImportError as exc:
        skipped["openvino fp32"] = f"not available: {exc}"
    else:
        xml = export(model, folder / f"{name}_openvino", format="openvino", input_size=tuple(x.shape[-2:]))
        runs["openvino fp32"] = _ort_run(OpenVinoSession(xml, threads=threads), x)
    return _transformers_rows(runs, skipped, notes, hf, x, skip_bf16)


def _transformers_rows(runs: dict[str, Run], skipped: dict[str, str], notes: dict[str, str], hf, x: torch.Tensor,
                       skip_bf16: bool) -> tuple[dict[str, Run], dict[str, str], dict[str, str]]:
    runs["transformers fp32"] = lambda: (lambda o: (o.logits, o.pred_boxes))(hf(pixel_values=x))
    if not skip_bf16:
        hf_bf16 = copy.deepcopy(hf).to(torch.bfloat16)
        runs["transformers bf16"] = lambda: (lambda o: (o.logits, o.pred_boxes))(hf_bf16(pixel_values=x.bfloat16()))
    return runs, skipped, notes


def conv_peak_gflops(threads: int, repeat: int = 5) -> float:
    """This CPU's float32 convolution throughput (GFLOP/s): the best of ``repeat`` runs of a 3x3, 256-channel
    convolution on an 80x80 map in channels-last (r18vd's typical layer), with ``threads`` torch threads."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 256, 80, 80).contiguous(memory_format=torch.channels_last)
    flops = 2 * 256 * 256 * 9 * 80 * 80
    best = float("inf")
    with torch.inference_mode():
        conv(x)
        for _ in range(repeat):
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def machine_state(threads: int) -> str:
    """Load average and the measured convolution peak, with a warning when the machine is busy."""
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    line = (f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min) on {cores} cores; "
            f"fp32 conv peak {conv_peak_gflops(threads):.0f} GFLOP/s ({threads} threads)")
    if load[0] > max(1.5, 0.5 * cores):
        line += (f"\nWARNING: the machine is busy (load {load[0]:.1f}): other processes share the cores, so these "
                 "numbers are not those of a quiet machine; rerun alone before quoting them")
    return line


def top_scores(logits: torch.Tensor, k: int = 100) -> torch.Tensor:
    """The k best sigmoid scores over queries x classes, sorted: comparable whatever the query order."""
    return logits.float().sigmoid().flatten(1).topk(k, dim=1).values


def measure(runs: dict[str, Run], rounds: int, warmup: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Interleaved timing (seconds per call, per row) and each row's max |score difference| from the first row."""
    times: dict[str, list[float]] = {key: [] for key in runs}
    with torch.inference_mode():
        reference = top_scores(next(iter(runs.values()))()[0])
        diffs = {key: (top_scores(run()[0]) - reference).abs().max().item() for key, run in runs.items()}
        for _ in range(warmup):
            for run in runs.values():
                run()
        for i in range(rounds):
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - start)
            print(f"round {i + 1}/{rounds}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items()),
                  file=sys.stderr, flush=True)
    return times, diffs


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return q1, median, q3


def table(times: dict[str, list[float]], diffs: dict[str, float], skipped: dict[str, str], notes: dict[str, str],
          header: str) -> str:
    baseline = quartiles(times["transformers fp32"])[1]
    lines = [header, "", "| runtime | median ms | IQR ms | / transformers fp32 | max abs diff of top-100 scores | note |",
             "|---|---|---|---|---|---|"]
    for key, values in times.items():
        q1, median, q3 = quartiles(values)
        lines.append(f"| {key} | {median * 1e3:.0f} | {q1 * 1e3:.0f}-{q3 * 1e3:.0f} | {median / baseline:.2f}x | "
                     f"{diffs[key]:.1e} | {notes.get(key, '')} |")
    lines += [f"| {key} | - | - | - | - | skipped: {reason} |" for key, reason in skipped.items()]
    return "\n".join(lines)


def plot(times: dict[str, list[float]], path: Path, title: str) -> str:
    """Horizontal box plot of the latencies; returns what was written (or why nothing was)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (pip install matplotlib)"
    keys = list(times)[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(keys) + 1.4))
    ax.boxplot([[t * 1e3 for t in times[k]] for k in keys], vert=False, tick_labels=keys, showfliers=True)
    ax.axvline(statistics.median(times["transformers fp32"]) * 1e3, color="tab:red", linestyle="--", linewidth=1,
               label="transformers fp32 median")
    ax.set_xlabel("latency per forward pass (ms), lower is better")
    ax.set_xlim(left=0)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rtdetr_r18vd")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10, help="timed calls of every row, interleaved")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch and onnxruntime")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row (slow to compile)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 rows (slow on CPUs without AVX512-BF16)")
    parser.add_argument("--plot", default="bench_deploy.png", help="latency plot (PNG)")
    parser.add_argument("--json", default=None, help="also write the raw timings here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    x = torch.rand(args.batch_size, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    before = machine_state(threads)
    with tempfile.TemporaryDirectory() as folder:
        runs, skipped, notes = build_rows(args.model, x, Path(folder), threads, args.no_compile, args.no_bf16)
        times, diffs = measure(runs, args.rounds, args.warmup)
    after = machine_state(threads)
    import transformers

    title = (f"{args.model}, batch {args.batch_size}, {args.size}x{args.size}, CPU ({threads} threads, "
             f"{platform.processor() or platform.machine()})")
    header = (f"{title}: median of {args.rounds} interleaved rounds after {args.warmup} warm-up; torch "
              f"{torch.__version__}, transformers {transformers.__version__}.")
    print(table(times, diffs, skipped, notes, header))
    print(f"before: {before}\nafter: {after}")
    print(plot(times, Path(args.plot), title))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "times_s": times, "max_abs_diff": diffs,
                                               "skipped": skipped, "notes": notes, "machine": [before, after]}, indent=1))


if __name__ == "__main__":
    main()
