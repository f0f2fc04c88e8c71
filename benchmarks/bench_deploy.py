"""Every way zoo runs a real-time DETR on the CPU, against transformers with the same weights: one interleaved run
per model, by default rtdetr_r18vd and every D-FINE size; LW-DETR / RF-DETR and DEIMv2 models with ``--models``.

Rows per model: transformers fp32 eager (the baseline) in a process of its own, as a transformers user runs it;
transformers fp32 again in this process, which runs with zoo's allocator setting once a model is deployed
(zoo.engine.inference.tune_cpu_allocator: the same library with the same malloc as zoo, to show what the setting is
worth); zoo eager fp32, zoo ``deploy()`` fp32 (what predict and the CLI run), onnxruntime fp32 and OpenVINO fp32
(verified ``zoo.export`` files), and onnxruntime int8 (static QDQ quantization of that ONNX file,
zoo/export/quantize.py, calibrated on ``--calibration`` images); ``--bf16`` and ``--compile`` add zoo deploy()
bf16, transformers bf16 and zoo deploy() + torch.compile rows.

Weights are random but shared. rtdetr_r18vd: transformers' ``RTDetrForObjectDetection`` initialisation (+0.02
noise), saved and loaded into zoo (bench_rtdetr_vs_transformers.twin_models). dfine_*: zoo's initialisation (+0.02
noise, BatchNorm statistics set from a forward pass), written with ``save_pretrained(format="transformers")`` and
loaded by ``AutoModelForObjectDetection`` (``DFineForObjectDetection``); lwdetr_* / rfdetr_* and deimv2_* the same
way (DEIMv2 as transformers builds it: see :func:`transformers_options`). Random weights say nothing of accuracy:
the int8 rows run only when the int8 export of the bundled demo weights keeps its AP on the demo's held-out set
within 1 point of float32 (measured once per run, printed).

Runs are interleaved (one timed call of every row per round), so load on the machine hits every row alike. Each
timed call follows an untimed call of the same row: a row run right after another pays for the caches and threads
that the other left (the own-process baseline most: 47 vs 39 ms for DEIMv2 Atto); the baseline's time is measured
inside its process, around the forward pass alone. Each model's table gives the median
and interquartile range, the ratio to transformers fp32, and how far each row's 100 best scores are from zoo
eager fp32's. Before and after, the script prints the load average and this CPU's measured fp32 convolution and
matrix-product peaks (zoo.cli.benchmark.machine_state), and warns when the machine is busy; the summary gives each
model's GFLOPs / the higher peak, the least time any fp32 runtime can take without fewer FLOPs.

    python benchmarks/bench_deploy.py --threads 2                       # the six default models, 640x640, batch 1
    python benchmarks/bench_deploy.py --threads 2 --models rfdetr_nano deimv2_s --no-int8   # at their own sizes
    python benchmarks/bench_deploy.py --models rtdetr_r18vd --rounds 20 --plot docs/performance_cpu.png
    python benchmarks/bench_deploy.py --models dfine_n --size 320 --rounds 2 --warmup 0   # a smoke run
"""
from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import zoo
from bench_rtdetr_vs_transformers import twin_models as rtdetr_twins
from zoo.cli.benchmark import machine_state
from zoo.engine.inference import prepare_for_inference

Run = Callable[[], tuple[torch.Tensor, torch.Tensor]]  # -> (pred_logits, pred_boxes)
MODELS = ("rtdetr_r18vd", "dfine_n", "dfine_s", "dfine_m", "dfine_l", "dfine_x")
DEMO = "rtdetr_mobilenetv3_small.shapes_demo"
BASELINE, REFERENCE = "transformers fp32", "zoo eager fp32"
SAME_ALLOCATOR = "transformers fp32, zoo's allocator"
DEPLOY, ORT, OPENVINO, INT8 = "zoo deploy() fp32", "onnxruntime fp32", "openvino fp32", "onnxruntime int8 (static)"
#: the issues' targets, as ratios to transformers fp32 (issue 23 item 6, issue 20 item 7)
TARGETS = {DEPLOY: 0.65, "best fp32 runtime": 0.55, INT8: 0.40}
COCO_TINY = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_tiny" / "val2017"


@dataclass
class Rows:
    runs: dict[str, Run] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Models with the same weights
# --------------------------------------------------------------------------------------------------

