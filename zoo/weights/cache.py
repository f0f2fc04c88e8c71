"""The zoo cache folder and the small JSON files zoo keeps there.

The folder is ``$ZOO_CACHE``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``. It holds what zoo has learnt about
weight files: the trust-on-first-use lock (``weights.lock.json``, :mod:`zoo.weights.lock`) and the hashes of files
already verified (``verified.json``, :mod:`zoo.weights.hashing`). It is separate from the Hugging Face cache, whose
root huggingface_hub expects to hold repositories only; trust follows the user, whichever Hub cache is in use.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["zoo_cache_dir", "JsonStore"]


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
