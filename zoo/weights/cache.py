"""The zoo cache folder and the small JSON files zoo keeps there.

The folder is ``$ZOO_CACHE``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``. It holds what zoo has learnt about
weight files: the trust-on-first-use lock (``weights.lock.json``, :mod:`zoo.weights.lock`) and the hashes of files
already verified (``verified.json``, :mod:`zoo.weights.hashing`). It is separate from the Hugging Face cache, whose
root huggingface_hub expects to hold repositories only; trust follows the user, whichever Hub cache is in use.
Where a file lies in the Hugging Face cache (:func:`cached_file`) is answered here too, without torch (``zoo weights
list``).
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from zoo.weights.manifest import HubFile

__all__ = ["zoo_cache_dir", "JsonStore", "hub_cache_dir", "cached_file"]


def zoo_cache_dir() -> Path:
    """``$ZOO_CACHE``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo`` (read on every call)."""
    if os.environ.get("ZOO_CACHE"):
        return Path(os.environ["ZOO_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "zoo"


class JsonStore:
    """One JSON object in a file, updated read-modify-write under a file lock and replaced atomically, so that
    processes loading weights at once never lose each other's records or read a half-written file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self) -> dict[str, Any]:
        """The stored object ({} when the file does not exist); a file that is not a JSON object is an error."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{self.path} is not valid JSON ({exc}); delete it to start afresh") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{self.path} must hold a JSON object; delete it to start afresh")
        return data

    @contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        """``with store.update() as data: data[...] = ...``: the changes are written when the block ends."""
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            data = self.read()
            yield data
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=2, sort_keys=True)
                    f.write("\n")
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise


def hub_cache_dir() -> Path:
    """The huggingface_hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_file(hub: "HubFile", cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Where ``hub`` lies in the cache for its revision, or None when it is not cached (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub.repo_id, hub.filename, cache_dir=str(cache_dir or hub_cache_dir()),
                                   revision=hub.revision)
    return Path(found) if isinstance(found, str) and os.path.exists(found) else None
