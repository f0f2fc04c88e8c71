"""hubconf.py through torch.hub: a local checkout (source="local") and a GitHub-style cache directory."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from local_hub import ARCH, assert_same_state

import zoo

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def github_dir(tmp_path, monkeypatch):
    """$TORCH_HOME/hub/<owner>_<repo>_<ref>, as torch.hub leaves a downloaded GitHub archive."""
    hub_dir = tmp_path / "torch-home" / "hub"
    checkout = hub_dir / "zoo-tests_zoo_main"
    checkout.mkdir(parents=True)
    shutil.copy(REPO / "hubconf.py", checkout)
    shutil.copytree(REPO / "zoo", checkout / "zoo", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # re-read TORCH_HOME
    assert Path(torch.hub.get_dir()) == hub_dir
    return "zoo-tests/zoo:main"


def _detectors() -> set[str]:
    """Every registered name (and alias) outside the ImageNet classifier family."""
    from zoo.registry import model_entrypoint

    return {n for n in zoo.list_models(include_aliases=True)
            if model_entrypoint(n).__module__ != "zoo.models.classifiers"}


def test_list_and_help(github_dir, monkeypatch):
    monkeypatch.delenv("ZOO_WEIGHTS_MANIFEST", raising=False)
    entries = set(torch.hub.list(github_dir, trust_repo=True))
    assert entries == _detectors()  # every detector and alias, no classifier, no helper
    assert {"rtdetr_mnv3", "rtdetr_r18vd", "detr_resnet50"} <= entries
    doc = torch.hub.help(github_dir, "rtdetr_r18vd", trust_repo=True)
    for needle in ("RT-DETR R18-vd", "pretrained=True loads 'coco'", "PekingU/rtdetr_r18vd@main",
                   "box_ap 46.5 (reported upstream)", "20.184M params", "coco_o365", "num_classes"):
        assert needle in doc, needle
    alias = torch.hub.help(github_dir, "rtdetr_mnv3", trust_repo=True)
    assert "Alias of rtdetr_mobilenetv3_large" in alias
    assert "pretrained_backbone=True loads the ImageNet weights mobilenetv3_large_100.ra_in1k" in alias


def test_load_pretrained_from_local_hub(local_hub, hub_env, use_manifest, tiny_weights, repo_id, github_dir):
    local_hub.commit(repo_id, {"model.safetensors": tiny_weights[0].path})
    use_manifest({f"{ARCH}.tiny": tiny_weights[0].entry(repo_id)})
    local = torch.hub.load(str(REPO), ARCH, source="local", pretrained=True)
    assert_same_state(local, tiny_weights[0].model)
    github = torch.hub.load(github_dir, ARCH, trust_repo=True, pretrained="tiny", num_classes=5)
    assert github.num_classes == 5 and github.pretrained_cfg["base_weights"] == f"{ARCH}.tiny"
    assert_same_state(github.backbone, tiny_weights[0].model.backbone)
