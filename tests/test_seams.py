"""Family seams: a family declares itself on its Detector class and registers it once (zoo.registry.register_family);
weights/, export/, engine/, data/, cli/ and the factory find it there and never name a family, its layouts or its
transformers classes themselves."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch

from zoo import registry
from zoo.export.runtime import _family_class
from zoo.models.rtdetr import RTDETR
from zoo.weights.checkpoint import CheckpointError, Layout, convert_state_dict, layout_names
from zoo.weights.load import WeightsSource, build_with_weights

PACKAGE = Path(__file__).resolve().parents[1] / "zoo"
#: the packages that must work for any family without naming one
SEAMS = ("weights", "export", "engine", "data", "cli", "factory.py")
#: the family folders (packages under zoo/models)
FOLDERS = sorted(p.parent.name for p in (PACKAGE / "models").glob("*/__init__.py"))


def family_words() -> set[str]:
    """Everything that names a registered family: its name, class name, checkpoint layouts and transformers
    model types and image processor."""
    words = set()
    for name in registry.list_families():
        cls = registry.family_class(name)
        words |= {name, cls.__name__, *(layout.name for layout in cls.checkpoint_layouts)}
        if cls.transformers is not None:
            words |= {*cls.transformers.model_types, cls.transformers.processor_class}
    return words


def _docstrings(tree: ast.AST) -> set[int]:
    owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(node.body[0].value) for node in ast.walk(tree) if isinstance(node, owners) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def naming(source: str, words: set[str]) -> list[str]:
    """Code (not docstrings or comments) in ``source`` that names one of ``words``: a string constant holding it as
    a whole word (``"official-rtdetr"``, ``"a DETR config"``; not ``"rtdetr_r18vd"``, a model name in an example),
    an identifier, or an import of a family package."""
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, sorted(words, key=len, reverse=True)))
                         + r")(?![\w-])", re.IGNORECASE)
    family_package = re.compile(rf"zoo\.models\.({'|'.join(FOLDERS)})\b")
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            found += [f"line {node.lineno}: {m.group(0)!r} in {node.value[:60]!r}"
                      for m in pattern.finditer(node.value)]
        elif isinstance(node, (ast.Name, ast.Attribute, ast.alias)):
            name = {ast.Name: "id", ast.Attribute: "attr", ast.alias: "name"}[type(node)]
            name = getattr(node, name)
            found += [f"line {node.lineno}: identifier {name}" for part in name.split(".") if part in words]
        if isinstance(node, ast.ImportFrom) and family_package.match(node.module or ""):
            found.append(f"line {node.lineno}: imports {node.module}")
    return found


def _seam_files() -> list[Path]:
    return sorted(f for seam in SEAMS
                  for f in ([PACKAGE / seam] if seam.endswith(".py") else (PACKAGE / seam).rglob("*.py")))


@pytest.mark.parametrize("path", _seam_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_seams_name_no_family(path):
    found = naming(path.read_text(encoding="utf-8"), family_words())
    assert not found, f"zoo/{path.relative_to(PACKAGE)} names a family (declare it on the family's class):\n" + \
        "\n".join(found)


def test_naming_finds_family_names_and_lists_of_layouts():
    """The check can fail: a list of layouts, a message naming a family, a family class and a family import are
    found; a model name in an example and a docstring are not."""
    words = family_words()
    assert {"rtdetr", "detr", "RTDETR", "official-rtdetr", "transformers-detr", "rt_detr_v2"} <= words
    source = ('"""About RT-DETR and official-rtdetr."""\n'
              'FORMATS = ("zoo", "official-rtdetr", "transformers-detr")\n'
              'message = "not an RT-DETR or DETR config"\n'
              'help = "e.g. rtdetr_r18vd"\n'
              'from zoo.models.rtdetr.model import RTDETR\n')
    found = naming(source, words)
    assert sum("official-rtdetr" in f for f in found) == 1 and any("transformers-detr" in f for f in found)
    assert any("'DETR' in 'not an RT-DETR or DETR config'" in f for f in found)
    assert any("identifier RTDETR" in f for f in found) and any("imports zoo.models.rtdetr.model" in f for f in found)
    assert not any("rtdetr_r18vd" in f for f in found)


@pytest.fixture
def scratch_family():
    """Families registered by a test are removed afterwards."""
    before = dict(registry._families)
    yield
    registry._families.clear()
    registry._families.update(before)


def test_a_family_of_a_family_is_found_by_the_export_runtime(scratch_family):
    @registry.register_family
    class Refined(RTDETR):  # a family built on RT-DETR, as D-FINE is
        family = "refined_test"

    assert _family_class("refined_test") is Refined and _family_class("rtdetr") is RTDETR
    assert "refined_test" in registry.list_families()
    outputs = {"pred_logits": torch.tensor([[[0.0, 3.0], [1.0, -1.0]]]), "pred_boxes": torch.rand(1, 2, 4)}
    boxes, scores, labels = _family_class("refined_test").select_detections(outputs, 2)
    assert labels.tolist() == [[1, 0]] and scores[0, 0] == torch.sigmoid(torch.tensor(3.0))
    with pytest.raises(ValueError, match="names model family 'unknown_test'.*Registered families: .*rtdetr"):
        _family_class("unknown_test")


def test_register_family_refuses_clashes_and_inherited_names(scratch_family):
    class Inherits(RTDETR):  # family "rtdetr" comes from the parent: it must name its own
        pass

    with pytest.raises(ValueError, match="must set its own class attribute family"):
        registry.register_family(Inherits)

    class Clash(RTDETR):
        family = "rtdetr"

    with pytest.raises(ValueError, match="'rtdetr' is already registered"):
        registry.register_family(Clash)


def test_layouts_come_from_the_class(scratch_family):
    """A family's declared layouts are what checkpoints are detected and converted with; zoo's own keys and timm's
    need no declaration."""
    renamed = Layout("renamed-test", lambda sd: "w" in sd, lambda sd: {"weight": sd["w"]})

    @registry.register_family
    class Renamed(RTDETR):
        family = "renamed_test"
        checkpoint_layouts = (renamed,)

    converted, name = convert_state_dict(Renamed, {"w": torch.ones(1)})
    assert name == "renamed-test" and list(converted) == ["weight"]
    assert convert_state_dict("renamed_test", {"w": torch.ones(1)})[1] == "renamed-test"
    assert layout_names(Renamed) == ["zoo", "timm", "renamed-test"]
    assert "official-rtdetr" in layout_names(RTDETR) and "official-rtdetr" not in layout_names(Renamed)
    with pytest.raises(CheckpointError, match="known layouts: zoo, renamed-test"):
        convert_state_dict(Renamed, {"other": torch.ones(1)})


def test_a_format_the_family_does_not_declare_is_refused_before_reading(tmp_path):
    """A manifest entry's format is checked against the model's family before its file is read."""
    source = WeightsSource("rtdetr_r18vd.mislabelled", tmp_path / "never-read.safetensors", 80, format="official-detr")
    with pytest.raises(CheckpointError, match="'official-detr' layout, which the rtdetr family does not read"):
        build_with_weights("rtdetr_r18vd", {}, source)


def test_fixed_parts_are_built_without_registry_lookups(monkeypatch):
    """Building rtdetr_r18vd looks up only what has alternatives (the backbone; the encoder's blocks inside it):
    the encoder and decoder are built from the classes ``RTDETR.parts`` names, and config.json reads the same."""
    import zoo
    from zoo.models import base

    looked_up = []
    real = base.get_component
    monkeypatch.setattr(base, "get_component", lambda kind, name: looked_up.append((kind, name)) or real(kind, name))
    with torch.device("meta"):
        model = zoo.create_model("rtdetr_r18vd", num_queries=100)
    assert looked_up == [("backbone", "presnet")] * 2  # routing num_queries, then building
    args = model.config["model_args"]
    names = (args["backbone"]["name"], args["encoder"]["name"], args["decoder"]["name"])
    assert names == ("presnet", "hybrid", "rtdetr")
    assert args["decoder"]["num_queries"] == 100
    with pytest.raises(ValueError, match="builds its encoder from HybridEncoder"):
        zoo.create_model("rtdetr_r18vd", encoder={"name": "detr"})
