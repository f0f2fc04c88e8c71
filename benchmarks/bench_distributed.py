"""Sharded ``zoo eval``, ``zoo predict`` and ``zoo train`` under torchrun against one process, on GPUs (NCCL) or CPU.

On the synthetic shapes with the bundled demo weights (no network), every variant runs as its own command and is
compared with the single process: eval metrics (exactly) and detections, predict's detections.json, and for
training that the sharded validation it logs equals ``zoo eval`` of the model it exported. Prints a table with
the wall time of each command (process start and model load included) and exits 1 when a result differs.

    python benchmarks/bench_distributed.py                  # cuda when available: torchrun x1 on NCCL, and
                                                            # x2 (NCCL on 2+ GPUs, else gloo on one GPU)
    python benchmarks/bench_distributed.py --device cpu --images 13 --skip-train   # what the CPU check ran
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "rtdetr_mobilenetv3_small.shapes_demo"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], nproc: int, backend: str | None) -> tuple[float, str | None]:
    """``zoo ARGS`` in one process (nproc 0) or under torchrun; (wall seconds, error text or None)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if backend:
        env["ZOO_DIST_BACKEND"] = backend
    launch = [sys.executable, "-m", "zoo"] if nproc == 0 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
        "--master_port", str(_port()), "-m", "zoo"]
    start = time.perf_counter()
    proc = subprocess.run(launch + args, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    return wall, None if proc.returncode == 0 else (proc.stdout[-2000:] + proc.stderr[-4000:])


def _detections(out: Path) -> dict:
    data = json.loads((out / "detections.json").read_text())
    for record in data["images"]:
        record["annotated"] = Path(record.get("annotated", "")).name
    return data


def _max_diff(a: list[dict], b: list[dict]) -> float:
    """Largest difference of scores and box coordinates between two equally long detection lists."""
    diffs = [abs(x - y) for da, db in zip(a, b)
             for x, y in zip([da["score"], *da["bbox"]], [db["score"], *db["bbox"]])]
    return max(diffs, default=0.0)


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=203, help="validation images (an odd count on purpose)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-train", action="store_true", help="eval and predict only")
    parser.add_argument("--keep", default=None, metavar="DIR", help="work here and keep the files")
    opts = parser.parse_args()
    from zoo.data.synthetic import make_synthetic_coco

    root = Path(opts.keep or tempfile.mkdtemp(prefix="bench_distributed_"))
    ann = make_synthetic_coco(root / "data", "val", opts.images, seed=1, image_size=96)
    make_synthetic_coco(root / "data", "train", 4 * opts.batch_size, seed=0, image_size=96)
    cuda = opts.device.startswith("cuda")
    gpus = torch.cuda.device_count() if cuda else 0
    # (label, processes, backend override, device flag); 0 processes = plain `python -m zoo`
    variants = [("1 process", 0, None, opts.device), ("torchrun x1", 1, None, opts.device)]
    if cuda and gpus >= 2:
        variants.append(("torchrun x2", 2, None, opts.device))
    elif cuda:
        variants.append(("torchrun x2, one GPU", 2, "gloo", "cuda:0"))  # NCCL refuses two ranks on one GPU
    else:
        variants.append(("torchrun x2", 2, None, "cpu"))

    rows, failed = [], False
    base: dict[str, object] = {}
    for label, nproc, backend, device in variants:
        tag = label.replace(" ", "_").replace(",", "")
        backend_name = backend or ("-" if nproc == 0 else "nccl" if device.startswith("cuda") else "gloo")
        eval_out, pred_out = root / f"eval_{tag}", root / f"predict_{tag}"
        wall, error = _run(["eval", MODEL, "--ann", str(ann), "--images", str(root / "data" / "val"), "--device",
                            device, "--batch-size", str(opts.batch_size), "--workers", "2", "--out", str(eval_out)],
                           nproc, backend)
        if error:
            rows.append((f"eval, {label}", backend_name, device, wall, "-", f"FAILED: {error.strip()[-300:]}"))
            failed = True
        else:
            metrics = json.loads((eval_out / "metrics.json").read_text())
            detections = json.loads((eval_out / "detections.json").read_text())
            if nproc == 0:
                base["metrics"], base["detections"] = metrics["metrics"], detections
                verdict = "reference"
            else:
                same = metrics["metrics"] == base.get("metrics")
                exact = detections == base.get("detections")
                diff = _max_diff(detections, base["detections"]) if len(detections) == len(base["detections"]) \
                    else float("inf")
                verdict = (f"metrics {'equal' if same else 'DIFFER'}, detections "
                           f"{'identical' if exact else f'differ by up to {diff:.2e}'}, world_size "
                           f"{metrics['world_size']}")
                failed |= not same or metrics["world_size"] != nproc
            rows.append((f"eval, {label}", backend_name, device, wall, f"{metrics['metrics']['AP']:.4f}", verdict))
        wall, error = _run(["predict", MODEL, str(root / "data" / "val"), "--device", device, "--batch-size",
                            str(opts.batch_size), "--threshold", "0.3", "--out", str(pred_out)], nproc, backend)
        if error:
            rows.append((f"predict, {label}", backend_name, device, wall, "-", f"FAILED: {error.strip()[-300:]}"))
            failed = True
        else:
            result = _detections(pred_out)
            if nproc == 0:
                base["predict"], verdict = result, "reference"
            else:
                same = result == base.get("predict")
                verdict = f"detections.json {'identical' if same else 'DIFFERS'}"
                failed |= not same
            rows.append((f"predict, {label}", backend_name, device, wall, "-", verdict))
        if nproc and not opts.skip_train:
            failed |= _train_row(rows, root, label, tag, nproc, backend, backend_name, device, opts.batch_size)

    print(f"\n{opts.images} synthetic 96x96 images, batch {opts.batch_size}, model {MODEL}, "
          f"torch {torch.__version__}, {torch.cuda.get_device_name(0) if cuda else 'CPU'} ({gpus} GPU(s))\n")
    print("| command | backend | device | wall s | AP | result |")
    print("|---|---|---|---|---|---|")
    for name, backend_name, device, wall, ap, verdict in rows:
        print(f"| {name} | {backend_name} | {device} | {wall:.1f} | {ap} | {verdict} |")
    print(f"\nfiles under {root}" if opts.keep else "")
    return 1 if failed else 0