def _set_batch_norm_statistics(model: torch.nn.Module, run: Callable[[], object]) -> None:
    """Every BatchNorm's running statistics from its input during ``run()`` (+-20% on the variance), so that
    random weights give activations of a trained network's scale rather than vanishing or exploding ones."""
    def hook(module, inputs):
        module.running_mean.copy_(inputs[0].mean((0, 2, 3)))
        module.running_var.copy_(inputs[0].var((0, 2, 3)) * torch.empty_like(module.running_var).uniform_(0.8, 1.2))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if "BatchNorm" in type(m).__name__ and getattr(m, "running_var", None) is not None]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()


def transformers_options(name: str) -> dict:
    """``create_model`` arguments that make zoo's ``name`` the architecture transformers implements, so that both run
    the same weights: DEIMv2's transformers variant (ReLU heads and LQE, the encoder-output projection, per-layer query
    positions, LayerScale and the last norm of the ViT-Tiny backbones; zoo.models.deimv2.convert); none for the
    others."""
    if not name.startswith("deimv2_"):
        return {}
    from zoo.models.deimv2.convert import TRANSFORMERS_DECODER

    options = dict(TRANSFORMERS_DECODER)
    if name in ("deimv2_s", "deimv2_m"):
        vit = zoo.create_model(name).config["model_args"]["backbone"]["vit"]
        options["backbone"] = {"vit": dict(vit, feature_norm="final", layer_scale=1.0)}
    return options


def transformers_twins(name: str, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(zoo model, transformers model) with the same random weights, through zoo's
    ``save_pretrained(format="transformers")`` and ``AutoModelForObjectDetection`` (D-FINE, LW-DETR / RF-DETR,
    DEIMv2)."""
    from transformers import AutoModelForObjectDetection

    torch.manual_seed(seed)
    model = zoo.create_model(name, **transformers_options(name)).eval()
    with torch.no_grad():  # the heads start at zero: perturb every weight but the fixed buffers
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not key.endswith(("running_mean", "running_var", "num_points_scale",
                                                                  "decoder.up", "decoder.reg_scale", "bias_mask",
                                                                  "periods")):
                tensor.add_(torch.randn_like(tensor) * 0.02)
    side = model.pretrained_cfg["input_size"][-1]
    _set_batch_norm_statistics(model, lambda: model(torch.rand(1, 3, side, side)))
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, format="transformers")
        hf = AutoModelForObjectDetection.from_pretrained(folder).eval()
    return model, hf


def twin_models(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    return rtdetr_twins(name) if name.startswith("rtdetr_") else transformers_twins(name)


# --------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------

def _zoo_run(model: torch.nn.Module, x: torch.Tensor) -> Run:
    def run():
        out = model(x)
        return out["pred_logits"], out["pred_boxes"]
    return run


def _hf_run(model: torch.nn.Module, x: torch.Tensor) -> Run:
    def run():
        out = model(pixel_values=x)
        return out.logits, out.pred_boxes
    return run


class OwnProcessRun:
    """transformers' model in a child process of its own (spawned: glibc's default malloc, as a transformers user
    has it), run on request; ``seconds`` is the forward pass alone, timed in the child. The child builds the model
    from ``save_pretrained`` and then loads this process's state dict: transformers' own round trip does not keep
    the values of the box head that DEIMv2 Atto/Femto/Pico share across layers."""

    def __init__(self, hf: torch.nn.Module, x: torch.Tensor, folder: Path, threads: int):
        hf.save_pretrained(folder)
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_own_process_worker, daemon=True,
                                       args=(child, str(folder), hf.state_dict(), x, threads))
        self.process.start()
        self.seconds = 0.0
        ready = self.conn.recv()
        if ready != "ready":
            raise RuntimeError(f"the transformers process failed to start: {ready}")

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.conn.send("run")
        self.seconds, logits, boxes = self.conn.recv()
        return logits, boxes

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=60)


def _own_process_worker(conn, folder: str, state: dict[str, torch.Tensor], x: torch.Tensor, threads: int) -> None:
    try:
        from transformers import AutoModelForObjectDetection

        torch.set_num_threads(threads)
        model = AutoModelForObjectDetection.from_pretrained(folder).eval()
        model.load_state_dict(state)
        conn.send("ready")
    except Exception as exc:  # reported to the parent, which raises
        conn.send(f"{type(exc).__name__}: {exc}")
        return
    with torch.inference_mode():
        while conn.recv() is not None:
            start = time.perf_counter()
            out = model(pixel_values=x)
            conn.send((time.perf_counter() - start, out.logits, out.pred_boxes))


def _session_run(session, x: torch.Tensor) -> Run:
    """onnxruntime's InferenceSession or zoo's OpenVinoSession (the same ``run`` interface)."""
    feed = {"pixel_values": x.numpy()}

    def run():
        logits, boxes = session.run(["pred_logits", "pred_boxes"], feed)
        return torch.from_numpy(logits), torch.from_numpy(boxes)
    return run


def int8_demo_ap(folder: Path, threads: int) -> tuple[float, float]:
    """(AP fp32, AP int8) of the bundled demo weights through onnxruntime on the demo's held-out set (50 images,
    seed 1), the int8 file calibrated on 16 other synthetic images (seed 7): what tests/export/test_int8.py checks."""
    from zoo.data.images import Preprocess
    from zoo.data.synthetic import make_synthetic_coco
    from zoo.export import OnnxRuntimeDetector, export
    from zoo.export.quantize import calibration_images, quantize_int8

    ann = make_synthetic_coco(folder / "shapes", "val", 50, seed=1, image_size=96)
    make_synthetic_coco(folder / "shapes_calibration", "images", 16, seed=7, image_size=96)
    demo = zoo.create_model(DEMO).eval()
    fp32 = export(demo, folder / "demo.onnx")
    quantize_int8(fp32, folder / "demo_int8.onnx", Preprocess.from_model(demo),
                  calibration_images(folder / "shapes_calibration", 16))
    aps = []
    for path in (fp32, folder / "demo_int8.onnx"):
        detector = OnnxRuntimeDetector(path, device="cpu", threads=threads)
        result = zoo.evaluate(detector, ann, folder / "shapes" / "val", batch_size=1, num_workers=0, progress=False,
                              verbose=False)
        aps.append(100 * result.metrics["AP"])
    return aps[0], aps[1]


def _export_rows(rows: Rows, name: str, model: torch.nn.Module, x: torch.Tensor, folder: Path, threads: int,
                 calibration: list[Path], int8_gate: str | None) -> None:
    """onnxruntime fp32, OpenVINO fp32 and onnxruntime int8 rows, from verified exports only."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        rows.skipped.update({ORT: f"not available: {exc}", OPENVINO: "needs the ONNX export", INT8: "idem"})
        return
    from zoo.data.images import Preprocess
    from zoo.export import ExportError, export
    from zoo.export.quantize import quantize_int8
    from zoo.export.session import open_session

    size = tuple(x.shape[-2:])
    try:  # verified: the runtime must agree with eager PyTorch to float rounding, else the row is not the model
        path = export(model, folder / f"{name}.onnx", input_size=size)
    except ExportError as exc:
        rows.skipped.update({ORT: f"verification failed: {exc}", OPENVINO: "idem", INT8: "idem"})
        return
    rows.runs[ORT] = _session_run(open_session(path, threads=threads), x)
    try:
        from zoo.export.openvino import OpenVinoSession

        xml = export(model, folder / f"{name}_openvino", format="openvino", input_size=size)
        rows.runs[OPENVINO] = _session_run(OpenVinoSession(xml, threads=threads), x)
    except (ImportError, ExportError) as exc:
        rows.skipped[OPENVINO] = f"{type(exc).__name__}: {exc}"
    if int8_gate is not None:
        rows.skipped[INT8] = int8_gate
        return
    start = time.perf_counter()
    kept = quantize_int8(path, folder / f"{name}_int8.onnx", Preprocess.from_model(model, size), calibration)
    rows.runs[INT8] = _session_run(open_session(folder / f"{name}_int8.onnx", threads=threads), x)
    rows.notes[INT8] = (f"calibrated on {len(calibration)} images in {time.perf_counter() - start:.0f} s; "
                        f"{sum(map(len, kept.values()))} products kept float")


