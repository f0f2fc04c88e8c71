"""Fetch weight files through huggingface_hub (its cache, revisions, mirrors, offline mode) and verify them.

A file with a sha256 in the manifest (or in a zoo repo's config.json) is checked against it; a weight file without
one is checked against the Hub's own LFS sha256 and recorded in the zoo lock file, so that a later different file is
refused (trust on first use, :mod:`zoo.weights.lock`). A file that fails is deleted from the cache and never used.
Cache hits are checked for their size and hashed unless zoo hashed them since they were last written
(:mod:`zoo.weights.hashing`); ``verify_cache=True`` / ``ZOO_VERIFY_CACHE=1`` always re-hashes, ``False`` / ``0``
checks sizes only. A file lock per file lets several processes download the same weights at once: one downloads and
verifies, the others wait and then find it cached.

``HF_ENDPOINT``, ``HF_HUB_CACHE`` / ``HF_HOME`` and ``HF_HUB_OFFLINE`` are read when a file is fetched (huggingface_hub
reads them once, at import), so they can be set at any time before loading.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

from zoo.weights.checkpoint import CheckpointError
from zoo.weights.manifest import HubFile, WeightsEntry
from zoo.weights.hashing import file_sha256, sha256_file, verify_file
from zoo.weights.hub_metadata import HubMetadataError, hub_file_info, hub_problems
from zoo.weights.lock import LockRecord, weights_lock

__all__ = ["fetch_file", "fetch_weights", "cached_file", "verify_file", "sha256_file", "hash_policy", "hub_endpoint",
           "hub_cache_dir", "hub_offline", "WeightsIntegrityError", "WeightsNotFoundError", "WeightsNotCachedError"]

log = logging.getLogger("zoo.weights")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class WeightsIntegrityError(CheckpointError):
    """A weight file whose sha256 or size differs from the manifest (it has been removed from the cache)."""


class WeightsNotFoundError(FileNotFoundError):
    """The repository, revision or file does not exist on the Hub (or the mirror in ``HF_ENDPOINT``)."""


class WeightsNotCachedError(WeightsNotFoundError):
    """Offline (or the Hub is unreachable) and the file is not in the local cache."""


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def hub_endpoint() -> str:
    """The Hub URL: ``$HF_ENDPOINT`` (a mirror) or huggingface.co."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """The huggingface_hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else huggingface_hub's default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: only the cache is used."""
    return _flag("HF_HUB_OFFLINE") or _flag("TRANSFORMERS_OFFLINE")


