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
    import sys

    from zoo.registry import list_models, model_aliases

    names = list_models(args.pattern, exclude_filters=args.exclude, pretrained=args.pretrained)
    aliases = {} if args.pretrained or args.table else {  # an alias names a model: list it, saying which
        alias: target for alias, target in model_aliases().items()
        if alias in list_models(args.pattern, exclude_filters=args.exclude, include_aliases=True)}
    if not names and not aliases:
        kind = "weight tag" if args.pretrained else "registered model"
        print(f"no {kind} matches {args.pattern!r}" + (f" (excluding {', '.join(args.exclude)})" if args.exclude
                                                          else "") + "; `zoo list` shows them all", file=sys.stderr)
        return 1
    if args.table:
        from zoo.models.complexity import model_table

        print(model_table(names))
        return 0
    lines = {name: name for name in names} | {alias: f"{alias} (alias of {target})" for alias, target in aliases.items()}
    for name in sorted(lines):
        print(lines[name])
    return 0


def model_summary(name: str, size: int | None = None) -> dict:
    """Parameters, GFLOPs (:func:`zoo.models.complexity.model_complexity`, remembered in the zoo cache while the
    model code is unchanged), config and preprocessing."""
    import torch

    from zoo.factory import create_model
    from zoo.models.complexity import cached_complexity

    with torch.device("meta"):  # config and preprocessing only: no weights
        model = create_model(name)
    return {"name": name, **cached_complexity(model.config["architecture"], size), "config": model.config,
            "pretrained_cfg": model.pretrained_cfg}


def _info(args: argparse.Namespace) -> int:
    info = model_summary(args.name, args.size)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{info['name']}: {info['params_m']:.2f}M parameters, {info['gflops']:.1f} GFLOPs at "
          f"{info['input_size'][0]}x{info['input_size'][1]}")
    print("config:", json.dumps(info["config"], default=str))
    print("pretrained_cfg:", json.dumps(info["pretrained_cfg"], default=str))
    return 0
