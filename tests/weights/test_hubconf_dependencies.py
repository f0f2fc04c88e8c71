"""hubconf.py's ``dependencies`` (what torch.hub checks before loading) name every package of zoo's requirements
that loading a model imports, unless a listed package already requires it."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from configparser import ConfigParser
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOAD = """
import json, sys, torch
with torch.device("meta"):
    for name in ("rtdetr_r18vd_akconv", "detr_resnet50"):
        torch.hub.load(sys.argv[1], name, source="local")
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _requirements_of(dist: str) -> set[str]:
    try:
        return {_name(r) for r in requires(dist) or [] if "extra ==" not in r}
    except PackageNotFoundError:
        return set()


def test_hubconf_dependencies_cover_what_loading_imports():
    config = ConfigParser()
    config.read(REPO / "setup.cfg")
    ours = {_name(r) for r in config["options"]["install_requires"].split("\n") if r.strip()}
    tree = ast.parse((REPO / "hubconf.py").read_text())
    listed = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and any(getattr(t, "id", None) == "dependencies" for t in n.targets))
    done = subprocess.run([sys.executable, "-c", LOAD, str(REPO)], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    to_dists = packages_distributions()
    imported = {_name(d) for m in modules for d in to_dists.get(m, [])} & ours
    covered = {_name(d) for d in listed}
    covered |= {r for d in listed for r in _requirements_of(d)}
    assert imported - covered == set(), f"add to hubconf.dependencies: {sorted(imported - covered)}"
    assert {"torch", "einops"} <= imported  # the check sees what loading imports
