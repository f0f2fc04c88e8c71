"""sha256 of weight files, and when a file that was already verified must be hashed again.

Hashing costs about as much as the load it protects (``benchmarks/bench_verify_cost.py`` on the 2-core development
machine: 0.24 s for 81 MB, 0.61 s for 307 MB with the file in the page cache, 1.6 s from disk; a cached
``create_model`` takes 0.30 s and 0.67 s without it). So a file is hashed when zoo first meets it and again whenever it
may have changed: its sha256 is remembered in the zoo cache (``verified.json``) together with the file's identity
(device, inode, size, modification and change times). Every write to a file moves its change time (ctime), which no
unprivileged call can set back, so a file whose identity is unchanged holds the bytes that were hashed; anything else
is hashed again. (Timestamps have the kernel clock's granularity, a few milliseconds: a file re-written, same size,
within the tick in which zoo finished hashing it would pass; a file is identical to what was hashed in every other
case.) Bit rot below the file system (no write at all) is only seen by a forced re-hash
(``verify_cache=True``, ``ZOO_VERIFY_CACHE=1``, ``zoo weights verify``).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from zoo.weights.cache import JsonStore, zoo_cache_dir

__all__ = ["sha256_file", "file_sha256", "verify_file"]

log = logging.getLogger("zoo.weights")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (the file is never held in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _identity(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _store() -> JsonStore:
    return JsonStore(zoo_cache_dir() / "verified.json")


def _remembered(path: Path) -> str | None:
    """The sha256 hashed earlier for this very file, if it has not been written since."""
    try:
        record = _store().read().get(str(path))
    except (OSError, ValueError) as exc:  # the memo only saves work: without it, hash
        log.debug("no verified-hash memo: %s", exc)
        return None
    if isinstance(record, dict) and record.get("identity") == _identity(path):
        return record.get("sha256")
    return None


def _remember(path: Path, sha256: str, identity: list[int]) -> None:
    try:
        with _store().update() as data:
            for key in [k for k in data if not os.path.exists(k)]:  # files deleted since
                del data[key]
            data[str(path)] = {"sha256": sha256, "identity": identity}
    except (OSError, ValueError) as exc:
        log.warning("could not record the sha256 of %s in %s (%s); it will be hashed again on the next load",
                    path, _store().path, exc)


def file_sha256(path: str | os.PathLike, reuse: bool = True) -> str:
    """sha256 of ``path``; with ``reuse``, the one remembered for it when the file has not been written since."""
    path = Path(path).resolve()
    if reuse and (known := _remembered(path)):
        return known
    before = _identity(path)
    sha256 = sha256_file(path)
    if _identity(path) == before:  # not written while it was read
        _remember(path, sha256, before)
    return sha256


def verify_file(path: str | os.PathLike, sha256: str | None, size: int | None, full: bool = True,
                reuse: bool = False) -> list[str]:
    """Problems of ``path`` against the expected size and (when ``full``) sha256; empty when it matches.

    ``reuse``: accept the sha256 remembered for the file when it has not been written since (see the module doc).
    """
    problems = []
    actual_size = os.path.getsize(path)
    if size is not None and actual_size != size:
        kind = "truncated" if actual_size < size else "too long"
        problems.append(f"size {actual_size} bytes, expected {size} ({kind})")
    elif full and sha256 is not None:
        actual = file_sha256(path, reuse=reuse)
        if actual != sha256 and reuse:  # a remembered hash only ever saves work: confirm a mismatch
            actual = file_sha256(path, reuse=False)
        if actual != sha256:
            problems.append(f"sha256 {actual}, expected {sha256}")
    return problems
