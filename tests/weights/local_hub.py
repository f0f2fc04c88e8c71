"""A local Hugging Face Hub for tests and benchmarks (never the internet).

Downloads: olah (a third-party Hub mirror, from PyPI) on 127.0.0.1, serving git repos created here; files can be
stored as git-LFS objects, as the Hub stores weights. olah answers an LFS file with its content and, as etag, a
sha256 it computes from the object it serves; the Hub instead answers with a redirect to its CDN that carries the
LFS metadata recorded at upload (``X-Linked-Etag`` = the pointer's sha256, ``X-Linked-Size``, ``X-Repo-Commit``) and,
as ``ETag``, the git blob id of the pointer. :class:`_HubFront`, in front of olah at :attr:`LocalHub.endpoint`, does
what the Hub does, so that a server whose object differs from its recorded sha256 can be tested; everything else
is passed to olah unchanged.
Uploads: :class:`UploadServer`, a small HTTP server with the routes huggingface_hub calls to create a repo and commit
files; each commit becomes a git commit in the same mirror folder, so olah serves what was pushed.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

#: the architecture of the tiny test weights (with tiny_rtdetr_args(): ~0.4M parameters)
ARCH = "rtdetr_mobilenetv3_small"

_GIT = ["git", "-c", "user.name=zoo-tests", "-c", "user.email=tests@zoo.invalid", "-c", "commit.gpgsign=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run([*_GIT, "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


_POINTER = re.compile(r"version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize ([0-9]+)\n")
_RESOLVE = re.compile(r"/(?:models/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)")


class LocalHub:
    """olah serving ``<root>/mirrors/models/<org>/<name>`` git repos, behind a Hub-like front at :attr:`endpoint`
    (olah itself at :attr:`olah_endpoint`)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.mirrors = self.root / "mirrors"
        self.port = free_port()
        self.olah_endpoint = f"http://127.0.0.1:{self.port}"
        self.front = _HubFront(self)
        self.endpoint = self.front.endpoint
        self.process: subprocess.Popen | None = None

    # -- server ------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "LocalHub":
        (self.mirrors / "models").mkdir(parents=True, exist_ok=True)
        config = self.root / "olah.toml"
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'repos-path = "{self.root / "olah_repos"}"\nmirrors-path = ["{self.mirrors}"]\n'
            'hf-scheme = "http"\nhf-netloc = "127.0.0.1:9"\nhf-lfs-netloc = "127.0.0.1:9"\n'
            "metadata-cache-ttl = 0\n"
            "[accessibility]\noffline = true\n")
        cli = shutil.which("olah-cli") or "olah-cli"
        with open(self.root / "olah.out", "wb") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen([cli, "-c", str(config), "--log-path", str(self.root / "logs")],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"olah exited: {(self.root / 'olah.out').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.olah_endpoint + "/", timeout=1)
                return self.front.start() and self
            except urllib.error.HTTPError:
                return self.front.start() and self  # it answers
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"olah did not start within {timeout}s")

    def stop(self) -> None:
        self.front.stop()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    # -- repos -------------------------------------------------------------------------------------
    def repo_dir(self, repo_id: str) -> Path:
        return self.mirrors / "models" / repo_id

    def create_repo(self, repo_id: str) -> Path:
        """An empty model repo on branch main with one commit (.gitattributes, as the Hub creates)."""
        path = self.repo_dir(repo_id)
        path.mkdir(parents=True, exist_ok=False)
        _git(path, "init", "-q", "-b", "main")
        (path / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
        _git(path, "add", ".gitattributes")
        _git(path, "commit", "-q", "-m", "initial commit")
        return path

    def commit(self, repo_id: str, files: dict[str, bytes | str | os.PathLike], message: str = "add files",
               lfs: bool = True) -> str:
        """Add or replace files (bytes, or a path to copy) in one commit; returns the commit sha.

        With ``lfs``, ``*.safetensors`` files are stored as git-LFS pointers + objects (the server then reports
        their sha256 as etag, like the Hub)."""
        path = self.repo_dir(repo_id)
        if not path.exists():
            self.create_repo(repo_id)
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            target = path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if lfs and name.endswith(".safetensors"):
                self._lfs(path, target, data)
            elif isinstance(data, bytes):
                target.write_bytes(data)
            else:
                shutil.copyfile(data, target)
            _git(path, "add", name)
        _git(path, "commit", "-q", "-m", message)
        return _git(path, "rev-parse", "HEAD")

    @staticmethod
    def _lfs(repo: Path, target: Path, data: bytes | os.PathLike) -> None:
        digest, size = hashlib.sha256(), 0
        source = None if isinstance(data, bytes) else Path(data)
        if source is None:
            digest.update(data)
            size = len(data)
        else:
            with open(source, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    size += len(chunk)
        oid = digest.hexdigest()
        obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        obj.parent.mkdir(parents=True, exist_ok=True)
        if source is None:
            obj.write_bytes(data)
        else:
            shutil.copyfile(source, obj)
        target.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n")

    def lfs_object(self, repo_id: str, oid: str) -> Path:
        return self.repo_dir(repo_id) / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid

    def lfs_pointer(self, url_path: str) -> dict | None:
        """For a ``/<org>/<name>/resolve/<revision>/<file>`` URL of an LFS file: the commit, the path, the pointer's
        sha256 and size and its git blob id; None for anything else (olah answers it)."""
        m = _RESOLVE.fullmatch(urlsplit(url_path).path)
        if not m or not self.repo_dir(m.group(1)).is_dir():
            return None
        repo_id, revision, path = m.group(1), unquote(m.group(2)), unquote(m.group(3))
        repo = self.repo_dir(repo_id)
        try:
            commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
            blob = _git(repo, "rev-parse", "--verify", "--quiet", f"{commit}:{path}")
            if int(_git(repo, "cat-file", "-s", blob)) > 200:  # larger than any pointer: the file itself
                return None
            pointer = _git(repo, "cat-file", "-p", blob) + "\n"
        except (subprocess.CalledProcessError, UnicodeDecodeError):
            return None
        found = _POINTER.fullmatch(pointer)
        if not found:
            return None
        return {"repo_id": repo_id, "commit": commit, "path": path, "sha256": found.group(1),
                "size": found.group(2), "blob": blob}


class _FrontHandler(BaseHTTPRequestHandler):
    """LFS files as the Hub serves them (a redirect carrying the LFS metadata); all else passed to olah."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer()

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._forward()

    def _answer(self) -> None:
        hub = self.server.hub
        lfs = hub.lfs_pointer(self.path) if "/resolve/" in self.path else None
        if lfs is None:
            return self._forward()
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(302)
        location = f"{hub.olah_endpoint}/{lfs['repo_id']}/resolve/{lfs['commit']}/{quote(lfs['path'])}"
        for key, value in (("Location", location), ("X-Repo-Commit", lfs["commit"]),
                           ("X-Linked-Etag", f'"{lfs["sha256"]}"'), ("X-Linked-Size", lfs["size"]),
                           ("ETag", f'"{lfs["blob"]}"'), ("Content-Length", "0")):
            self.send_header(key, value)
        self.end_headers()

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        olah = urlsplit(self.server.hub.olah_endpoint)
        connection = http.client.HTTPConnection(olah.hostname, olah.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "keep-alive", "content-length", "date",
                                       "server"):
                    self.send_header(key, value)
            length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            connection.close()


class _HubFront:
    def __init__(self, hub: LocalHub):
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), _FrontHandler)
        self.server.daemon_threads = True
        self.server.hub = hub
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "_HubFront":
        if not self.thread.is_alive():
            self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


class _UploadHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, status: int, body: dict | None = None, headers: dict | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_GET(self) -> None:
        self._body()
        self._reply(404, {"error": "not served here"}, {"X-Error-Code": "RepoNotFound"})

    def do_POST(self) -> None:
        body = self._body()
        path = self.path.split("?", 1)[0]
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            url = f"{self.server.hub.endpoint}/{repo_id}"
            if self.server.hub.repo_dir(repo_id).exists():  # the Hub's 409 also carries the url (exist_ok reads it)
                return self._reply(409, {"error": "You already created this model repo", "url": url})
            self.server.hub.create_repo(repo_id)
            return self._reply(200, {"url": url})
        if path == "/api/validate-yaml":
            return self._reply(200, {})
        m = re.fullmatch(r"/api/models/(.+?)/(preupload|commit)/([^/]+)", path)
        if not m:
            return self._reply(404, {"error": f"no route {path}"})
        repo_id, action, revision = m.group(1), m.group(2), m.group(3)
        if not self.server.hub.repo_dir(repo_id).exists():
            return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if action == "preupload":
            files = json.loads(body)["files"]
            return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                "oid": None} for f in files]})
        return self._commit(repo_id, revision, body)

    def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
        if revision != "main":
            return self._reply(404, {"error": f"branch {revision} not found"}, {"X-Error-Code": "RevisionNotFound"})
        files, message = {}, "upload"
        for line in body.splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                message = item["value"].get("summary") or message
            elif item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            else:
                return self._reply(400, {"error": f"unsupported commit operation {item['key']}"})
        sha = self.server.hub.commit(repo_id, files, message=message)
        self._reply(200, {"commitUrl": f"{self.server.hub.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha,
                          "pullRequestUrl": None})


class UploadServer:
    """The Hub's upload routes (create repo, validate-yaml, preupload, commit) writing into ``hub``'s repos."""

    def __init__(self, hub: LocalHub):
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), _UploadHandler)
        self.server.hub = hub
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "UploadServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def tiny_rtdetr_args() -> dict:
    """Architecture arguments that shrink rtdetr_mobilenetv3_small to ~0.4M parameters (fast tests)."""
    return dict(backbone={"model_name": "mobilenetv3_small_050"},
                encoder={"hidden_dim": 32, "dim_feedforward": 64, "num_heads": 4},
                decoder={"hidden_dim": 32, "dim_feedforward": 64, "num_decoder_layers": 2, "num_queries": 20,
                         "num_heads": 4, "num_denoising": 10})


def manifest_entry(repo_id: str, *, sha256: str | None, size: int | None, revision: str = "main",
                   fmt: str = "zoo", num_classes: int = 3, label_names: list[str] | str | None = None,
                   model_args: dict | None = None, filename: str = "model.safetensors") -> dict:
    """A schema-valid manifest entry for test weights."""
    entry = {
        "hub": {"repo_id": repo_id, "revision": revision, "filename": filename, "sha256": sha256, "size": size},
        "format": fmt, "license": "apache-2.0",
        "origin": {"paper": "https://arxiv.org/abs/2304.08069", "repo": "https://github.com/lyuwenyu/RT-DETR",
                   "title": "DETRs Beat YOLOs on Real-time Object Detection"},
        "dataset": "coco", "num_classes": num_classes,
        "label_names": label_names if label_names is not None else [f"class_{i}" for i in range(num_classes)],
        "preprocessing": {"input_size": [3, 640, 640], "resize_mode": "stretch", "interpolation": "bilinear",
                          "mean": None, "std": None},
        "metrics": [{"task": "object-detection", "dataset": "coco-val2017", "metric": "box_ap", "value": 1.0,
                     "provenance": "measured by zoo", "source": "tests"}],
        "complexity": {"params_m": 0.4, "gflops": None, "input_size": [640, 640], "provenance": "measured by zoo"},
    }
    if model_args:
        entry["model_args"] = model_args
    return entry


def assert_same_state(a, b, skip: tuple[str, ...] = ()) -> None:
    """Two modules hold exactly the same tensors (keys starting with ``skip`` are not compared)."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if not key.startswith(skip):
            assert torch.equal(sa[key], sb[key]), key


if __name__ == "__main__":  # a manual local Hub: python tests/weights/local_hub.py DIR
    hub = LocalHub(Path(sys.argv[1])).start()
    print(hub.endpoint, flush=True)
    try:
        hub.process.wait()
    finally:
        hub.stop()
