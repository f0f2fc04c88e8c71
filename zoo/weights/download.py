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

from zoo.weights.cache import cached_file, hub_cache_dir
from zoo.weights.checkpoint import CheckpointError
from zoo.weights.manifest import HubFile, WeightsEntry
from zoo.weights.hashing import file_sha256, sha256_file, verify_file
from zoo.weights.hub_metadata import HubMetadataError, hub_file_info, hub_problems
from zoo.weights.lock import LockRecord, weights_lock

__all__ = ["fetch_file", "fetch_weights", "cached_file", "verify_file", "sha256_file", "hash_policy", "hub_endpoint",
           "hub_cache_dir", "hub_offline", "how_checked", "bundle_record", "BUNDLE_RECORD", "WeightsIntegrityError",
           "WeightsNotFoundError", "WeightsNotCachedError"]

log = logging.getLogger("zoo.weights")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
#: the record ``zoo weights bundle`` writes into its folder: the sha256 and size of every file it bundled
BUNDLE_RECORD = "zoo-bundle.json"
#: what the last fetch of each file checked it against (for the load report): resolved path -> sentence
_CHECKED: dict[str, str] = {}


def how_checked(path: str | os.PathLike) -> str | None:
    """What zoo checked the file at ``path`` against when it last fetched it (None: not fetched here)."""
    return _CHECKED.get(str(Path(path).resolve()))


def _checked(path: Path, how: str) -> None:
    _CHECKED[str(path.resolve())] = how


