"""save_pretrained / push_to_hub: the files, the model card, and the round trip through a Hub server."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from huggingface_hub import ModelCard
from local_hub import ARCH, assert_same_state

import zoo
from zoo.weights.download import fetch_file, sha256_file
from zoo.weights.manifest import HubFile


def test_push_round_trip(upload_server, hub_env, tiny_weights, repo_id, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_local_test_token")  # the local upload server accepts any token
    model = copy.deepcopy(tiny_weights[0].model)
    model.pretrained_cfg["label_names"] = ["person", "car", "dog"]
    metrics = [{"task": "object-detection", "dataset": "coco-val2017", "metric": "box_ap", "value": 12.5,
                "provenance": "measured by zoo", "source": "zoo evaluate"}]
    first = zoo.push_to_hub(model, repo_id, endpoint=upload_server.endpoint, metrics=metrics)
    # downloads come from olah (HF_ENDPOINT), which serves what the upload server committed
    loaded = zoo.create_model(f"hf-hub:{repo_id}").eval()
    assert_same_state(loaded, model)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.config == model.config
    assert loaded.pretrained_cfg["label_names"] == ["person", "car", "dog"]
    assert loaded.pretrained_cfg["hf_hub_id"] == repo_id

    # a second push is a new commit; the first stays reachable by its revision
    zoo.push_to_hub(tiny_weights[1].model, repo_id, endpoint=upload_server.endpoint)
    assert_same_state(zoo.create_model(f"hf-hub:{repo_id}"), tiny_weights[1].model)
    assert_same_state(zoo.create_model(f"hf-hub:{repo_id}@{first.oid}"), model)

    card = ModelCard.load(_card_path(repo_id, first.oid))
    assert card.data.library_name == "zoo" and card.data.pipeline_tag == "object-detection"
    result = card.data.eval_results[0]
    assert (result.metric_type, result.metric_value, result.dataset_type) == ("map", 12.5, "detection-datasets/coco")


def _card_path(repo_id, commit):
    return fetch_file(HubFile(repo_id, commit, "README.md", None, None), warn_unhashed=False)


def test_save_pretrained_files(tmp_path, tiny_weights):
    model = tiny_weights[0].model
    model.save_pretrained(tmp_path)  # the Detector method delegates to zoo.save_pretrained
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == ARCH and config["model_args"] == model.config["model_args"]
    assert config["files"]["model.safetensors"] == {"sha256": sha256_file(tmp_path / "model.safetensors"),
                                                    "size": (tmp_path / "model.safetensors").stat().st_size}
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}  # one key: several are written in a random order
    model.save_pretrained(tmp_path / "again")  # same tensors, same bytes (a published sha256 can be reproduced)
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tmp_path / "model.safetensors").read_bytes()
    assert_same_state(zoo.create_model(f"local-dir:{tmp_path}"), model)


def test_model_card_of_manifest_weights(local_hub, hub_env, use_manifest, tiny_weights, repo_id, tmp_path):
    local_hub.commit(repo_id, {"model.safetensors": tiny_weights[0].path})
    use_manifest({f"{ARCH}.tiny": tiny_weights[0].entry(repo_id)})
    exact = zoo.create_model(f"{ARCH}.tiny")
    card = ModelCard(zoo.weights.model_card(exact, repo_id="me/copy"))
    data = card.data
    assert data.base_model == repo_id and data.license == "apache-2.0" and data.datasets == ["coco"]
    assert data.tags == ["zoo", "object-detection", "rtdetr", "safetensors"]
    assert [(r.metric_type, r.metric_value, r.source_name) for r in data.eval_results] == [
        ("map", 1.0, "measured by zoo")]
    text = card.text
    for needle in ('zoo.create_model("hf-hub:me/copy")', "torch.hub.load(", "| parameters | 0.40M |",
                   "## Citation", "arXiv", "DETRs Beat YOLOs", "| classes | 3: person, car, dog |"):
        assert needle in text, needle
    # adapted classes: the upstream metric no longer describes the model, so no model-index
    adapted = zoo.create_model(f"{ARCH}.tiny", num_classes=5)
    data = ModelCard(zoo.weights.model_card(adapted, repo_id="me/five")).data
    assert data.eval_results is None and data.base_model == repo_id
    assert "fine-tuned or adapted from" in zoo.weights.model_card(adapted)


def test_save_requires_a_zoo_model(tmp_path):
    with pytest.raises(TypeError, match="no zoo config"):
        zoo.save_pretrained(torch.nn.Linear(2, 2), tmp_path)


@pytest.mark.parametrize("format", ["zoo", "transformers"])
def test_save_refuses_a_deployed_model(tmp_path, format):
    """A deploy()ed model's state has folded BatchNorms that no model loads: saving it is refused, nothing is
    written, and the message says to save before deploy()."""
    model = zoo.create_model("deimv2_atto").deploy()
    with pytest.raises(ValueError, match=r"deploy\(\)ed.*save it before calling deploy\(\)"):
        model.save_pretrained(tmp_path / "out", format=format)
    assert not (tmp_path / "out").exists()
