"""Trust on first use for weight files that the manifest does not hash: ``weights.lock.json`` in the zoo cache.

The first time zoo loads such a file (checked against the Hub's own LFS sha256), it records the commit the revision
resolved to, the file's sha256 and its size, keyed by repository, file and revision, like a package lock file. From
then on any other file for that key is refused (a ``WeightsIntegrityError`` naming both hashes): an upstream change is
never loaded silently. ``zoo weights trust NAME`` forgets the record, so that the next load accepts the file then on
the Hub. Maintainers pin files for everyone instead, in the manifest (``zoo weights lock``).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from zoo.weights.cache import JsonStore, zoo_cache_dir

__all__ = ["LockRecord", "WeightsLock", "weights_lock", "lock_key"]


def lock_key(repo_id: str, filename: str, revision: str) -> str:
    return f"{repo_id}/{filename}@{revision}"


@dataclass(frozen=True)
class LockRecord:
    """The file first used for ``repo_id/filename@revision``: its commit, sha256 and size, and how it was checked
    (``checked``: ``hub`` = against the Hub's LFS sha256, ``cache`` = found in the cache without reaching the Hub)."""
    repo_id: str
    filename: str
    revision: str
    commit: str | None
    sha256: str
    size: int
    checked: str
    name: str = ""
    recorded: str = ""

    @property
    def key(self) -> str:
        return lock_key(self.repo_id, self.filename, self.revision)

    def describe(self) -> str:
        return f"commit {self.commit or 'unknown'}, sha256 {self.sha256}, {self.size} bytes, first used {self.recorded}"


class WeightsLock:
    """The records of one lock file (default: ``weights.lock.json`` in :func:`zoo.weights.cache.zoo_cache_dir`)."""

    def __init__(self, path: str | Path):
        self.store = JsonStore(path)

    @property
    def path(self) -> Path:
        return self.store.path

    def get(self, repo_id: str, filename: str, revision: str) -> LockRecord | None:
        record = self.store.read().get("files", {}).get(lock_key(repo_id, filename, revision))
        return LockRecord(**record) if record else None

    def records(self) -> list[LockRecord]:
        return [LockRecord(**r) for r in self.store.read().get("files", {}).values()]

    def record(self, record: LockRecord) -> LockRecord:
        """Store ``record`` (stamped with the time) unless one exists for its key; returns the stored record."""
        with self.store.update() as data:
            files = data.setdefault("files", {})
            if record.key not in files:  # another process may have recorded it first: the first one wins
                stamped = {**asdict(record), "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                files[record.key] = stamped
            data["version"] = 1
            return LockRecord(**files[record.key])

    def forget(self, match: Callable[[LockRecord], bool]) -> list[LockRecord]:
        """Remove the records ``match`` selects; returns them."""
        with self.store.update() as data:
            files = data.setdefault("files", {})
            gone = [LockRecord(**r) for r in files.values() if match(LockRecord(**r))]
            for record in gone:
                del files[record.key]
            return gone


def weights_lock() -> WeightsLock:
    """The lock file of the current zoo cache (``$ZOO_CACHE`` is read on every call)."""
    return WeightsLock(zoo_cache_dir() / "weights.lock.json")
