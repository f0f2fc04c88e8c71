"""Parameters and GFLOPs of a model: computed here, once, for ``zoo info``, ``zoo list --table`` (the README's model
table) and the manifest's "measured by zoo" figures.

The model is built and run on the meta device: shapes only, no weight memory and no arithmetic, so even DETR at
800x1333 takes seconds. FLOPs are torch's FlopCounterMode for one image (1 multiply-add = 2 FLOPs). On a real
device the fused attention kernel of ``nn.MultiheadAttention`` (its inference fast path) has no FLOP formula and
its matmuls would go uncounted; on the meta device attention runs as plain matmuls, which are counted.

``python -m zoo.models.complexity`` rewrites the README's model table and the manifest's "measured by zoo"
figures from :func:`model_complexity`.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["model_complexity", "cached_complexity", "model_table", "update_readme", "update_manifest"]

#: the README's model table starts with this header row and ends at the first line that is not a table row
TABLE_HEADER = "| model | params (M) | GFLOPs | input | description |"
#: the params and GFLOPs numbers of a manifest entry's "complexity" object, as the manifest file lays it out
_FIGURES = re.compile(r'("complexity": \{\s*"params_m": )[^,]+(,\s*"gflops": )[^,]+,')


def model_complexity(name: str, input_size: int | tuple[int, int] | None = None,
                     model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"params_m", "gflops", "input_size": [h, w]}`` of ``name`` (with ``model_args`` overrides) for one image
    of ``input_size`` (default: the model's ``pretrained_cfg``)."""
    size = (input_size, input_size) if isinstance(input_size, int) else input_size
    args = json.dumps(model_args or {}, sort_keys=True)
    return dict(_complexity(name, tuple(size) if size else None, args))


@lru_cache(maxsize=None)
def _complexity(name: str, size: tuple[int, int] | None, args: str) -> tuple[tuple[str, Any], ...]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from zoo.factory import create_model

    with torch.device("meta"):
        model = create_model(name, **json.loads(args)).eval()
    height, width = size or tuple(model.pretrained_cfg["input_size"][1:])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, height, width, device="meta"))
    return (("params_m", round(sum(p.numel() for p in model.parameters()) / 1e6, 3)),
            ("gflops", round(counter.get_total_flops() / 1e9, 2)), ("input_size", [height, width]))


def _code_fingerprint() -> str:
    """Identifies the model code and torch: the sizes and modification times of zoo's model and layer sources."""
    import hashlib

    import torch

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(torch.__version__.encode())
    for path in sorted([*(root / "models").rglob("*.py"), *(root / "layers").rglob("*.py")]):
        st = path.stat()
        digest.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def cached_complexity(name: str, input_size: int | tuple[int, int] | None = None,
                      model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`model_complexity`, remembered in the zoo cache (``complexity.json``) for as long as the model code and
    torch are unchanged: counting FLOPs runs the model (on the meta device), seconds that ``zoo info`` then saves."""
    from zoo.weights.cache import JsonStore, zoo_cache_dir

    key = json.dumps([_code_fingerprint(), name, input_size, model_args or {}], sort_keys=True)
    store = JsonStore(zoo_cache_dir() / "complexity.json")
    try:
        known = store.read().get(key)
    except (OSError, ValueError):  # the cache only saves time
        known = None
    if isinstance(known, dict):
        return known
    figures = model_complexity(name, input_size, model_args)
    try:
        with store.update() as data:
            for old in [k for k in data if json.loads(k)[0] != json.loads(key)[0]]:  # other code: never used again
                del data[old]
            data[key] = figures
    except (OSError, ValueError):
        pass
    return figures


def model_table(names: list[str]) -> str:
    """Markdown table of ``names``: parameters, GFLOPs at the default input size, first docstring line."""
    from zoo.registry import model_aliases, model_entrypoint

    aliases: dict[str, list[str]] = {}
    for alias, target in model_aliases().items():
        aliases.setdefault(target, []).append(alias)
    rows = [TABLE_HEADER, "|---|---|---|---|---|"]
    for name in names:
        info = model_complexity(name)
        doc = (model_entrypoint(name).__doc__ or "").strip().splitlines()[0]
        shown = "".join(f" (alias `{a}`)" for a in sorted(aliases.get(name, [])))
        size = "x".join(str(v) for v in info["input_size"])
        rows.append(f"| `{name}`{shown} | {info['params_m']:.1f} | {info['gflops']:.1f} | {size} | {doc} |")
    return "\n".join(rows)


def readme_table(text: str) -> tuple[int, int]:
    """Line range ``[start, end)`` of the model table in the README's ``text``."""
    lines = text.splitlines()
    start = lines.index(TABLE_HEADER)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return start, end


def update_readme(path: str | Path) -> bool:
    """Rewrite the model table of the README at ``path`` from the registry; True when it changed."""
    from zoo.registry import list_models

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    start, end = readme_table(text)
    new = "\n".join(lines[:start] + model_table(list_models()).splitlines() + lines[end:]) + "\n"
    path.write_text(new, encoding="utf-8")
    return new != text


def measured(entry: Any) -> dict[str, Any]:
    """The "measured by zoo" complexity of a manifest entry: its architecture, model_args and classes at its
    input size."""
    args = {**entry.model_args, "num_classes": entry.num_classes}
    size = tuple(entry.complexity["input_size"])
    return {**model_complexity(entry.architecture, size, args), "provenance": "measured by zoo"}


def update_manifest(path: str | Path) -> bool:
    """Recompute params and GFLOPs of every "measured by zoo" entry of the manifest at ``path`` (editing just
    those numbers, so that the file's layout is kept); True when it changed."""
    from zoo.weights.manifest import load_manifest

    path = Path(path)
    text = original = path.read_text(encoding="utf-8")
    for name, entry in load_manifest(path).entries.items():
        if entry.complexity.get("provenance") != "measured by zoo":
            continue
        figures = measured(entry)
        start = text.index(json.dumps(name) + ": {")
        head, tail = text[:start], text[start:]
        text = head + _FIGURES.sub(lambda m: f"{m[1]}{figures['params_m']}{m[2]}{figures['gflops']},", tail, count=1)
    path.write_text(text, encoding="utf-8")
    return text != original


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]
    for target, update in ((root / "README.md", update_readme),
                           (root / "zoo" / "weights_manifest.json", update_manifest)):
        print(f"{target}: {'updated' if update(target) else 'unchanged'}")
