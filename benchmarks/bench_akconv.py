"""AKConv speed: the official formulation (``impl="gather"``) vs the fast path (``impl="grid_sample"``).

Prints one table row per (num_param, stride): the best-of-``repeats`` forward and forward+backward times of both
implementations (the minimum is the least disturbed by other processes on a shared machine),
their ratio (gather / grid_sample, > 1 means the fast path is faster) and the largest output difference, absolute
and relative to the largest output. CPU is always measured; CUDA columns are added when a GPU is present
(``--no-cuda`` to skip).

    python benchmarks/bench_akconv.py --threads 1 --size 80 --channels 128 --num-param 3 5 9 13
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from zoo.layers.akconv import AKConv


def _best_ms(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 2) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def bench_case(num_param: int, stride: int, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Times of both implementations for one configuration on one device, plus their max output difference."""
    torch.manual_seed(0)
    m = AKConv(args.channels, args.channels, num_param, stride).to(device)
    with torch.no_grad():
        m.p_conv.weight.normal_(0, 0.05)  # non-trivial offsets, as after some training
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=device)
    out, res = {}, {}
    for impl in ("gather", "grid_sample"):
        m.impl = impl
        with torch.no_grad():
            res[impl] = m(x)
            out[f"{impl}_fwd"] = _best_ms(lambda: m(x), device, args.repeats)
        xg = x.clone().requires_grad_()

        def step() -> None:
            m(xg).sum().backward()

        out[f"{impl}_train"] = _best_ms(step, device, args.repeats)
    out["max_diff"] = (res["gather"] - res["grid_sample"]).abs().max().item()
    out["rel_diff"] = out["max_diff"] / res["gather"].abs().max().item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-param", type=int, nargs="+", default=[1, 3, 5, 9, 13])
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=80, help="input height and width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the GPU columns even when a GPU is present")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    print(f"AKConv {args.channels}->{args.channels}, input {args.batch}x{args.channels}x{args.size}x{args.size}, "
          f"best of {args.repeats}; CPU threads {torch.get_num_threads()}"
          + (f"; GPU {torch.cuda.get_device_name()}" if len(devices) > 1 else "; no GPU: CUDA columns omitted"))
    print("times in ms; ratio = gather / grid_sample; train = forward + backward")
    header = ["N", "stride"]
    for d in devices:
        tag = d.type
        header += [f"{tag} gather fwd", f"{tag} grid fwd", f"{tag} ratio",
                   f"{tag} gather train", f"{tag} grid train", f"{tag} ratio", f"{tag} max abs diff",
                   f"{tag} rel diff"]
    rows = []
    for n in args.num_param:
        for s in args.strides:
            row = [str(n), str(s)]
            for d in devices:
                r = bench_case(n, s, args, d)
                row += [f"{r['gather_fwd']:.2f}", f"{r['grid_sample_fwd']:.2f}",
                        f"{r['gather_fwd'] / r['grid_sample_fwd']:.2f}x",
                        f"{r['gather_train']:.2f}", f"{r['grid_sample_train']:.2f}",
                        f"{r['gather_train'] / r['grid_sample_train']:.2f}x", f"{r['max_diff']:.1e}",
                        f"{r['rel_diff']:.1e}"]
            rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(" | ".join(h.rjust(w) for h, w in zip(header, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.rjust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
