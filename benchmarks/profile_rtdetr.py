"""Where the time of one RT-DETR forward pass goes on this machine: torch.profiler's op table per configuration.

Runs zoo eager fp32, zoo ``deploy()`` fp32 (channels-last) and zoo ``deploy()`` bf16 on random weights, a few
calls each after warm-up, and prints the ops that take the most self time. This is what the optimisations in
docs/performance.md were chosen from.

    python benchmarks/profile_rtdetr.py                          # rtdetr_r18vd, batch 1, 640x640
    python benchmarks/profile_rtdetr.py --configs bf16 --rows 15
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch.profiler import ProfilerActivity, profile

import zoo
from zoo.engine.inference import prepare_for_inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="rtdetr_r18vd")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--configs", nargs="+", default=["eager", "deploy", "bf16"], choices=["eager", "deploy", "bf16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = zoo.create_model(args.model).eval()
    x = torch.rand(1, 3, args.size, args.size)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    runs = {"eager": (model, x),
            "deploy": (prepare_for_inference(copy.deepcopy(model), "fp32"), x_cl),
            "bf16": (prepare_for_inference(copy.deepcopy(model), "bf16"), x_cl.bfloat16())}
    for name in args.configs:
        net, inputs = runs[name]
        with torch.inference_mode():
            net(inputs)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.calls):
                    net(inputs)
        print(f"\n## {args.model} {name}: {args.calls} calls, {torch.get_num_threads()} threads")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