def build_rows(name: str, model: torch.nn.Module, hf: torch.nn.Module, x: torch.Tensor, folder: Path,
               threads: int, calibration: list[Path], int8_gate: str | None, bf16: bool, compile: bool) -> Rows:
    rows = Rows()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    rows.runs[BASELINE] = OwnProcessRun(hf, x, folder / f"{name}_transformers", threads)
    rows.runs[SAME_ALLOCATOR] = _hf_run(hf, x)
    rows.runs[REFERENCE] = _zoo_run(model, x)
    rows.runs[DEPLOY] = _zoo_run(prepare_for_inference(copy.deepcopy(model), "fp32"), x_cl)
    if bf16:
        rows.runs["zoo deploy() bf16"] = _zoo_run(prepare_for_inference(copy.deepcopy(model), "bf16"), x_cl.bfloat16())
        rows.runs["transformers bf16"] = _hf_run(copy.deepcopy(hf).to(torch.bfloat16), x.bfloat16())
    if compile:
        compiled = prepare_for_inference(copy.deepcopy(model), "fp32", compile=True)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(x_cl)
        key = "zoo deploy() + torch.compile fp32"
        rows.notes[key] = f"first call (compilation) {time.perf_counter() - start:.0f} s"
        rows.runs[key] = _zoo_run(compiled, x_cl)
    _export_rows(rows, name, model, x, folder, threads, calibration, int8_gate)
    return rows


