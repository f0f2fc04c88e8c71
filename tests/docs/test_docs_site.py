"""The documentation site: ``mkdocs build --strict`` passes, and the generated pages list every registered model,
alias and manifest entry, every CLI sub-command and the API of every sub-package (read back from the built HTML)."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
    pytest.importorskip(module, reason=f"the docs site needs {module} (pip install -e '.[docs]')")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "ZOO_DOCS_MEASURE": "0", "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _hook():
    spec = importlib.util.spec_from_file_location("generated_pages", ROOT / "docs" / "hooks" / "generated_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_zoo_page(site):
    import zoo
    from zoo.weights.manifest import load_manifest

    html = (site / "model-zoo" / "index.html").read_text()
    for name in zoo.list_models(include_aliases=True):
        assert f"<code>{name}</code>" in html, name
    manifest = load_manifest()
    for entry in manifest.entries.values():
        assert f"<code>{entry.name}</code>" in html, entry.name
        if entry.hub is not None:
            assert f'href="https://huggingface.co/{entry.hub.repo_id}"' in html
        for metric in entry.metrics:
            assert f"{metric['metric']} {metric['value']} on {metric['dataset']}" in html


def test_measured_row():
    """The architectures table measures like ``zoo info`` (skipped in the build above to keep it fast)."""
    import zoo
    from zoo.weights.manifest import load_manifest

    row = _hook().architecture_row("mobilenetv3_small_050", load_manifest(), [], measure=True).split(" | ")
    params = sum(p.numel() for p in zoo.create_model("mobilenetv3_small_050").parameters()) / 1e6
    assert row[2] == f"{params:.1f}" and float(row[3]) > 0 and row[4] == "224x224"


def test_cli_page(site):
    from zoo.cli import build_parser

    html = (site / "cli" / "index.html").read_text()
    progs = [parser.prog for parser in _hook()._parsers(build_parser())]
    assert {"zoo", "zoo predict", "zoo train", "zoo weights download"} <= set(progs)
    for prog in progs:
        assert f"<code>{prog}</code>" in html, prog
    assert "--report-to" in html and "webcam indices" in html


def test_api_pages(site):
    pages = _hook().api_pages()
    assert "zoo.data.video" in pages["zoo.data"] and "zoo.engine.video" in pages["zoo.engine"]
    assert "zoo.engine.reporting" in pages["zoo.engine"]
    for page in pages:
        assert (site / "api" / page / "index.html").is_file(), page
    video = (site / "api" / "zoo.engine" / "index.html").read_text()
    assert "predict_stream" in video and "in constant" in video  # the docstring, rendered
    assert "create_model" in (site / "api" / "zoo" / "index.html").read_text()


def test_a_tag_of_another_config_shows_its_own_figures():
    """Issue 21 item 24: the shapes_demo tag of rtdetr_mobilenetv3_small (a 1.37M-parameter narrow variant) was shown
    only beside the default architecture's 9.8M parameters / 26 GFLOPs."""
    from zoo.weights.manifest import load_manifest

    manifest = load_manifest()
    demo = manifest.entries["rtdetr_mobilenetv3_small.shapes_demo"]
    row = _hook().architecture_row("rtdetr_mobilenetv3_small", manifest, [], measure=False)
    assert (f"`shapes_demo` (its own config: {demo.complexity['params_m']:.2f} M params, "
            f"{demo.complexity['gflops']:g} GFLOPs at 96x96)") in row
    plain = _hook().architecture_row("rtdetr_r18vd", manifest, [], measure=False)
    assert "`coco`," in plain and "its own config" not in plain  # same config as the default: no extra figures
