"""``zoo weights list|info|download|verify|check|bundle|lock|trust``: the pretrained weights in the manifest."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line starts without torch
    from zoo.weights.manifest import WeightsEntry


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="pretrained weights: list, info, download, verify, check, bundle, lock, trust",
                       description="Pretrained weights from the manifest (weights_manifest.json).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = actions.add_parser("list", help="list weight entries", description="List weight entries (fnmatch patterns).")
    a.add_argument("patterns", nargs="*", default=["*"], help="e.g. 'rtdetr_*' or an architecture name")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=_list)

    a = actions.add_parser("info", help="describe one entry and where it loads from")
    a.add_argument("name", help="architecture.tag, or an architecture for its default weights")
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=_info)

    a = actions.add_parser("download", help="download and verify weights into the Hugging Face cache")
    a.add_argument("patterns", nargs="+", help="entries to download (fnmatch patterns)")
    a.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default: HF_HUB_CACHE)")
    a.set_defaults(func=_download)

    a = actions.add_parser("verify", help="re-hash cached weights against the manifest")
    a.add_argument("patterns", nargs="*", default=["*"], help="entries to verify (default: all cached)")
    a.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default: HF_HUB_CACHE)")
    a.set_defaults(func=_verify)

    a = actions.add_parser("check", help="validate the manifest against its schema and the registry")
    a.add_argument("--manifest", default=None, help="manifest file (default: the one zoo loads)")
    a.add_argument("--strict", action="store_true", help="entries of unregistered architectures are errors")
    a.set_defaults(func=_check)

    a = actions.add_parser("bundle", help="download weights into a folder to carry to an offline machine",
                           description="Download entries into DIR (a Hugging Face cache). On the offline machine: "
                                       "HF_HUB_CACHE=DIR HF_HUB_OFFLINE=1.")
    a.add_argument("directory", help="output folder")
    a.add_argument("patterns", nargs="+", help="entries to bundle (fnmatch patterns)")
    a.set_defaults(func=_bundle)

    a = actions.add_parser("lock", help="pin manifest entries: revision -> commit, sha256 and size from the Hub",
                           description="For each Hub entry: resolve its revision to a commit on the Hub (HF_ENDPOINT), "
                                       "download the file and check it against the Hub's LFS sha256, then write the "
                                       "commit, sha256 and size into the manifest. Entries that record a sha256 "
                                       "keep it (a different Hub file is an error).")
    a.add_argument("patterns", nargs="*", default=["*"], help="entries to pin (default: all)")
    a.add_argument("--manifest", default=None, help="manifest file (default: the one zoo loads)")
    a.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default: HF_HUB_CACHE)")
    a.set_defaults(func=_lock)

    a = actions.add_parser("trust", help="accept a changed upstream file (forget the one first used)",
                           description="Forget the trust-on-first-use records of the zoo lock file for these entries, "
                                       "so that the next load accepts (and records) the file then on the Hub.")
    a.add_argument("names", nargs="+", help="manifest entries (fnmatch patterns) or hf-hub:org/repo[@revision]")
    a.set_defaults(func=_trust)


def _status(entry: WeightsEntry, registered: set[str] | None = None) -> str:
    """"registered", or "architecture not registered" (``registered``: the names, read once by the caller from the
    families' declarations without importing them)."""
    from zoo.registry import list_models

    names = registered if registered is not None else set(list_models(include_aliases=True))
    return "registered" if entry.architecture in names else "architecture not registered"


def _local_file(entry: WeightsEntry, cache_dir: str | None = None) -> Path | None:
    """The entry's file on this machine: in the Hub cache, or inside the package (None when absent)."""
    from zoo.weights.cache import cached_file

    if entry.package is not None:
        path = entry.package.local_path()
        return path if path.is_file() else None
    return cached_file(entry.hub, cache_dir)


def _summary(entry: WeightsEntry, registered: set[str]) -> dict[str, Any]:
    metric = next(iter(entry.metrics), None)
    return {"name": entry.name, "repo": entry.where, "format": entry.format,
            "dataset": entry.dataset, "metric": f"{metric['metric']} {metric['value']}" if metric else "",
            "params_m": entry.complexity["params_m"], "sha256": "pinned" if entry.sha256 else "unhashed",
            "cached": _local_file(entry) is not None, "status": _status(entry, registered)}


def _list(args: argparse.Namespace) -> int:
    from zoo.registry import list_models
    from zoo.weights.manifest import load_manifest

    registered = set(list_models(include_aliases=True))  # the families' declarations: no import, no torch
    rows = [_summary(e, registered) for e in load_manifest().select(args.patterns)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ("name", "repo", "format", "metric", "params_m", "sha256", "cached", "status")
    table = [[str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
    for row in [list(columns), *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _resolve(name: str) -> WeightsEntry:
    from zoo.weights.manifest import load_manifest

    arch, _, tag = name.partition(".")
    return load_manifest().resolve(arch, tag or None)


def _info(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from zoo.weights.download import hub_cache_dir, hub_endpoint, hub_offline

    entry = _resolve(args.name)
    hub, local = entry.hub, _local_file(entry)
    if local is not None:
        loads_from = str(local)
    elif hub is None:
        loads_from = f"{entry.package} is missing: reinstall zoo"
    elif hub_offline():
        loads_from = f"nothing cached in {hub_cache_dir()} and offline"
    else:
        loads_from = f"{hub_endpoint()}/{hub.repo_id}/resolve/{hub.revision}/{hub.filename} (into {hub_cache_dir()})"
    info = {
        "name": entry.name, "architecture": entry.architecture, "status": _status(entry),
        "default": entry.default, "hub" if hub else "package": asdict(entry.location), "loads_from": loads_from,
        "format": entry.format, "license": entry.license, "origin": dict(entry.origin), "dataset": entry.dataset,
        "pretrain_dataset": entry.pretrain_dataset, "num_classes": entry.num_classes,
        "label_names": entry.label_set or list(entry.label_names), "preprocessing": dict(entry.preprocessing),
        "metrics": [dict(m) for m in entry.metrics], "complexity": dict(entry.complexity),
        "model_args": dict(entry.model_args), "notes": entry.notes,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if value not in (None, "", {}, []):
            print(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return 0


def _fetch_all(patterns: list[str], cache_dir: str | None) -> list[tuple[WeightsEntry, Path]]:
    from zoo.weights.download import fetch_weights, how_checked

    done = []
    for entry in _select(patterns):
        path = fetch_weights(entry, cache_dir=cache_dir, verify_cache=True)
        print(f"{entry.name}: {path} ({how_checked(path)})")
        done.append((entry, path))
    return done


def _select(patterns: list[str]) -> list[WeightsEntry]:
    """The entries the patterns name; a pattern that names none is an error (a typo would otherwise pass)."""
    from zoo.weights.manifest import load_manifest

    manifest = load_manifest()
    for pattern in patterns:
        manifest.select(pattern)  # KeyError naming the pattern when it matches nothing
    return manifest.select(patterns)


def _download(args: argparse.Namespace) -> int:
    _fetch_all(args.patterns, args.cache_dir)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from zoo.weights.download import sha256_file, verify_file
    from zoo.weights.manifest import load_manifest
    from zoo.weights.lock import weights_lock

    failed = checked = 0
    for entry in load_manifest().select(args.patterns):
        path = _local_file(entry, args.cache_dir)
        if path is None:
            continue
        checked += 1
        sha256, size, against = entry.sha256, entry.location.size, ""
        if sha256 is None:
            record = weights_lock().get(entry.hub.repo_id, entry.hub.filename, entry.hub.revision)
            if record is None:
                print(f"{entry.name}: no sha256 in the manifest and not used by zoo yet; the cached file has sha256 "
                      f"{sha256_file(path)}, size {os.path.getsize(path)}")
                continue
            sha256, size, against = record.sha256, record.size, " (against the file first used: zoo lock file)"
        problems = verify_file(path, sha256, size)
        failed += bool(problems)
        print(f"{entry.name}: " + (f"MISMATCH ({'; '.join(problems)}): {path}" if problems else "ok") + against)
    if not checked:
        print("nothing cached matches; `zoo weights download PATTERN` fetches and verifies weights")
    return 1 if failed else 0


def _check(args: argparse.Namespace) -> int:
    """Schema, then per entry: registered architecture, known layout, num_classes and parameter count."""
    from zoo.registry import list_models
    from zoo.weights.manifest import ManifestError, load_manifest

    try:
        manifest = load_manifest(args.manifest)
    except ManifestError as exc:
        print(exc)
        return 1
    errors = 0
    names = set(list_models(include_aliases=True))
    for entry in manifest.entries.values():
        registered = _status(entry, names) == "registered"
        problems = _entry_problems(entry) if registered else []
        if not registered:
            line = f"{entry.name}: architecture not registered" + (" (error: --strict)" if args.strict else "")
            errors += args.strict
        else:
            line = f"{entry.name}: " + ("; ".join(problems) if problems else "ok")
            errors += bool(problems)
        print(line)
    print(f"{len(manifest.entries)} entries in {manifest.path}, {errors} with errors")
    return 1 if errors else 0


def _entry_problems(entry: WeightsEntry) -> list[str]:
    """Build the architecture on the meta device (no memory, no weights) and compare it with the entry."""
    import torch

    from zoo.registry import model_entrypoint
    from zoo.weights.checkpoint import layout_names

    try:
        with torch.device("meta"):
            model = model_entrypoint(entry.architecture)(**{**entry.model_args, "num_classes": entry.num_classes})
    except Exception as exc:  # report, do not crash the check
        return [f"cannot build with the entry's num_classes/model_args: {type(exc).__name__}: {exc}"]
    problems = []
    family = getattr(model, "family", "")
    known = layout_names(model)
    if entry.format not in known:
        problems.append(f"format {entry.format} has no converter for the {family or 'timm'} family "
                        f"(known: {', '.join(sorted(known))})")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    claimed = entry.complexity["params_m"]
    tolerance = 0.005 if entry.complexity["provenance"] == "measured by zoo" else 0.05
    if abs(params - claimed) > tolerance * claimed:
        problems.append(f"params_m {claimed} but the architecture has {params:.3f}M "
                        f"(tolerance {tolerance:.1%} for {entry.complexity['provenance']})")
    return problems


def _bundle(args: argparse.Namespace) -> int:
    """Fetch the entries into DIR and record their sha256 in DIR/zoo-bundle.json (kept with earlier bundles' records:
    loading from the bundle checks every bundled file against it)."""
    from zoo.weights.download import BUNDLE_RECORD, sha256_file

    folder = Path(args.directory)
    entries = _select(args.patterns)  # before creating anything: a pattern that names no entry is an error
    if all(entry.hub is None for entry in entries):
        raise ValueError(f"{', '.join(e.name for e in entries)}: inside the zoo package (every installation has "
                         "them), nothing to bundle")
    record_path = folder / BUNDLE_RECORD
    records = {}
    if record_path.is_file():
        try:
            records = json.loads(record_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{record_path} is not valid JSON ({exc}); it records the sha256 of the files already "
                             "bundled there: restore it, or bundle into a new folder") from None
    folder.mkdir(parents=True, exist_ok=True)
    done = [(entry, path) for entry, path in _fetch_all(args.patterns, str(folder)) if entry.hub is not None]
    records.update({entry.name: {"repo_id": entry.hub.repo_id, "revision": entry.hub.revision,
                                 "filename": entry.hub.filename, "sha256": sha256_file(path),
                                 "size": path.stat().st_size} for entry, path in done})
    tmp = record_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    os.replace(tmp, record_path)
    print(f"bundled {len(done)} weight files in {folder} ({len(records)} in all). On the offline machine copy the "
          f"folder and set HF_HUB_CACHE={folder} HF_HUB_OFFLINE=1 (files are checked against {BUNDLE_RECORD} there; "
          "or copy its models--* folders into your Hugging Face cache).")
    return 0


def _lock(args: argparse.Namespace) -> int:
    from zoo.weights.pin import lock_manifest

    results = lock_manifest(args.patterns, args.manifest, args.cache_dir)
    for result in results:
        print(result)
    pinned = sum(r.status == "pinned" for r in results)
    errors = sum(r.status == "error" for r in results)
    print(f"{pinned} entries pinned, {errors} errors")
    return 1 if errors else 0


def _trust(args: argparse.Namespace) -> int:
    from zoo.weights.manifest import load_manifest
    from zoo.weights.lock import lock_key, weights_lock

    keys, repos = set(), []
    for name in args.names:
        if name.startswith("hf-hub:"):
            repo, _, revision = name[len("hf-hub:"):].partition("@")
            repos.append((repo, revision or None))
        else:
            keys |= {lock_key(e.hub.repo_id, e.hub.filename, e.hub.revision)
                     for e in load_manifest().select(name) if e.hub is not None}
    lock = weights_lock()
    gone = lock.forget(lambda r: r.key in keys or any(r.repo_id == repo and revision in (None, r.revision)
                                                      for repo, revision in repos))
    for record in gone:
        print(f"{record.name or record.key}: forgot {record.describe()}; the next load accepts and records the file "
              "then on the Hub")
    if not gone:
        print(f"nothing to forget: no record in {lock.path} matches {' '.join(args.names)}")
        return 1
    return 0
