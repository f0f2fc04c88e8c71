"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one file share a namespace and run in order, in a process of their own and an empty temporary folder.
What they name is provided:
images (a copy of the bundled demo image under each image file name the code mentions) and pretrained weights (every
manifest entry of an architecture the code mentions, its default tag or a tag it names, plus the backbone's ImageNet
weights when it asks for ``pretrained_backbone``): random but valid weights in the entry's upstream layout
(transformers ``save_pretrained``, timm state dicts), served by the local Hub of tests/weights through a manifest
copy that records their sha256 and size. A block whose first line is a ``# needs network`` comment is skipped.

Each file's blocks run in a process of their own, forked from a server interpreter that has imported torch, timm
and zoo and run nothing (:data:`SERVER`): what a fresh interpreter gives, without paying the imports per file; a
block that registers a model cannot leak into the other files' or the tests' registry.
"""
from __future__ import annotations

import functools
import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
NETWORK = "# needs network"
IMAGE = re.compile(r"""["']([^"'\s]+\.(?:jpe?g|png|bmp|webp))["']""", re.I)
DEMO_IMAGE = REPO / "zoo" / "assets" / "shapes_demo.png"
for folder in ("tests/weights", "tests/models/rtdetr", "tests/models/detr"):  # the local Hub, transformers models
    if (REPO / folder).is_dir():
        sys.path.insert(0, str(REPO / folder))


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a Markdown file, in order."""
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def _runnable(block: str) -> bool:
    return not block.lstrip().startswith(NETWORK)