def bundle_record(cache: Path, hub: HubFile) -> tuple[Path, dict] | None:
    """The record of ``hub`` in the bundle whose folder is the cache ``cache`` (``zoo weights bundle``), if any."""
    import json

    path = cache / BUNDLE_RECORD
    if not path.is_file():
        return None
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsIntegrityError(f"{path} is not valid JSON ({exc}); it records the sha256 of the bundled "
                                    "files: restore it or bundle again") from exc
    for record in records.values() if isinstance(records, dict) else ():
        if isinstance(record, dict) and (record.get("repo_id"), record.get("filename"), record.get("revision")) == (
                hub.repo_id, hub.filename, hub.revision):
            return path, record
    return None


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


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: only the cache is used."""
    return _flag("HF_HUB_OFFLINE") or _flag("TRANSFORMERS_OFFLINE")


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
            bundled = _check_bundle(hub, path, name, cache, full, reuse) if not fresh else None
            _checked(path, _trust_on_first_use(hub, path, name, fresh, offline, full, reuse, bundled))
        elif hub.sha256 is None:
            _checked(path, "not checked (no sha256 recorded for it)")
        elif problems := verify_file(path, hub.sha256, hub.size, full=fresh or full, reuse=reuse and not fresh):
            _remove(path)
            where = "downloaded" if fresh else "cached"
            raise WeightsIntegrityError(
                f"{name}: the {where} file {hub} does not match the manifest: {'; '.join(problems)}. "
                "The file was removed from the cache; loading again downloads it afresh. If it fails again, the "
                "file on the Hub differs from the manifest (a changed revision or a corrupted upload).")
        else:
            _checked(path, "sha256 verified against the manifest" if fresh or full
                     else "size checked against the manifest (not hashed: verify_cache=False)")
    return path


def _check_bundle(hub: HubFile, path: Path, name: str, cache: Path, full: bool, reuse: bool) -> str | None:
    """A cached file of a bundle (``zoo weights bundle``) is held to the sha256 the bundle recorded; returns what
    was checked (None when the cache is not a bundle or does not record this file)."""
    found = bundle_record(cache, hub)
    if found is None:
        return None
    record_path, record = found
    problems = verify_file(path, record.get("sha256"), record.get("size"), full=full, reuse=reuse)
    if problems:
        raise WeightsIntegrityError(
            f"{name}: {path} does not match the sha256 and size recorded for it in {record_path}: "
            f"{'; '.join(problems)}. The bundled file was changed after `zoo weights bundle` wrote it; bundle it "
            "again (or copy the bundle again).")
    return (f"sha256 verified against the bundle's record ({record_path})" if full else
            f"size checked against the bundle's record ({record_path}; not hashed: verify_cache=False)")


def _snapshot_commit(path: Path, filename: str) -> str | None:
    """The commit of a file in the huggingface_hub cache (``.../snapshots/<commit>/<filename>``)."""
    snapshot = path.parents[len(Path(filename).parts) - 1]
    return snapshot.name if snapshot.parent.name == "snapshots" else None


def _trust_on_first_use(hub: HubFile, path: Path, name: str, fresh: bool, offline: bool, full: bool,
                        reuse: bool, bundled: str | None = None) -> str:
    """Check a weight file the manifest does not hash: against the Hub's LFS sha256 when it is new to zoo (or the
    bundle's record, ``bundled``), then against the file first used for the same repo, file and revision (recorded
    in the zoo lock file). Returns what it was checked against."""
    lock = weights_lock()
    commit = _snapshot_commit(path, hub.filename)
    record = lock.get(hub.repo_id, hub.filename, hub.revision)
    if record is not None and not fresh:
        # a cache hit of the recorded file; a cache hit of another commit (the branch moved) is always hashed
        hashed = full or commit != record.commit
        problems = verify_file(path, record.sha256, record.size, full=hashed, reuse=reuse)
        if problems:
            _refuse(hub, path, name, record, commit)
        origin = {"hub": "checked against the Hub's LFS sha256 then", "bundle": "checked against a bundle's record then",
                  "cache": "NOT checked then: found in the cache offline"}.get(record.checked, record.checked)
        return ((f"sha256 verified against the file zoo first used (zoo lock file; {origin})" if hashed else
                 "size checked against the file zoo first used (not hashed: verify_cache=False)")
                + (f"; {bundled}" if bundled else ""))
    sha256 = file_sha256(path, reuse=reuse and not fresh)
    checked = "bundle" if bundled else "cache"
    if not offline and not bundled:
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
    how = {"hub": f"checked against the Hub's LFS sha256 (commit {commit})", "bundle": bundled,
           "cache": "NOT checked against any sha256: found in the cache without reaching the Hub, and the manifest "
                    "records none"}[checked]
    mine = LockRecord(hub.repo_id, hub.filename, hub.revision, commit, sha256, path.stat().st_size, checked, name)
    try:
        stored = lock.record(mine)
    except (OSError, ValueError) as exc:
        log.warning("%s: could not record %s in the lock file %s (%s); it is checked against the Hub only",
                    name, hub, lock.path, exc)
        return how
    if stored.sha256 != sha256:  # another process recorded another file first (or the record is wrong)
        _refuse(hub, path, name, stored, commit, vouched=checked == "hub")
    if record is None and checked == "hub":
        log.info("%s: first use of %s (commit %s, sha256 %s, as on the Hub); recorded in %s", name, hub, commit,
                 sha256, lock.path)
    elif record is None and checked == "cache":
        log.warning("%s: first use of %s from the cache without reaching the Hub, so it is not checked against the "
                    "Hub's sha256 (and has none in the manifest); recorded as found (commit %s, sha256 %s) in %s",
                    name, hub, commit, sha256, lock.path)
    return how + "; recorded in the zoo lock file" if record is None else how


def _refuse(hub: HubFile, path: Path, name: str, record: LockRecord, commit: str | None,
            vouched: bool = False) -> None:
    """A file other than the one first used: an upstream change (kept in the cache, unused), a damaged cache file
    (same commit: removed), or a wrong lock record (same commit, and the Hub vouches for the file: ``vouched`` or
    asked here; the file is kept). The message names both files' hashes."""
    sha256 = file_sha256(path)
    now = f"commit {commit}, sha256 {sha256}, {path.stat().st_size} bytes"
    if commit == record.commit:
        if vouched or _hub_vouches(hub, path, sha256, commit):
            raise WeightsIntegrityError(
                f"{name}: the zoo lock file {weights_lock().path} records {record.describe()} for {hub}, but the "
                f"Hub's own LFS sha256 for that commit is {sha256}, as is the file: the lock record disagrees with "
                f"the Hub (it was edited or damaged), the file is fine. `zoo weights trust {name}` forgets the "
                "record; the next load records the file the Hub vouches for.")
        _remove(path)
        raise WeightsIntegrityError(
            f"{name}: the cached file {hub} ({now}) is not the file zoo first used ({record.describe()}; lock file "
            f"{weights_lock().path}). It was damaged in the cache and has been removed; loading again downloads it "
            f"afresh. (If the fresh download is refused too, the lock record is wrong: `zoo weights trust {name}`.)")
    raise WeightsIntegrityError(
        f"{name}: {hub} changed upstream: it is now {now}, but zoo first used {record.describe()} (lock file "
        f"{weights_lock().path}). A changed file is refused (trust on first use). To keep the weights you had, load "
        f"revision {record.commit!r}. If you trust the new file, `zoo weights trust {name}` forgets the old one and "
        "the next load records the new one.")


def _hub_vouches(hub: HubFile, path: Path, sha256: str, commit: str | None) -> bool:
    """Whether the Hub's metadata for ``commit`` matches the file (False offline or when the Hub cannot say)."""
    if hub_offline():
        return False
    try:
        info = hub_file_info(hub.repo_id, hub.filename, commit or hub.revision, hub_endpoint())
    except HubMetadataError:
        return False
    return not hub_problems(path, sha256, info)


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
    _checked(path, "sha256 verified against the manifest")
    return path
