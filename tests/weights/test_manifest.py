"""The shipped weights_manifest.json: schema, required upstream entries, consistency with the registry."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import zoo
from zoo.weights.download import sha256_file
from zoo.weights.manifest import LABEL_SET_SIZES, LABEL_SETS, ManifestError, load_manifest, manifest_path, validate_manifest

REPO = Path(__file__).resolve().parents[2]

PEKINGU = ["rtdetr_r18vd", "rtdetr_r34vd", "rtdetr_r50vd", "rtdetr_r101vd", "rtdetr_r18vd_coco_o365",
           "rtdetr_r50vd_coco_o365", "rtdetr_r101vd_coco_o365", "rtdetr_v2_r18vd", "rtdetr_v2_r34vd",
           "rtdetr_v2_r50vd", "rtdetr_v2_r101vd"]
FACEBOOK = {"detr-resnet-50": (42.0, 62.4, 41.3), "detr-resnet-50-dc5": (43.3, 63.1, 41.3),
            "detr-resnet-101": (43.5, 63.8, 60.2), "detr-resnet-101-dc5": (44.9, 64.7, 60.2)}
TIMM = ["timm/mobilenetv3_large_100.ra_in1k", "timm/mobilenetv3_small_100.lamb_in1k", "timm/mobilenetv2_100.ra_in1k"]


@pytest.fixture(autouse=True)
def shipped_manifest(monkeypatch):
    monkeypatch.delenv("ZOO_WEIGHTS_MANIFEST", raising=False)


def _data() -> dict:
    return json.loads(manifest_path().read_text())


def test_repo_root_manifest_is_the_packaged_one():
    assert manifest_path() == REPO / "zoo" / "weights_manifest.json"
    assert (REPO / "weights_manifest.json").read_bytes() == manifest_path().read_bytes()


def test_shipped_manifest_is_valid():
    assert validate_manifest(_data()) == []
    assert len(load_manifest().entries) == 49  # 28 + 9 LW-DETR / RF-DETR + 8 DEIMv2 + 4 D-FINE Objects365


def test_upstream_entries():
    m = load_manifest()
    repos = {e.hub_id: e for e in m.entries.values()}
    for repo in PEKINGU:
        e = repos[f"PekingU/{repo}"]
        assert (e.format, e.hub.filename, e.hub.revision, e.num_classes) == (
            "transformers-rtdetr", "model.safetensors", "main", 80)
        assert e.hub.sha256 is None and e.hub.size is None  # third-party, not hashed (the Hub is unreachable here)
    assert m.entries["rtdetr_r18vd.coco"].metric("box_ap") == 46.5
    assert m.entries["rtdetr_r50vd.coco_o365"].metric("box_ap") == 55.3
    assert m.entries["rtdetrv2_r18vd.coco"].hub.repo_id == "PekingU/rtdetr_v2_r18vd"
    for repo, (ap, ap50, params) in FACEBOOK.items():
        e = repos[f"facebook/{repo}"]
        assert (e.format, e.num_classes, e.metric("box_ap"), e.metric("box_ap50"), e.complexity["params_m"]) == (
            "transformers-detr", 91, ap, ap50, params)
    for repo in TIMM:
        e = repos[repo]
        assert (e.format, e.num_classes, e.name) == ("timm", 1000, repo.split("/")[1])
    # the first tag of an architecture is its default
    assert m.resolve("rtdetr_r18vd").name == "rtdetr_r18vd.coco"
    assert m.tags("rtdetr_r18vd") == ["coco", "coco_o365"]


def test_every_metric_has_provenance():
    for e in load_manifest().entries.values():
        assert e.metrics, e.name
        for metric in e.metrics:
            assert metric["provenance"] in ("reported upstream", "measured by zoo") and metric["source"]


def test_label_sets():
    assert {k: len(names()) for k, names in LABEL_SETS.items()} == LABEL_SET_SIZES  # validation counts by these
    assert LABEL_SETS["coco91"]()[1] == "person" and LABEL_SETS["coco91"]()[12] == "N/A"


def test_measured_parameter_counts_match_the_registry():
    """'measured by zoo' parameter counts are exact to 0.5% for the architecture built on the meta device."""
    for e in load_manifest().entries.values():
        if e.complexity["provenance"] != "measured by zoo":
            continue
        with torch.device("meta"):
            model = zoo.create_model(e.architecture, num_classes=e.num_classes, **e.model_args)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert params == pytest.approx(e.complexity["params_m"], rel=5e-3), e.name


def test_unregistered_architectures_do_not_break_listing(tmp_path, monkeypatch):
    """An entry may wait for its architecture (RT-DETRv2 did): listing skips it instead of failing."""
    data = _data()
    data["weights"]["rtdetrv9_r18vd.coco"] = data["weights"]["rtdetr_r18vd.coco"]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv("ZOO_WEIGHTS_MANIFEST", str(path))
    names = zoo.list_models(pretrained=True)
    assert "rtdetr_r18vd.coco_o365" in names and "detr_resnet50.coco" in names
    assert "rtdetrv9_r18vd.coco" in load_manifest().entries and "rtdetrv9_r18vd.coco" not in names
    assert zoo.list_models("rtdetr_r18*", pretrained=True) == ["rtdetr_r18vd.coco", "rtdetr_r18vd.coco_o365"]


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.pop("license"), "missing field 'license'"),
    (lambda e: e.update(licence="mit"), "unknown field 'licence'"),
    (lambda e: e["hub"].update(sha256="abc", size=3), "64 lowercase hex"),
    (lambda e: e["hub"].update(sha256="0" * 64), "give both sha256 and size"),
    (lambda e: e.update(format="zoo"), "must record sha256 and size"),
    (lambda e: e.update(num_classes=81), "80 label names for num_classes=81"),
    (lambda e: e.update(format="Official RT-DETR"), "the name of a layout a model family declares"),
    (lambda e: e["metrics"][0].update(provenance="trust me"), "provenance"),
    (lambda e: e["preprocessing"].update(input_size=[640, 640]), "[3, height, width]"),
    (lambda e: e["hub"].update(repo_id="no-org"), "org/name"),
])
def test_validation_errors_name_entry_and_field(mutate, message):
    data = _data()
    entry = copy.deepcopy(data["weights"]["rtdetr_r18vd.coco"])
    mutate(entry)
    data["weights"] = {"rtdetr_r18vd.coco": entry}
    errors = validate_manifest(data)
    assert any(message in e and e.startswith("rtdetr_r18vd.coco") for e in errors), errors


DEMO = "rtdetr_mobilenetv3_small.shapes_demo"


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.update(hub={"repo_id": "a/b", "revision": "main", "filename": "m.safetensors", "sha256": None,
                             "size": None}), "exactly one of 'hub'"),
    (lambda e: e.pop("package"), "exactly one of 'hub'"),
    (lambda e: e["package"].update(path="../../etc/passwd"), "relative path inside the zoo package"),
    (lambda e: e["package"].update(path="/abs/model.safetensors"), "relative path inside the zoo package"),
    (lambda e: e["package"].update(sha256=None), "64 lowercase hex"),
    (lambda e: e["package"].pop("size"), "missing field 'size'"),
    (lambda e: e.update(default="no"), "true or false"),
])
def test_package_entry_validation(mutate, message):
    data = _data()
    entry = copy.deepcopy(data["weights"][DEMO])
    mutate(entry)
    data["weights"] = {DEMO: entry}
    errors = validate_manifest(data)
    assert any(message in e and e.startswith(DEMO) for e in errors), errors


def test_demo_entry_is_in_the_package_and_never_the_default():
    m = load_manifest()
    entry = m.entries[DEMO]
    assert entry.hub is None and entry.hub_id is None and entry.where == "zoo/assets/shapes_demo/model.safetensors"
    path = entry.package.local_path()
    assert path == REPO / "zoo" / "assets" / "shapes_demo" / "model.safetensors"
    assert (path.stat().st_size, entry.sha256) == (entry.package.size, sha256_file(path))
    # the only weights of rtdetr_mobilenetv3_small are a narrow demo model: pretrained=True must not pick them
    assert m.default_tag("rtdetr_mobilenetv3_small") is None and m.tags("rtdetr_mobilenetv3_small") == ["shapes_demo"]
    with pytest.raises(KeyError, match="no default weights.*rtdetr_mobilenetv3_small.shapes_demo"):
        m.resolve("rtdetr_mobilenetv3_small")
    with pytest.raises(KeyError, match="no default pretrained weights.*must be named"):
        zoo.create_model("rtdetr_mobilenetv3_small", pretrained=True)
    assert m.resolve("rtdetr_mobilenetv3_small", "shapes_demo") is entry
    assert m.default_tag("rtdetr_r18vd") == "coco"


def test_bad_names_and_files(tmp_path, monkeypatch):
    data = _data()
    data["weights"] = {"RT-DETR": data["weights"]["rtdetr_r18vd.coco"]}
    assert any("architecture.tag" in e for e in validate_manifest(data))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    monkeypatch.setenv("ZOO_WEIGHTS_MANIFEST", str(bad))
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest()
    with pytest.raises(KeyError, match="coco_o365"):
        load_manifest(REPO / "zoo" / "weights_manifest.json").resolve("rtdetr_r18vd", "coco_0365")
