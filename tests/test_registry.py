"""The registry: listing (from the families' source and from the registry), aliases, duplicate names, unknown
names, keyword routing, num_classes checks."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import zoo
from zoo.registry import declared_models, get_component, list_components, register_component, register_model

LISTING = """
import json, sys
from zoo import registry
queries = [dict(include_aliases=True), dict(pretrained=True), dict(filter="rtdetr_*", exclude_filters="*akconv*")]
declared = [registry.list_models(**query) for query in queries]
torch_imported = "torch" in sys.modules
registry.load_families()
print(json.dumps([torch_imported, declared, [registry.list_models(**query) for query in queries]]))
"""


def test_list_models_is_sorted_with_wildcards_and_excludes():
    names = zoo.list_models("rtdetr_*")
    assert names == sorted(names)
    assert {"rtdetr_r18vd", "rtdetr_r34vd", "rtdetr_r50vd_m", "rtdetr_r50vd", "rtdetr_r101vd",
            "rtdetr_mobilenetv3_large", "rtdetr_mobilenetv3_small", "rtdetr_mobilenetv2_100"} <= set(names)
    assert "rtdetr_mnv3" not in names  # aliases are listed only on request
    assert "rtdetr_mnv3" in zoo.list_models("rtdetr_*", include_aliases=True)
    assert all("mobilenet" not in n for n in zoo.list_models("rtdetr_*", exclude_filters=["*mobilenet*"]))
    assert zoo.list_models(["rtdetr_r18vd*", "rtdetr_r34*"], exclude_filters="*akconv*") == ["rtdetr_r18vd", "rtdetr_r34vd"]
    assert {"mobilenetv3_large_100", "mobilenetv3_small_100", "mobilenetv2_100"} <= set(zoo.list_models("mobilenet*"))


def test_listing_reads_the_source_and_equals_the_registry():
    """A fresh process lists models from the families' ``@register_model`` declarations, without importing torch,
    and gets exactly what the imported families register. If this fails, a family registers a model in a way
    :func:`declared_models` cannot read: write it as a literal decorator."""
    done = subprocess.run([sys.executable, "-c", LISTING], capture_output=True, text=True, timeout=300)
    torch_imported, declared, registered = json.loads(done.stdout.strip().splitlines()[-1])
    assert not torch_imported
    assert declared == registered
    assert "rtdetr_mnv3" in declared[0] and "rtdetr_r18vd.coco" in declared[1]


def test_declared_models_reads_literal_decorators_and_refuses_anything_else(tmp_path):
    (tmp_path / "family").mkdir()
    (tmp_path / "family" / "model.py").write_text(
        "from zoo.registry import register_model\n"
        "@register_model\ndef plain(**kwargs): ...\n"
        "@register_model(name='named', aliases=('alias_a', 'alias_b'))\ndef builder(**kwargs): ...\n")
    (tmp_path / "other.py").write_text("import zoo\n@zoo.register_model(aliases=['short'])\ndef dotted(): ...\n")
    (tmp_path / "unrelated.py").write_text("def register(): ...\n")
    assert declared_models(tmp_path) == {
        "plain": (), "named": ("alias_a", "alias_b"), "dotted": ("short",)}
    unreadable = {
        "a call": "for n in ('x', 'y'):\n    register_model(lambda: None, name=n)\n",
        "a renamed import": "from zoo.registry import register_model as reg\n@reg\ndef m(): ...\n",
        "a computed name": "NAME = 'm'\n@register_model(name=NAME)\ndef m(): ...\n",
        "a positional argument": "@register_model(None)\ndef m(): ...\n",
        "an unknown keyword": "@register_model(names=('m',))\ndef m(): ...\n",
        "a nested function": "def make():\n    @register_model\n    def m(): ...\n",
    }
    for what, source in unreadable.items():
        (tmp_path / "dynamic.py").write_text(source)
        assert declared_models(tmp_path) is None, what
    (tmp_path / "none").mkdir()
    assert declared_models(tmp_path / "none") is None  # no source (an install without .py files): import instead


def test_alias_builds_the_same_architecture():
    assert zoo.is_model("rtdetr_mnv3") and zoo.is_model("rtdetr_mobilenetv3_large")
    model = zoo.create_model("rtdetr_mnv3", num_classes=3)
    assert model.config["architecture"] == "rtdetr_mobilenetv3_large"


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValueError, match="rtdetr_r18vd"):
        zoo.create_model("rtdetr_r18")
    with pytest.raises(KeyError, match="presnet"):
        get_component("backbone", "presnett")


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda **kw: None, name="rtdetr_r18vd")
    with pytest.raises(ValueError, match="already registered"):
        register_component("backbone", "presnet")(object)
    with pytest.raises(ValueError, match="unknown component kind"):
        register_component("neck")


def test_components_by_kind():
    assert {"presnet", "timm"} <= set(list_components("backbone"))
    assert "hybrid" in list_components("encoder") and "rtdetr" in list_components("decoder")
    assert {"csp_rep", "conv_bn_act"} <= set(list_components("block"))


def test_keyword_overrides_reach_the_right_component():
    model = zoo.create_model("rtdetr_r18vd", num_queries=100, eval_idx=1, num_decoder_layers=4,
                             encoder={"expansion": 1.0}, num_classes=5)
    args = model.config["model_args"]
    assert args["decoder"]["num_queries"] == 100 and model.decoder.num_queries == 100
    assert args["decoder"]["eval_idx"] == 1 and len(model.decoder.decoder.layers) == 4
    assert args["encoder"]["expansion"] == 1.0 and args["num_classes"] == 5
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 256, 256))["pred_logits"].shape == (1, 100, 5)


def test_ambiguous_and_unknown_keywords_are_errors():
    with pytest.raises(TypeError, match="several components"):
        zoo.create_model("rtdetr_r18vd", dim_feedforward=512)  # encoder and decoder both have it
    with pytest.raises(TypeError, match="unexpected argument 'num_querys'"):
        zoo.create_model("rtdetr_r18vd", num_querys=100)


@pytest.mark.parametrize("bad", [3.0, "80", True, [3], -1, 0])
def test_num_classes_must_be_a_positive_int(bad):
    with pytest.raises((TypeError, ValueError), match="num_classes"):
        zoo.create_model("rtdetr_r18vd", num_classes=bad)


def test_classifiers_are_built_through_timm():
    model = zoo.create_model("mobilenetv3_small_100", num_classes=10).eval()
    assert model.config == {"architecture": "mobilenetv3_small_100", "model_args": {"num_classes": 10}}
    with torch.no_grad():
        assert model(torch.rand(1, 3, 224, 224)).shape == (1, 10)