def _mentions(code: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", code) is not None


def weights_named(code: str) -> list[Any]:
    """Manifest entries the code loads: those of a mentioned architecture (or alias) that are its default or whose
    tag it mentions, and the default ImageNet weights of their backbones when it asks for pretrained_backbone."""
    from zoo.weights.manifest import load_manifest
    from zoo.weights.sources import backbone_weights
    from zoo.registry import list_models, model_aliases

    aliases = model_aliases()
    mentioned = {aliases.get(n, n) for n in list_models(include_aliases=True) if _mentions(code, n)}
    entries = [e for e in load_manifest().entries.values() if e.architecture in mentioned and e.package is None
               and (e.default or _mentions(code, e.tag))]
    if "pretrained_backbone" in code:
        entries += [e for e in map(backbone_weights, sorted(mentioned)) if e is not None]
    return list({e.name: e for e in entries}.values())


def upstream_file(entry: Any, folder: Path) -> Path:
    """A weight file for ``entry`` in its upstream layout, with random weights."""
    arch, out = entry.architecture, folder / entry.name
    if entry.format in ("transformers-rtdetr", "transformers-detr"):
        if entry.format == "transformers-detr":
            from hf_detr import hf_detr as build
        else:
            from hf_rtdetr import hf_rtdetr, hf_rtdetrv2

            build = hf_rtdetrv2 if arch.startswith("rtdetrv2_") else hf_rtdetr
            build = functools.partial(build, calibrate=False)  # a valid file is enough: no calibration passes
        build(arch, num_classes=entry.num_classes).save_pretrained(out)
        return out / "model.safetensors"
    from safetensors.torch import save_file

    if entry.format == "timm":
        import timm

        model = timm.create_model(arch, num_classes=entry.num_classes)
    else:
        import zoo

        model = zoo.create_model(arch, num_classes=entry.num_classes, **entry.model_args)
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    return out / "model.safetensors"


class DocsHub:
    """The local Hub, a shared cache, and a manifest that records the files served so far."""

    def __init__(self, root: Path):
        from local_hub import LocalHub

        self.root = root
        self.hub = LocalHub(root / "hub").start()
        self.manifest = json.loads((REPO / "zoo" / "weights_manifest.json").read_text())
        self.files: dict[tuple, Path] = {}
        self.served: set[str] = set()

    def serve(self, entries: list[Any]) -> None:
        from zoo.weights.download import sha256_file

        for entry in entries:
            if entry.name in self.served:
                continue
            key = (entry.format, entry.architecture, entry.num_classes, json.dumps(entry.model_args, sort_keys=True))
            if key not in self.files:
                self.files[key] = upstream_file(entry, self.root / "files")
            path = self.files[key]
            self.hub.commit(entry.hub.repo_id, {entry.hub.filename: path})
            self.manifest["weights"][entry.name]["hub"].update(revision="main", sha256=sha256_file(path),
                                                               size=path.stat().st_size)
            self.served.add(entry.name)
        (self.root / "manifest.json").write_text(json.dumps(self.manifest))


@pytest.fixture(scope="module")
def docs_hub(tmp_path_factory):
    hub = DocsHub(tmp_path_factory.mktemp("docs"))
    yield hub
    hub.hub.stop()


class BlockServer:
    """The :data:`SERVER` interpreter: :meth:`run` forks it into a process that runs one file's blocks."""

    def __init__(self, env: dict[str, str], log: Path):
        self.log = log
        with open(log, "w") as stderr:
            self.proc = subprocess.Popen([sys.executable, "-c", SERVER, RUNNER], env=env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=stderr, text=True)

    def run(self, blocks: Path, name: str, cwd: Path, timeout: float = 900) -> tuple[int, str]:
        """(exit status, standard error) of the blocks in ``blocks`` (a JSON list) run in ``cwd``."""
        stdout, stderr = blocks.with_suffix(".out"), blocks.with_suffix(".err")
        request = dict(blocks=str(blocks), name=name, cwd=str(cwd), stdout=str(stdout), stderr=str(stderr))
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            pytest.fail(f"the block server answered nothing within {timeout} s: {self.log.read_text()[-4000:]}")
        return json.loads(line), stderr.read_text() if stderr.exists() else ""

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def block_server(docs_hub, tmp_path_factory):
    """A :class:`BlockServer` whose environment points zoo and huggingface_hub at ``docs_hub``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ZOO_WEIGHTS_MANIFEST": str(docs_hub.root / "manifest.json"),
           "HF_ENDPOINT": docs_hub.hub.endpoint, "HF_HUB_CACHE": str(docs_hub.root / "cache"),
           "HF_HUB_DISABLE_XET": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("HF_HUB_OFFLINE", None)
    server = BlockServer(env, tmp_path_factory.mktemp("block-server") / "server.log")
    yield server
    server.stop()


@pytest.mark.parametrize("doc", [d for d in DOCS if any(map(_runnable, python_blocks(d)))],
                         ids=lambda d: str(d.relative_to(REPO)))
def test_python_blocks_run(doc, docs_hub, block_server, tmp_path, single_thread):
    blocks = [b for b in python_blocks(doc) if _runnable(b)]
    code = "\n".join(blocks)
    docs_hub.serve(weights_named(code))
    work = tmp_path / "work"
    work.mkdir()
    for name in sorted(set(IMAGE.findall(code))):
        target = work / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.open(DEMO_IMAGE).convert("RGB").save(target)
    # in a process of its own: a block that registers a model must not leak into the other tests' registry
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    status, stderr = block_server.run(tmp_path / "blocks.json", doc.name, work)
    assert status == 0, f"{doc.relative_to(REPO)}: {stderr[-4000:]}"


#: runs the blocks of one file in order, in one namespace; a failure names the block
RUNNER = r"""
import json, sys, traceback
blocks, name = json.load(open(sys.argv[1])), sys.argv[2]
namespace = {"__name__": "__docs__"}
for i, block in enumerate(blocks):
    try:
        exec(compile(block, f"{name}, python block {i + 1}", "exec"), namespace)
    except Exception:
        sys.exit(f"{name}, python block {i + 1} fails:\n{block}\n{traceback.format_exc()}")
"""

#: ``python -c SERVER RUNNER`` reads one request a line (JSON: blocks, name, cwd, stdout, stderr); for each, a forked
#: child runs :data:`RUNNER` as ``python -c RUNNER blocks name`` would in ``cwd`` (its output to the two files, the
#: exit handlers run at the end) and the server answers the child's exit status. The server only imports: no thread
#: pool or tensor exists to fork.
SERVER = r"""
import atexit, json, os, sys, traceback
import torch, torchvision, timm, PIL.Image, zoo  # what every page imports, once

RUNNER = sys.argv[1]

for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.chdir(request["cwd"])
            for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            sys.argv = ["-c", request["blocks"], request["name"]]
            try:
                exec(compile(RUNNER, "<string>", "exec"), {"__name__": "__main__"})
                status = 0
            except SystemExit as done:
                if isinstance(done.code, str):
                    print(done.code, file=sys.stderr)
                status = 1 if isinstance(done.code, str) else (done.code or 0)
            atexit._run_exitfuncs()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def test_blocks_that_need_the_network_are_few():
    """Only blocks that truly need the internet are skipped; the harness runs the rest."""
    blocks = [b for d in DOCS for b in python_blocks(d)]
    skipped = [b for b in blocks if not _runnable(b)]
    assert blocks and len(skipped) <= len(blocks) // 2, skipped


def test_every_page_is_in_the_site_navigation():
    """A page missing from mkdocs.yml's nav is built but linked from nowhere (docs/distributed.md was: issue 21)."""
    text = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    nav = set(re.findall(r"([\w./-]+\.md)\s*$", text.split("\nnav:", 1)[1], re.M))
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert pages - nav == set()
