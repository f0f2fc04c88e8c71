"""``zoo list`` and ``zoo info``: what the registry holds."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered models", description="List registered models (fnmatch patterns).")
    p.add_argument("pattern", nargs="?", default="", help="wildcard filter, e.g. 'rtdetr_*'")
    p.add_argument("--exclude", action="append", default=[], help="wildcard to exclude (repeatable)")
    p.add_argument("--pretrained", action="store_true", help="list architecture.tag names that have weights")
    p.add_argument("--table", action="store_true",
                   help="print a Markdown table (parameters, GFLOPs, description) -- the README's model table")
    p.set_defaults(func=_list)

    p = sub.add_parser("info", help="describe a model", description="Parameters, GFLOPs and config of a model.")
    p.add_argument("name", help="model name, e.g. rtdetr_r18vd")
    p.add_argument("--size", type=int, default=None, help="input size for GFLOPs (default: the model's)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_info)


def _list(args: argparse.Namespace) -> int:
    from zoo.registry import list_models

    names = list_models(args.pattern, exclude_filters=args.exclude, pretrained=args.pretrained)
    if args.table:
        print(model_table(names))
        return 0
    for name in names:
        print(name)
    return 0


def model_table(names: list[str]) -> str:
    """Markdown table of ``names``: parameters, GFLOPs at the default input size, first docstring line."""
    from zoo.registry import model_aliases, model_entrypoint

    aliases: dict[str, list[str]] = {}
    for alias, target in model_aliases().items():
        aliases.setdefault(target, []).append(alias)
    rows = ["| model | params (M) | GFLOPs | input | description |", "|---|---|---|---|---|"]
    for name in names:
        info = model_summary(name)
        doc = (model_entrypoint(name).__doc__ or "").strip().splitlines()[0]
        shown = name + "".join(f" (alias `{a}`)" for a in sorted(aliases.get(name, [])))
        size = "x".join(str(v) for v in info["input_size"][1:])
        rows.append(f"| `{name}`{shown[len(name):]} | {info['params_m']:.1f} | {info['gflops']:.1f} | {size} | {doc} |")
    return "\n".join(rows)


def model_summary(name: str, size: int | None = None) -> dict:
    """Parameters, GFLOPs (one image, torch's FLOP counter; 1 multiply-add = 2 FLOPs), config and preprocessing."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from zoo.factory import create_model

    model = create_model(name).eval()
    cfg = model.pretrained_cfg
    h, w = (size, size) if size else tuple(cfg["input_size"][1:])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, h, w))
    return {
        "name": name,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "gflops": round(counter.get_total_flops() / 1e9, 2),
        "input_size": [3, h, w],
        "config": model.config,
        "pretrained_cfg": cfg,
    }


def _info(args: argparse.Namespace) -> int:
    info = model_summary(args.name, args.size)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{info['name']}: {info['params_m']:.2f}M parameters, {info['gflops']:.1f} GFLOPs at "
          f"{info['input_size'][1]}x{info['input_size'][2]}")
    print("config:", json.dumps(info["config"], default=str))
    print("pretrained_cfg:", json.dumps(info["pretrained_cfg"], default=str))
    return 0
