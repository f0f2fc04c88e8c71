"""Hub test fixtures: one local Hub (olah) and one upload server per session, a fresh cache and manifest per test.

Nothing here reaches the internet: HF_ENDPOINT points at olah on 127.0.0.1, which serves git repos the tests create.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from local_hub import ARCH, LocalHub, UploadServer, manifest_entry, tiny_rtdetr_args


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory):
    hub = LocalHub(tmp_path_factory.mktemp("local-hub")).start()
    yield hub
    hub.stop()


@pytest.fixture(scope="session")
def upload_server(local_hub):
    server = UploadServer(local_hub).start()
    yield server
    server.stop()


@pytest.fixture
def hub_env(local_hub, tmp_path, monkeypatch):
    """Point zoo and huggingface_hub at the local Hub with empty Hub and zoo caches; returns the Hub cache."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_ENDPOINT", local_hub.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "zoo-cache"))  # a fresh lock file and hash memo per test
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ZOO_VERIFY_CACHE", "ZOO_WEIGHTS_MANIFEST"):
        monkeypatch.delenv(name, raising=False)
    return cache


@pytest.fixture
def use_manifest(tmp_path, monkeypatch):
    """``use_manifest({"arch.tag": entry, ...})`` writes a manifest and makes zoo load it."""
    def write(entries: dict) -> Path:
        path = tmp_path / f"manifest-{len(list(tmp_path.glob('manifest-*.json')))}.json"
        path.write_text(json.dumps({"schema_version": 1, "weights": entries}))
        monkeypatch.setenv("ZOO_WEIGHTS_MANIFEST", str(path))
        return path
    return write


@pytest.fixture
def repo_id(request) -> str:
    """A repo name unique to the test (the Hub lives for the whole session)."""
    return "zoo-tests/" + re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:80]


@dataclass
class TinyWeights:
    model: torch.nn.Module
    path: Path
    sha256: str
    size: int

    def entry(self, repo_id: str, **overrides) -> dict:
        """A manifest entry for these weights in ``repo_id`` (zoo format, tiny model_args)."""
        args = dict(sha256=self.sha256, size=self.size, model_args=tiny_rtdetr_args(),
                    label_names=["person", "car", "dog"])
        return manifest_entry(repo_id, **{**args, **overrides})


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> list[TinyWeights]:
    """Two different tiny 3-class RT-DETRs, saved as zoo-format safetensors."""
    from safetensors.torch import save_file

    import zoo
    from zoo.weights.download import sha256_file

    folder = tmp_path_factory.mktemp("tiny-weights")
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = zoo.create_model(ARCH, num_classes=3, **tiny_rtdetr_args()).eval()
        with torch.no_grad():  # break the symmetric default init of the heads so that every row differs
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        path = folder / f"tiny{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        out.append(TinyWeights(model, path, sha256_file(path), path.stat().st_size))
    return out

