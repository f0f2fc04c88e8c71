"""mkdocs hook: the pages generated from the code at build time, so that no table or help text is copied by hand.

- ``model-zoo.md``: every registered model and alias (parameters and GFLOPs measured as ``zoo info`` does, for one
  image at the model's input size) and every manifest entry (file, license, complexity, metrics with provenance).
  Measuring all models takes minutes on a CPU: ``ZOO_DOCS_MEASURE=0 mkdocs build`` leaves those two columns out.
- ``cli.md``: the ``--help`` of ``zoo`` and of every sub-command, from the argparse parsers.
- ``api/<package>.md``: one mkdocstrings page per sub-package of ``zoo``, listed in the nav.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Iterator

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "zoo"


def _measure() -> bool:
    return os.environ.get("ZOO_DOCS_MEASURE", "1") != "0"


# ---------------------------------------------------------------------------------------------- API reference

def api_pages() -> dict[str, list[str]]:
    """``{page name: [modules documented on it]}``: the top-level modules on ``zoo``, then one page per
    sub-package (its ``__init__`` and every module below it), found in the source tree."""
    pages: dict[str, list[str]] = {"zoo": ["zoo"]}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__" or any(p.startswith("_") and p != "__init__" for p in parts):
            continue
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        page = "zoo" if len(parts) == 2 else ".".join(parts[:2])
        if module not in pages.setdefault(page, []):
            pages[page].append(module)
    return pages


def api_page(page: str, modules: list[str]) -> str:
    intro = f"# `{page}`\n\nGenerated from the docstrings with mkdocstrings.\n"
    return intro + "".join(f"\n::: {module}\n" for module in modules)


# ---------------------------------------------------------------------------------------------- CLI reference

def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and, depth first, every sub-command parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield from _parsers(sub)


def cli_page() -> str:
    from zoo.cli import build_parser

    lines = ["# Command line", "",
             "Generated from the argparse parsers (`zoo.cli`). `python -m zoo` works the same; exit codes are 0 (ok),",
             "1 (error) and 2 (usage).", ""]
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"  # argparse wraps help text to the terminal width: the code block's width
    try:
        for parser in _parsers(build_parser()):
            level = "#" * min(2 + parser.prog.count(" "), 4)
            lines += [f"{level} `{parser.prog}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- model zoo

def _link(text: str, url: str | None) -> str:
    return f"[{text}]({url})" if url and url.startswith(("http://", "https://")) else text


def _metric(m: dict[str, Any]) -> str:
    source = m.get("source")
    provenance = _link(m.get("provenance", ""), source)
    where = "" if source and source.startswith("http") else f"; {source}" if source else ""
    return f"{m['metric']} {m['value']} on {m['dataset']} ({provenance}{where})"


def _file(entry: Any) -> str:
    if entry.hub is not None:
        url = f"https://huggingface.co/{entry.hub.repo_id}"
        location = f"{_link(entry.hub.repo_id, url)} @ `{entry.hub.revision}`, `{entry.hub.filename}`"
    else:
        location = f"bundled: `zoo/{entry.package.path}`"
    return location + (f", sha256 `{entry.sha256[:8]}…`" if entry.sha256 else ", sha256 not yet recorded")


def _complexity(c: dict[str, Any]) -> str:
    if not c:
        return ""
    size = "x".join(str(v) for v in c.get("input_size", []))
    return f"{c['params_m']:.1f} M / {c['gflops']:.1f} at {size} ({c.get('provenance', '')})"


def _tag(entry: Any) -> str:
    """A weight tag in the architectures table; weights of another config than the architecture's default (their
    ``model_args``, e.g. the narrow shapes demo) carry their own figures, since the row's are the default's."""
    c = dict(entry.complexity)
    if not entry.model_args or not c:
        return f"`{entry.tag}`"
    size = "x".join(str(v) for v in c.get("input_size", []))
    return f"`{entry.tag}` (its own config: {c['params_m']:.2f} M params, {c['gflops']:g} GFLOPs at {size})"


def architecture_row(name: str, manifest: Any, aliases: list[str], measure: bool) -> str:
    """One row of the architectures table; ``measure`` builds the model to count parameters and FLOPs."""
    from zoo.cli.models import model_summary
    from zoo.registry import model_entrypoint

    doc = (model_entrypoint(name).__doc__ or "").strip().splitlines()[0]
    tags = ", ".join(_tag(manifest.entries[f"{name}.{t}"]) for t in manifest.tags(name)) \
        if name in manifest.architectures() else ""
    params = gflops = size = "–"
    if measure:
        info = model_summary(name)
        params, gflops = f"{info['params_m']:.1f}", f"{info['gflops']:.1f}"
        size = "x".join(str(v) for v in info["input_size"][-2:])
    alias = ", ".join(f"`{a}`" for a in aliases)
    return f"| `{name}` | {alias} | {params} | {gflops} | {size} | {tags} | {doc} |"


def model_zoo_page() -> str:
    from zoo.weights.manifest import load_manifest
    from zoo.registry import list_models, model_aliases

    manifest = load_manifest()
    aliases: dict[str, list[str]] = {}
    for alias, target in model_aliases().items():
        aliases.setdefault(target, []).append(alias)
    lines = ["---", "hide: [navigation, toc]", "---", "",  # the tables need the page's full width
             "# Model zoo", "",
             "Generated when this site is built, from the registry (`zoo.list_models()`) and the weights manifest",
             "(`zoo/weights_manifest.json`). Parameters and GFLOPs are measured as `zoo info` does: torch's FLOP",
             "counter on one image at the model's input size, 1 multiply-add = 2 FLOPs.", ""]
    if not _measure():
        lines += ["!!! note", "    This build skipped the measurements (`ZOO_DOCS_MEASURE=0`).", ""]
    lines += ["## Architectures", "", "| model | aliases | params (M) | GFLOPs | input | weights | description |",
              "|---|---|---|---|---|---|---|"]
    lines += [architecture_row(name, manifest, sorted(aliases.get(name, [])), _measure()) for name in list_models()]
    lines += ["", "## Pretrained weights", "",
              "Every entry of the manifest: `create_model(\"architecture\", pretrained=\"tag\")` or "
              "`create_model(\"architecture.tag\", pretrained=True)`. Metrics say where they come from: "
              "*reported upstream* (with the source) or *measured by zoo*. See [Weights and trust](weights.md).", "",
              "| weights | file | license | data | classes | params / GFLOPs | metrics |", "|---|---|---|---|---|---|---|"]
    for entry in sorted(manifest.entries.values(), key=lambda e: e.name):
        default = " (default)" if manifest.default_tag(entry.architecture) == entry.tag else ""
        metrics = "<br>".join(_metric(m) for m in entry.metrics)
        lines.append(f"| `{entry.name}`{default} | {_file(entry)} | {entry.license} | {entry.dataset} | "
                     f"{entry.num_classes} | {_complexity(dict(entry.complexity))} | {metrics} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- mkdocs events

def on_config(config: Any) -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the zoo of this checkout, not an installed one
    config["nav"].append({"API reference": [{page: f"api/{page}.md"} for page in api_pages()]})
    return config


def on_files(files: Files, config: Any) -> Files:
    pages = {"model-zoo.md": model_zoo_page(), "cli.md": cli_page()}
    pages.update({f"api/{page}.md": api_page(page, modules) for page, modules in api_pages().items()})
    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    return files
