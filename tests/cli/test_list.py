"""Issue 21 item 22: `zoo list` lists aliases (saying which model they name) and says when nothing matches;
`zoo weights list` reads the registered names without importing the families and fills its status column."""
from __future__ import annotations

import json
import subprocess
import sys

from zoo.cli import main


def test_an_alias_is_listed_with_its_model(capsys):
    assert main(["list", "rtdetr_mnv3"]) == 0
    assert capsys.readouterr().out.splitlines() == ["rtdetr_mnv3 (alias of rtdetr_mobilenetv3_large)"]
    assert main(["list", "rtdetr_mobilenetv3_l*"]) == 0
    assert "rtdetr_mnv3" not in capsys.readouterr().out  # only what the pattern matches


def test_an_empty_match_says_so(capsys):
    assert main(["list", "no_such_model*"]) == 1
    assert "no registered model matches 'no_such_model*'" in capsys.readouterr().err
    assert main(["list", "no_such_model*", "--pretrained"]) == 1
    assert "no weight tag matches" in capsys.readouterr().err


def test_weights_list_imports_no_family_and_fills_the_status():
    code = ("import contextlib, io, json, sys\nfrom zoo.cli import main\nout = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n    code = main(['weights', 'list', '--json'])\n"
            "print(json.dumps([code, json.loads(out.getvalue()), sorted(sys.modules)]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    status, rows, modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert status == 0, done.stderr[-2000:]
    assert rows and {row["status"] for row in rows} == {"registered"}
    assert not [m for m in modules if m.split(".")[0] in ("torch", "torchvision", "timm") or m == "zoo.models"]


def test_info_remembers_the_flop_count(tmp_path, monkeypatch, capsys):
    """Issue 21 item 22: `zoo info` counted FLOPs (a meta-device forward pass, seconds) on every call; the figures
    are remembered in the zoo cache for as long as the model code is unchanged."""
    from zoo.models import complexity

    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    calls = []
    counted = complexity.model_complexity
    monkeypatch.setattr(complexity, "model_complexity", lambda *a, **k: calls.append(a) or counted(*a, **k))
    assert main(["info", "rtdetr_mnv3", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["info", "rtdetr_mobilenetv3_large", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert len(calls) == 1 and (tmp_path / "complexity.json").is_file()
    expected = counted("rtdetr_mobilenetv3_large")
    for info in (first, second):
        assert (info["params_m"], info["gflops"], info["input_size"]) == (
            expected["params_m"], expected["gflops"], expected["input_size"])
