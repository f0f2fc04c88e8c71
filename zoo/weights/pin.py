"""``zoo weights lock``: pin manifest entries to the commit their revision resolves to, with sha256 and size.

The maintainer's command. For each Hub entry it asks the Hub (or the mirror in ``HF_ENDPOINT``) which commit the
entry's revision is and what the file's LFS sha256 and size are, downloads the file at that commit and checks it
against them, then writes ``revision`` = the commit, ``sha256`` and ``size`` into the manifest, keeping its layout.
An entry that already records a sha256 keeps it: a Hub file that differs is reported and never written over.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from zoo.weights.checkpoint import CheckpointError
from zoo.weights.download import WeightsIntegrityError, fetch_file, hub_endpoint
from zoo.weights.manifest import HubFile, ManifestError, WeightsEntry, load_manifest, manifest_path, validate_manifest
from zoo.weights.hashing import file_sha256
from zoo.weights.hub_metadata import hub_file_info

__all__ = ["PinResult", "lock_manifest", "manifest_json"]


@dataclass(frozen=True)
class PinResult:
    """What ``zoo weights lock`` did to one entry: ``pinned``, ``unchanged``, ``skipped`` or ``error``."""
    name: str
    status: str
    message: str

    def __str__(self) -> str:
        return f"{self.name}: {self.status}: {self.message}"


def manifest_json(data: Any) -> str:
    """The manifest's own layout: two-space indents, lists of numbers and strings on one line."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    # a list with no object or list inside, spread over lines (strings never hold a raw newline)
    one_line = re.sub(r"\[[^\[\]{}]*\]", lambda m: json.dumps(json.loads(m.group(0)), ensure_ascii=False)
                      if "\n" in m.group(0) else m.group(0), text)
    return one_line + "\n"


def lock_manifest(patterns: Iterable[str] = ("*",), path: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None) -> list[PinResult]:
    """Pin the Hub entries matching ``patterns`` in the manifest at ``path`` (default: the one zoo loads)."""
    path = Path(path) if path is not None else manifest_path()
    manifest = load_manifest(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    results = []
    for entry in manifest.select(list(patterns)):
        if entry.hub is None:
            results.append(PinResult(entry.name, "skipped", f"{entry.package}: pinned by its sha256 already"))
            continue
        try:
            pinned = _resolve(entry, cache_dir)
        except (OSError, CheckpointError) as exc:  # not found, unreachable, integrity: say it, go on with the rest
            results.append(PinResult(entry.name, "error", str(exc)))
            continue
        hub = data["weights"][entry.name]["hub"]
        if hub == pinned:
            results.append(PinResult(entry.name, "unchanged", f"commit {hub['revision']}, sha256 {hub['sha256']}"))
            continue
        was = f"{hub['revision']}" + ("" if hub["sha256"] else ", no sha256")
        hub.update(pinned)
        results.append(PinResult(entry.name, "pinned", f"{was} -> commit {pinned['revision']}, sha256 "
                                                       f"{pinned['sha256']}, {pinned['size']} bytes"))
    if any(r.status == "pinned" for r in results):
        errors = validate_manifest(data)
        if errors:  # cannot happen with values read from the Hub; never write a manifest zoo would refuse
            raise ManifestError("the locked manifest would not be valid:\n  " + "\n  ".join(errors))
        path.write_text(manifest_json(data), encoding="utf-8")
    return results


def _resolve(entry: WeightsEntry, cache_dir: str | os.PathLike | None) -> dict[str, Any]:
    """The entry's hub record pinned: the commit of its revision, and the sha256 and size of the file there."""
    hub = entry.hub
    info = hub_file_info(hub.repo_id, hub.filename, hub.revision, hub_endpoint())
    if hub.sha256 is not None and info.sha256 is not None and info.sha256 != hub.sha256:
        raise WeightsIntegrityError(
            f"{hub} is commit {info.commit} on the Hub, whose file has sha256 {info.sha256}, but the manifest records "
            f"{hub.sha256}: the file changed upstream. Left as it is; check the new file, then edit the entry.")
    expected = hub.sha256 or info.sha256
    pinned = HubFile(hub.repo_id, info.commit, hub.filename, expected,
                     (hub.size or info.size) if expected else None)
    path = fetch_file(pinned, name=entry.name, cache_dir=cache_dir)  # checked against `expected` on download
    return {"repo_id": hub.repo_id, "revision": info.commit, "filename": hub.filename,
            "sha256": file_sha256(path), "size": path.stat().st_size}