# --------------------------------------------------------------------------------------------------
# Timing and tables
# --------------------------------------------------------------------------------------------------

def top_scores(logits: torch.Tensor, k: int = 100) -> torch.Tensor:
    """The k best sigmoid scores over queries x classes, sorted: comparable whatever the query order."""
    return logits.float().sigmoid().flatten(1).topk(k, dim=1).values


def measure(runs: dict[str, Run], rounds: int, warmup: int, label: str = ""
            ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Interleaved timing (seconds per call, per row; each timed call right after an untimed one of the same row)
    and each row's max |top-100 score difference| from zoo eager fp32."""
    times: dict[str, list[float]] = {key: [] for key in runs}
    with torch.inference_mode():
        reference = top_scores(runs[REFERENCE]()[0])
        diffs = {key: (top_scores(run()[0]) - reference).abs().max().item() for key, run in runs.items()}
        for _ in range(warmup):
            for run in runs.values():
                run()
        for i in range(rounds):
            for key, run in runs.items():
                run()  # untimed: the timed call must not pay for the previous row's caches and waking threads
                start = time.perf_counter()
                run()
                times[key].append(getattr(run, "seconds", time.perf_counter() - start))
            latest = ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items())
            print(f"{label} round {i + 1}/{rounds}: {latest}", file=sys.stderr, flush=True)
    return times, diffs


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return q1, median, q3


def table(times: dict[str, list[float]], diffs: dict[str, float], rows: Rows, header: str) -> str:
    baseline = quartiles(times[BASELINE])[1]
    lines = [header, "",
             "| runtime | median ms | IQR ms | / transformers fp32 | max abs diff of top-100 scores | note |",
             "|---|---|---|---|---|---|"]
    for key, values in times.items():
        q1, median, q3 = quartiles(values)
        lines.append(f"| {key} | {median * 1e3:.0f} | {q1 * 1e3:.0f}-{q3 * 1e3:.0f} | {median / baseline:.2f}x | "
                     f"{diffs[key]:.1e} | {rows.notes.get(key, '')} |")
    lines += [f"| {key} | - | - | - | - | skipped: {reason} |" for key, reason in rows.skipped.items()]
    return "\n".join(lines)


def summary(results: dict[str, dict], peak_gflops: float) -> str:
    """One line per model: ratios to transformers fp32, the fp32 floor (GFLOPs / the higher fp32 peak), zoo
    deploy() against transformers with the same allocator, and the targets."""
    columns = [SAME_ALLOCATOR, REFERENCE, DEPLOY, ORT, OPENVINO, INT8]
    lines = ["| model | GFLOPs | fp32 floor ms (ratio) | transformers fp32 ms | "
             + " | ".join(columns) + " | deploy / transformers same allocator "
             "| targets met (deploy <= 0.65x, best fp32 <= 0.55x, int8 <= 0.40x) |",
             "|---" * (len(columns) + 6) + "|"]
    for name, result in results.items():
        medians = {key: quartiles(v)[1] for key, v in result["times_s"].items()}
        base = medians[BASELINE]
        ratio = {key: value / base for key, value in medians.items()}
        floor = result["gflops"] / peak_gflops
        best_fp32 = min((ratio[k] for k in (ORT, OPENVINO) if k in ratio), default=None)
        met = [f"deploy {'yes' if ratio[DEPLOY] <= TARGETS[DEPLOY] else 'no'}",
               f"fp32 {'-' if best_fp32 is None else 'yes' if best_fp32 <= TARGETS['best fp32 runtime'] else 'no'}",
               f"int8 {'-' if INT8 not in ratio else 'yes' if ratio[INT8] <= TARGETS[INT8] else 'no'}"]
        cells = [f"{ratio[k]:.2f}x" if k in ratio else "-" for k in columns]
        cells.append(f"{medians[DEPLOY] / medians[SAME_ALLOCATOR]:.2f}x" if SAME_ALLOCATOR in medians else "-")
        lines.append(f"| {name} | {result['gflops']:.1f} | {floor * 1e3:.0f} ({floor / base:.2f}x) | "
                     f"{base * 1e3:.0f} | " + " | ".join(cells) + f" | {', '.join(met)} |")
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
    ax.axvline(statistics.median(times[BASELINE]) * 1e3, color="tab:red", linestyle="--", linewidth=1,
               label="transformers fp32 median")
    ax.set_xlabel("latency per forward pass (ms), lower is better")
    ax.set_xlim(left=0)
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"


