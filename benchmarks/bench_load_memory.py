"""Peak memory of ``create_model(name, pretrained=True)`` against the size of the weights, with a local Hub.

zoo builds the model on the meta device and assigns the memory-mapped safetensors tensors, so loading should cost
about nothing beyond the file's pages; the usual way (build with random init, then copy a loaded state dict in)
holds the weights twice. Each case runs in a fresh process once the file is in the cache; it reports the peak RSS
during the load (VmHWM, reset before it) and the private (anonymous) and file-backed memory after it:

    python benchmarks/bench_load_memory.py --arch rtdetr_r50vd

Needs olah (pip install olah) for the local Hub; nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def _status(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) so that the peak covers the load only (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _memory() -> dict[str, int]:
    return {"anon": _status("RssAnon"), "file": _status("RssFile"), "rss": _status("VmRSS")}


def child(mode: str, arch: str, size: int) -> dict:
    """One measurement in this (fresh) process: RSS before, peak during the load, RSS after a forward pass."""
    import torch

    import zoo
    from zoo.weights.download import fetch_weights
    from zoo.weights.manifest import load_manifest

    torch.set_num_threads(1)
    entry = load_manifest().resolve(arch)
    path = fetch_weights(entry)  # a cache hit: the parent prefetched it
    _reset_peak()
    before, start = _memory(), time.perf_counter()
    if mode == "zoo":
        model = zoo.create_model(arch, pretrained=True)
    else:  # the usual way: random init, read the file into memory, copy it in
        from safetensors.torch import load as load_bytes

        model = zoo.create_model(arch, num_classes=entry.num_classes, **entry.model_args)
        model.load_state_dict(load_bytes(Path(path).read_bytes()))
    seconds = time.perf_counter() - start
    peak, loaded = _status("VmHWM") - before["rss"], _memory()
    with torch.no_grad():
        model.eval()(torch.rand(1, 3, size, size))
    after = _memory()
    return {"mode": mode, "load_s": round(seconds, 2), "peak_rss_mb": round(peak / MB),
            "anon_mb": round((loaded["anon"] - before["anon"]) / MB),
            "file_mb": round((loaded["file"] - before["file"]) / MB),
            "anon_after_forward_mb": round((after["anon"] - before["anon"]) / MB),
            "file_after_forward_mb": round((after["file"] - before["file"]) / MB)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="rtdetr_r50vd", help="architecture (random weights, zoo format)")
    parser.add_argument("--size", type=int, default=320, help="input size of the forward pass")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--child", choices=["zoo", "copy"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.arch, args.size)))
        return

    sys.path.insert(0, str(REPO / "tests" / "hub"))
    import torch
    from local_hub import LocalHub, manifest_entry
    from safetensors.torch import save_file

    import zoo
    from zoo.weights.download import fetch_weights, sha256_file
    from zoo.weights.manifest import load_manifest

    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        tmp = Path(tmp)
        hub = LocalHub(tmp / "hub").start()
        try:
            model = zoo.create_model(args.arch)
            weights, num_classes = tmp / "model.safetensors", model.num_classes
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
            del model
            repo = f"zoo-bench/{args.arch}"
            hub.commit(repo, {"model.safetensors": weights})
            entry = manifest_entry(repo, sha256=sha256_file(weights), size=weights.stat().st_size,
                                   num_classes=num_classes)
            manifest = tmp / "manifest.json"
            manifest.write_text(json.dumps({"schema_version": 1, "weights": {f"{args.arch}.bench": entry}}))
            env = {**os.environ, "ZOO_WEIGHTS_MANIFEST": str(manifest), "HF_ENDPOINT": hub.endpoint,
                   "HF_HUB_CACHE": str(tmp / "cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
            os.environ.update(env)
            fetch_weights(load_manifest().resolve(args.arch))  # download + sha256 check, outside the measurement
            rows = []
            for mode in ("zoo", "copy"):
                out = subprocess.run([sys.executable, __file__, "--child", mode, "--arch", args.arch,
                                      "--size", str(args.size)], env=env, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"the {mode} measurement failed:\n{out.stderr[-3000:]}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            hub.stop()
    size_mb = entry["hub"]["size"] / MB
    result = {"arch": args.arch, "weights_mb": round(size_mb), "torch": torch.__version__, "runs": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.arch}: weights {size_mb:.0f} MB; increases over the process before the load, in MB "
          f"(anon = private memory, file = pages of the memory-mapped weights, shared with the page cache)")
    print(f"{'load':<5} {'time s':>6} {'peak RSS':>9} {'x weights':>9} {'anon':>6} {'file':>6}   "
          f"after a {args.size}x{args.size} forward: {'anon':>5} {'file':>5}")
    for r in rows:
        print(f"{r['mode']:<5} {r['load_s']:>6} {r['peak_rss_mb']:>9} {r['peak_rss_mb'] / size_mb:>9.2f} "
              f"{r['anon_mb']:>6} {r['file_mb']:>6}   {'':>22}{r['anon_after_forward_mb']:>5} "
              f"{r['file_after_forward_mb']:>5}")


if __name__ == "__main__":
    main()