def _train_row(rows: list, root: Path, label: str, tag: str, nproc: int, backend: str | None, backend_name: str,
               device: str, batch_size: int) -> bool:
    """One epoch of fine-tuning the demo under torchrun with sharded validation; its logged metrics must equal
    ``zoo eval`` (one process) of the model it exported. Returns whether it failed."""
    run = root / f"train_{tag}"
    data = root / "data"
    wall, error = _run(["train", "rtdetr_mobilenetv3_small", "--weights", "shapes_demo", "--data", str(data),
                        "--output", str(run), "--epochs", "1", "--batch-size", str(2 * nproc), "--lr", "1e-4",
                        "--warmup-steps", "2", "--workers", "0", "--no-augment", "--no-multiscale", "--device",
                        device, "--no-progress"], nproc, backend)
    if error:
        rows.append((f"train 1 epoch, {label}", backend_name, device, wall, "-", f"FAILED: {error.strip()[-300:]}"))
        return True
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = {k[4:]: v for k, v in logged[-1].items() if k.startswith("val_")}
    _, error = _run(["eval", f"local-dir:{run / 'final'}", "--ann", str(data / "val.json"), "--images",
                     str(data / "val"), "--device", device.replace("cuda:0", "cuda"), "--batch-size", "8",
                     "--workers", "0", "--out", str(run / "eval")], 0, None)
    if error:
        rows.append((f"train 1 epoch, {label}", backend_name, device, wall, "-", f"eval FAILED: {error[-300:]}"))
        return True
    same = json.loads((run / "eval" / "metrics.json").read_text())["metrics"] == val
    rows.append((f"train 1 epoch, {label}", backend_name, device, wall, f"{val.get('AP', float('nan')):.4f}",
                 f"logged val metrics {'equal' if same else 'DIFFER from'} zoo eval of the exported model"))
    return not same


if __name__ == "__main__":
    sys.exit(main())
