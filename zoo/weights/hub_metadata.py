"""What the Hub itself says about a file: the commit a revision resolves to, the content hash and the size.

huggingface_hub's ``get_hf_file_metadata`` reads them from a HEAD request on the file's ``resolve`` URL: the Hub
answers an LFS file with a redirect carrying ``X-Linked-Etag`` (the sha256 of the content, the LFS object id),
``X-Linked-Size`` and ``X-Repo-Commit``; a file stored in git directly has its git blob id (sha1) as ``ETag``.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

__all__ = ["HubFileInfo", "HubMetadataError", "hub_file_info", "git_blob_sha1", "hub_problems"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")


class HubMetadataError(OSError):
    """The Hub (or the mirror in ``HF_ENDPOINT``) did not answer with a file's metadata."""


@dataclass(frozen=True)
class HubFileInfo:
    """A file as the Hub describes it at ``commit``: ``sha256`` for LFS files, ``git_sha1`` for files in git."""
    commit: str
    sha256: str | None
    git_sha1: str | None
    size: int | None


def hub_file_info(repo_id: str, filename: str, revision: str, endpoint: str) -> HubFileInfo:
    """The commit, content hash and size of ``repo_id/filename`` at ``revision`` on ``endpoint``."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    from zoo.version import __version__

    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, endpoint=endpoint, library_name="zoo", library_version=__version__)
    except Exception as exc:  # network errors and HTTP errors alike: the caller says what it means
        raise HubMetadataError(f"{endpoint} gave no metadata for {repo_id}/{filename}@{revision}: "
                               f"{type(exc).__name__}: {exc}") from exc
    etag = (meta.etag or "").lower()
    if not meta.commit_hash:
        raise HubMetadataError(f"{endpoint} did not say which commit {repo_id}@{revision} is (no X-Repo-Commit)")
    return HubFileInfo(commit=meta.commit_hash, sha256=etag if _SHA256.match(etag) else None,
                       git_sha1=etag if _SHA1.match(etag) else None, size=meta.size)


def git_blob_sha1(path: str | os.PathLike) -> str:
    """git's object id of a file (sha1 of ``blob <size>\\0`` and the content): the Hub's ETag of non-LFS files."""
    digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def hub_problems(path: str | os.PathLike, sha256: str, info: HubFileInfo) -> list[str]:
    """How the local file (whose sha256 is ``sha256``) differs from the Hub's metadata; empty when it matches."""
    size = os.path.getsize(path)
    if info.size is not None and size != info.size:
        return [f"size {size} bytes, the Hub says {info.size}"]
    if info.sha256 is not None:
        return [] if sha256 == info.sha256 else [f"sha256 {sha256}, the Hub's LFS sha256 is {info.sha256}"]
    if info.git_sha1 is not None:
        actual = git_blob_sha1(path)
        return [] if actual == info.git_sha1 else [f"git blob id {actual}, the Hub says {info.git_sha1}"]
    return ["the Hub reports no content hash for it (neither an LFS sha256 nor a git blob id)"]