def cached_file(hub: HubFile, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Where ``hub`` lies in the cache for its revision, or None when it is not cached (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub.repo_id, hub.filename, cache_dir=str(cache_dir or hub_cache_dir()),
                                   revision=hub.revision)
    return Path(found) if isinstance(found, str) and os.path.exists(found) else None


def _remove(path: Path) -> None:
    """Delete a cached file: the blob it links to and the snapshot link, so that nothing reuses it."""
    blob = path.resolve()
    for p in {blob, path}:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _lock_dir(cache: Path) -> Path:
    """Locks live in the cache (shared by every process using it); a read-only cache (a bundle) uses the temp dir."""
    for folder in (cache / ".locks" / "zoo", Path(tempfile.gettempdir()) / "zoo-locks"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    raise PermissionError(f"no writable folder for download locks (tried {cache / '.locks'} and the temp dir)")


def _prefetch_hint(name: str) -> str:
    return (f"Prefetch on a machine with access: `zoo weights download {name}`, or `zoo weights bundle DIR {name}`, "
            "copy DIR to this machine and set HF_HUB_CACHE=DIR (with HF_HUB_OFFLINE=1 to stay offline).")


def hash_policy(verify_cache: bool | None) -> tuple[bool, bool]:
    """``(hash cache hits, reuse a remembered hash)``: None (default) hashes a cached file when zoo has not hashed it
    since it was last written (``verified.json``); True always re-hashes; False checks sizes only.
    ``ZOO_VERIFY_CACHE`` (1/0) sets the default."""
    value = os.environ.get("ZOO_VERIFY_CACHE", "").strip().lower()
    if verify_cache is None and value:
        if value not in _TRUE | _FALSE:
            raise ValueError(f"ZOO_VERIFY_CACHE={value!r}: use 1 (hash every cached file on every load) or 0 (sizes "
                             "only); unset, cached files are hashed when they were written since zoo last hashed them")
        verify_cache = value in _TRUE
    return (True, True) if verify_cache is None else (verify_cache, False)


def fetch_file(hub: HubFile, *, name: str | None = None, verify_cache: bool | None = None,
               offline: bool | None = None, cache_dir: str | os.PathLike | None = None,
               warn_unhashed: bool = True) -> Path:
    """Download ``hub`` (or take it from the cache) and verify it; returns the local path.

    A file with a recorded sha256 is checked against it. A weight file without one is checked against the Hub's own
    LFS sha256 and then held to the file first used (the zoo lock file, trust on first use; see
    :mod:`zoo.weights.lock`).

    Args:
        hub: repo id, revision, filename and the expected sha256/size (None = not recorded).
        name: what to call it in messages and hints (the manifest name, or ``hf-hub:repo``).
        verify_cache: how to check a cached file (see :func:`hash_policy`); sizes are always checked.
        offline: only use the cache (default: ``HF_HUB_OFFLINE``).
        cache_dir: the huggingface_hub cache (default: :func:`hub_cache_dir`).
        warn_unhashed: True for weight files. False for small metadata files (config.json) that record the hash of
            the weights themselves: without a sha256 they are used as the Hub serves them (no lock record).
    """
    from filelock import FileLock

    name = name or str(hub)
    cache = Path(cache_dir) if cache_dir else hub_cache_dir()
    offline = hub_offline() if offline is None else offline
    full, reuse = hash_policy(verify_cache)
    lock_name = hashlib.sha1(f"{cache}\n{hub.repo_id}\n{hub.filename}\n{hub.revision}".encode()).hexdigest()
    with FileLock(str(_lock_dir(cache) / f"{lock_name}.lock")):
        before = cached_file(hub, cache)
        path = _download(hub, name, cache, offline)
        fresh = before is None or before.resolve() != path.resolve()
        if hub.sha256 is None and warn_unhashed:
            _trust_on_first_use(hub, path, name, fresh, offline, full, reuse)
        elif problems := verify_file(path, hub.sha256, hub.size, full=fresh or full, reuse=reuse and not fresh):
            _remove(path)
            where = "downloaded" if fresh else "cached"
            raise WeightsIntegrityError(
                f"{name}: the {where} file {hub} does not match the manifest: {'; '.join(problems)}. "
                "The file was removed from the cache; loading again downloads it afresh. If it fails again, the "
                "file on the Hub differs from the manifest (a changed revision or a corrupted upload).")
    return path


def _snapshot_commit(path: Path, filename: str) -> str | None:
    """The commit of a file in the huggingface_hub cache (``.../snapshots/<commit>/<filename>``)."""
    snapshot = path.parents[len(Path(filename).parts) - 1]
    return snapshot.name if snapshot.parent.name == "snapshots" else None


def _trust_on_first_use(hub: HubFile, path: Path, name: str, fresh: bool, offline: bool, full: bool,
                        reuse: bool) -> None:
    """Check a weight file the manifest does not hash: against the Hub's LFS sha256 when it is new to zoo, then
    against the file first used for the same repo, file and revision (recorded in the zoo lock file)."""
    lock = weights_lock()
    commit = _snapshot_commit(path, hub.filename)
    record = lock.get(hub.repo_id, hub.filename, hub.revision)
    if record is not None and not fresh:
        # a cache hit of the recorded file; a cache hit of another commit (the branch moved) is always hashed
        problems = verify_file(path, record.sha256, record.size, full=full or commit != record.commit,
                               reuse=reuse)
        if problems:
            _refuse(hub, path, name, record, commit)
        return
    sha256 = file_sha256(path, reuse=reuse and not fresh)
    checked = "cache"
    if not offline:
        try:
            info = hub_file_info(hub.repo_id, hub.filename, commit or hub.revision, hub_endpoint())
        except HubMetadataError as exc:
            if fresh:  # it came from the Hub a moment ago and cannot be verified
                raise WeightsIntegrityError(f"{name}: {exc}. The downloaded file {hub} cannot be checked against "
                                            "the Hub's sha256; try again.") from exc
            log.warning("%s: %s; the cached file is trusted as it is (first use)", name, exc)
        else:
            if problems := hub_problems(path, sha256, info):
                _remove(path)
                where = "downloaded" if fresh else "cached"
                raise WeightsIntegrityError(
                    f"{name}: the {where} file {hub} (commit {commit}) does not match the Hub's metadata: "
                    f"{'; '.join(problems)}. The file was removed from the cache; loading again downloads it "
                    f"afresh. If it fails again, the server ({hub_endpoint()}) or the network alters the file.")
            checked = "hub"
    mine = LockRecord(hub.repo_id, hub.filename, hub.revision, commit, sha256, path.stat().st_size, checked, name)
    try:
        stored = lock.record(mine)
    except (OSError, ValueError) as exc:
        log.warning("%s: could not record %s in the lock file %s (%s); it is checked against the Hub only",
                    name, hub, lock.path, exc)
        return
    if stored.sha256 != sha256:  # another process recorded another file first
        _refuse(hub, path, name, stored, commit)
    if record is None and checked == "hub":
        log.info("%s: first use of %s (commit %s, sha256 %s, as on the Hub); recorded in %s", name, hub, commit,
                 sha256, lock.path)
    elif record is None:
        log.warning("%s: first use of %s from the cache without reaching the Hub, so it is not checked against the "
                    "Hub's sha256 (and has none in the manifest); recorded as found (commit %s, sha256 %s) in %s",
                    name, hub, commit, sha256, lock.path)


def _refuse(hub: HubFile, path: Path, name: str, record: LockRecord, commit: str | None) -> None:
    """A file other than the one first used: an upstream change (kept in the cache, unused) or a damaged cache file
    (same commit: removed). The message names both files' hashes."""
    now = f"commit {commit}, sha256 {file_sha256(path)}, {path.stat().st_size} bytes"
    if commit == record.commit:
        _remove(path)
        raise WeightsIntegrityError(
            f"{name}: the cached file {hub} ({now}) is not the file zoo first used ({record.describe()}; lock file "
            f"{weights_lock().path}). It was damaged in the cache and has been removed; loading again downloads it "
            "afresh.")
    raise WeightsIntegrityError(
        f"{name}: {hub} changed upstream: it is now {now}, but zoo first used {record.describe()} (lock file "
        f"{weights_lock().path}). A changed file is refused (trust on first use). To keep the weights you had, load "
        f"revision {record.commit!r}. If you trust the new file, `zoo weights trust {name}` forgets the old one and "
        "the next load records the new one.")


def _download(hub: HubFile, name: str, cache: Path, offline: bool) -> Path:
    """hf_hub_download with zoo's error messages (what is missing, and what to do about it)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from zoo.version import __version__

    endpoint = hub_endpoint()
    if not offline and cached_file(hub, cache) is None:
        _probe(hub, name, cache, endpoint)
    try:
        return Path(hf_hub_download(hub.repo_id, hub.filename, revision=hub.revision, cache_dir=str(cache),
                                    endpoint=endpoint, local_files_only=offline, library_name="zoo",
                                    library_version=__version__))
    except LocalEntryNotFoundError as exc:
        reason = "offline mode (HF_HUB_OFFLINE) is on" if offline else f"{endpoint} could not be reached"
        raise WeightsNotCachedError(f"{name}: {hub} is not in the cache {cache} and {reason}. "
                                    + _prefetch_hint(name)) from None  # huggingface_hub's chain adds ~90 lines
    except RevisionNotFoundError as exc:
        raise WeightsNotFoundError(f"{name}: revision {hub.revision!r} does not exist in {hub.repo_id} "
                                   f"on {endpoint}") from exc
    except EntryNotFoundError as exc:
        raise WeightsNotFoundError(_missing_file(hub, endpoint)) from exc
    except RepositoryNotFoundError as exc:
        # some servers (mirrors) answer a missing file or revision with "repository not found": tell them apart
        if _exists(hub.repo_id, hub.revision, endpoint):
            raise WeightsNotFoundError(_missing_file(hub, endpoint)) from exc
        if _exists(hub.repo_id, "main", endpoint):
            raise WeightsNotFoundError(f"{name}: revision {hub.revision!r} does not exist in {hub.repo_id} "
                                       f"on {endpoint}") from exc
        raise WeightsNotFoundError(f"{name}: Hub repository {hub.repo_id!r} not found on {endpoint} (check the "
                                   "name; private or gated repos need HF_TOKEN)") from exc


def _probe(hub: HubFile, name: str, cache: Path, endpoint: str) -> None:
    """One request, no retries: an unreachable Hub fails now with the offline hint, instead of after
    huggingface_hub's ~25 s of retries (it retries network errors when nothing is cached)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(hub.repo_id, hub.filename, revision=hub.revision, endpoint=endpoint))
    except HfHubHTTPError:
        return  # the server answered: hf_hub_download says what is wrong (missing repo, file, revision, auth)
    except Exception as exc:  # connection refused, DNS failure, timeout, dropped connection
        raise WeightsNotCachedError(
            f"{name}: {hub} is not in the cache {cache} and {endpoint} could not be reached "
            f"({type(exc).__name__}: {exc}). Set HF_HUB_OFFLINE=1 to use only the cache without trying the network. "
            + _prefetch_hint(name)) from None  # the message names the network error; its chain adds nothing


def _exists(repo_id: str, revision: str, endpoint: str) -> bool:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi(endpoint=endpoint).model_info(repo_id, revision=revision)
        return True
    except (HfHubHTTPError, OSError):
        return False


def _missing_file(hub: HubFile, endpoint: str) -> str:
    from huggingface_hub import HfApi

    try:
        files = HfApi(endpoint=endpoint).list_repo_files(hub.repo_id, revision=hub.revision)
        listing = f"; it has: {', '.join(files[:20])}"
    except Exception:  # the listing is only a hint
        listing = ""
    return f"{hub.filename!r} does not exist in {hub.repo_id} at revision {hub.revision!r} on {endpoint}{listing}"


def fetch_weights(entry: WeightsEntry, **kwargs) -> Path:
    """Fetch and verify the file of a manifest entry (see :func:`fetch_file` for the keyword arguments).

    A file inside the package needs no download: it is checked against its sha256 and size every time (such files
    are small) and the keyword arguments, which are about the Hub cache, do not apply.
    """
    if entry.package is None:
        return fetch_file(entry.hub, name=entry.name, **kwargs)
    path = entry.package.local_path()
    if not path.is_file():
        raise WeightsNotFoundError(f"{entry.name}: {entry.package} is missing; the installation is incomplete "
                                   "(reinstall zoo: `pip install --force-reinstall zoo`, or `git checkout` the file)")
    problems = verify_file(path, entry.package.sha256, entry.package.size)
    if problems:
        raise WeightsIntegrityError(f"{entry.name}: {entry.package} does not match the manifest: "
                                    f"{'; '.join(problems)}. It was changed after installation; restore it "
                                    "(`git checkout` or reinstall zoo).")
    return path