def _calibration(source: str | None, count: int, folder: Path) -> tuple[list[Path], str]:
    """Calibration images for the int8 rows: --calibration, else coco_tiny's val2017 when present, else synthetic
    shapes (the timing does not depend on them; random weights have no accuracy to keep)."""
    from zoo.data.synthetic import make_synthetic_coco
    from zoo.export.quantize import calibration_images

    if source is None and COCO_TINY.is_dir():
        source = str(COCO_TINY)
    if source is None:
        make_synthetic_coco(folder / "calibration", "images", count, seed=7, image_size=320)
        return calibration_images(folder / "calibration", count), f"{count} synthetic shape images"
    files = calibration_images(source, count)
    return files, f"{len(files)} images of {source}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--size", type=int, default=None, help="input side (default: each model's own, e.g. 640; "
                        "rfdetr_nano 384, deimv2_atto 320)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10, help="timed calls of every row, interleaved")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch, onnxruntime and OpenVINO")
    parser.add_argument("--calibration", default=None, metavar="DIR",
                        help="images for the int8 rows (default: ../shared/data/coco_tiny/val2017, else synthetic)")
    parser.add_argument("--calibration-count", type=int, default=16)
    parser.add_argument("--no-int8", action="store_true", help="leave out the int8 rows (their calibration takes "
                        "minutes for the large models)")
    parser.add_argument("--bf16", action="store_true", help="add bf16 rows (slow on CPUs without AVX512-BF16/AMX)")
    parser.add_argument("--compile", action="store_true", help="add a zoo deploy() + torch.compile row")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="latency box plot (with several models: one file per model, named PNG_model.png)")
    parser.add_argument("--json", default=None, help="also write the raw timings here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    import transformers

    from zoo.models.complexity import model_complexity

    before = machine_state(threads)
    print(f"before: {before['text']}", flush=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ap32 = ap8 = None
        calibration: list[Path] = []
        if args.no_int8:
            gate = "--no-int8"
        else:
            ap32, ap8 = int8_demo_ap(folder, threads)
            lost = abs(ap32 - ap8) > 1.0
            gate = f"demo AP {ap8:.1f} int8 vs {ap32:.1f} fp32: more than 1 point lost" if lost else None
            calibration, calibration_text = _calibration(args.calibration, args.calibration_count, folder)
            print(f"int8 check on the demo weights (50 held-out shapes): AP {ap32:.1f} fp32, {ap8:.1f} int8; the "
                  f"timed models' int8 rows are calibrated on {calibration_text}", flush=True)
        for name in args.models:
            model, hf = twin_models(name)
            side = args.size or model.pretrained_cfg["input_size"][-1]
            x = torch.rand(args.batch_size, 3, side, side, generator=torch.Generator().manual_seed(0))
            rows = build_rows(name, model, hf, x, folder, threads, calibration, gate, args.bf16, args.compile)
            try:
                times, diffs = measure(rows.runs, args.rounds, args.warmup, label=name)
            finally:
                rows.runs[BASELINE].close()
            title = (f"{name}, batch {args.batch_size}, {side}x{side}, CPU ({threads} threads, "
                     f"{platform.processor() or platform.machine()})")
            header = (f"{title}: median of {args.rounds} interleaved rounds after {args.warmup} warm-up; torch "
                      f"{torch.__version__}, transformers {transformers.__version__}.")
            print(table(times, diffs, rows, header), flush=True)
            if args.plot:
                target = Path(args.plot) if len(args.models) == 1 else Path(args.plot).with_name(
                    f"{Path(args.plot).stem}_{name}{Path(args.plot).suffix or '.png'}")
                print(plot(times, target, title))
            results[name] = {"times_s": times, "max_abs_diff": diffs, "skipped": rows.skipped, "notes": rows.notes,
                             "gflops": model_complexity(name, side)["gflops"], "size": side}
            del rows, model, hf
    after = machine_state(threads, running=threads)
    peak = max(before["conv_peak_gflops"], before["matmul_peak_gflops"])
    print(f"\nSummary: median latency / transformers fp32 in its own process (one interleaved run per model); fp32 "
          f"floor = the model's GFLOPs at its input size / this CPU's higher fp32 peak ({peak:.0f} GFLOP/s before "
          f"the run).\n")
    print(summary(results, peak))
    print(f"\nbefore: {before['text']}\nafter: {after['text']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "models": results, "int8_demo_ap": [ap32, ap8],
                                               "machine": {"before": before, "after": after}}, indent=1))


if __name__ == "__main__":
    main()
