"""The command line starts without the heavy dependencies it does not need: ``import zoo`` imports no model
family, so ``zoo --help``, every sub-command's ``--help`` and ``zoo list`` (which reads the registered names from
the families' source, and the weight tags from the manifest) import no torch at all; ``zoo info`` imports the
families (torch, torchvision) but none of timm, transformers, pycocotools, huggingface_hub, scipy or onnx (each
costs up to seconds). benchmarks/bench_cli_start.py times them."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torchvision", "timm", "transformers", "pycocotools", "huggingface_hub", "scipy", "onnx",
         "onnxruntime")
RUN = """
import contextlib, io, json, sys
from zoo.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
print(json.dumps([code, sorted({m.split(".")[0] for m in sys.modules})]))
"""


@pytest.mark.parametrize("argv, allowed", [
    (["--help"], ()),
    (["predict", "--help"], ()),
    (["weights", "--help"], ()),
    (["export", "--help"], ()),
    (["train", "--help"], ()),
    (["data", "--help"], ()),
    (["data", "check", "--help"], ()),
    (["list"], ()),
    (["list", "rtdetr_*", "--pretrained"], ()),
    (["info", "rtdetr_r18vd"], ("torch", "torchvision")),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_cli_start_imports(argv, allowed):
    done = subprocess.run([sys.executable, "-c", RUN, *argv], capture_output=True, text=True, timeout=300)
    code, modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 0, done.stderr[-2000:]
    assert sorted(set(HEAVY) - set(allowed) & set(modules)) == []
