"""``zoo weights list|info|download|verify|check|bundle`` (``lock`` and ``trust``: test_trust.py)."""
from __future__ import annotations

import json

import pytest
from local_hub import ARCH, assert_same_state

from zoo.cli import main
from zoo.weights.lock import weights_lock
from zoo.weights.manifest import manifest_path


@pytest.fixture
def shipped(monkeypatch):
    monkeypatch.delenv("ZOO_WEIGHTS_MANIFEST", raising=False)


def test_list_info_check_on_the_shipped_manifest(shipped, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert main(["weights", "list", "rtdetr*"]) == 0
    out = capsys.readouterr().out
    assert "rtdetr_r18vd.coco " in out and "PekingU/rtdetr_r18vd@main" in out and "detr_resnet50" not in out
    assert main(["weights", "info", "rtdetr_r18vd", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "rtdetr_r18vd.coco" and info["hub"]["sha256"] is None
    assert info["loads_from"].endswith(f"/PekingU/rtdetr_r18vd/resolve/main/model.safetensors (into {tmp_path})")
    assert main(["weights", "check"]) == 0
    out = capsys.readouterr().out
    assert "detr_resnet101_dc5.coco: ok" in out and "49 entries" in out and "0 with errors" in out
    assert "rtdetr_mobilenetv3_small.shapes_demo: ok" in out
    assert main(["weights", "info", "rtdetr_r18vd.coco_0365"]) == 1
    assert "Did you mean coco_o365" in capsys.readouterr().err


def test_entries_waiting_for_their_architecture(tmp_path, capsys, monkeypatch):
    data = json.loads(manifest_path().read_text())
    data["weights"] = {"rtdetrv9_r18vd.coco": data["weights"]["rtdetr_r18vd.coco"]}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv("ZOO_WEIGHTS_MANIFEST", str(path))
    assert main(["weights", "list"]) == 0
    assert "architecture not registered" in capsys.readouterr().out
    assert main(["weights", "check"]) == 0
    assert "rtdetrv9_r18vd.coco: architecture not registered" in capsys.readouterr().out
    assert main(["weights", "check", "--strict"]) == 1


def test_check_reports_schema_and_registry_errors(tmp_path, capsys):
    data = json.loads(manifest_path().read_text())
    entry = data["weights"]["rtdetr_r18vd.coco"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 1, "weights": {"rtdetr_r18vd.coco": {**entry, "num_classes": 81}}}))
    assert main(["weights", "check", "--manifest", str(bad)]) == 1
    assert "80 label names for num_classes=81" in capsys.readouterr().out
    wrong = {**entry, "complexity": {**entry["complexity"], "params_m": 30.0}, "format": "transformers-detr"}
    bad.write_text(json.dumps({"schema_version": 1, "weights": {"rtdetr_r18vd.coco": wrong}}))
    assert main(["weights", "check", "--manifest", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "format transformers-detr has no converter for the rtdetr family" in out
    assert "params_m 30.0 but the architecture has 20.184M" in out


def test_download_verify_bundle_then_offline(local_hub, hub_env, use_manifest, tiny_weights, repo_id, tmp_path,
                                             capsys, monkeypatch):
    a = tiny_weights[0]
    local_hub.commit(repo_id, {"model.safetensors": a.path})
    local_hub.commit(repo_id + "-third-party", {"model.safetensors": a.path})
    unhashed = a.entry(repo_id + "-third-party", sha256=None, size=None, fmt="official-rtdetr")
    use_manifest({f"{ARCH}.tiny": a.entry(repo_id), f"{ARCH}.unhashed": unhashed})
    assert main(["weights", "verify"]) == 0
    assert "nothing cached" in capsys.readouterr().out
    assert main(["weights", "download", f"{ARCH}.*"]) == 0
    out = capsys.readouterr().out
    assert f"{ARCH}.tiny: " in out and "sha256 verified" in out and "checked against the Hub's LFS sha256" in out
    assert main(["weights", "verify"]) == 0
    out = capsys.readouterr().out
    assert f"{ARCH}.tiny: ok" in out and f"{ARCH}.unhashed: ok (against the file first used: zoo lock file)" in out
    weights_lock().forget(lambda record: True)
    assert main(["weights", "verify", f"{ARCH}.unhashed"]) == 0
    assert f"not used by zoo yet; the cached file has sha256 {a.sha256}, size {a.size}" in capsys.readouterr().out

    bundle = tmp_path / "bundle"
    assert main(["weights", "bundle", str(bundle), f"{ARCH}.tiny"]) == 0
    assert json.loads((bundle / "zoo-bundle.json").read_text())[f"{ARCH}.tiny"]["sha256"] == a.sha256
    # the offline machine: only the bundle, no Hub
    monkeypatch.setenv("HF_HUB_CACHE", str(bundle))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    import zoo

    assert_same_state(zoo.create_model(f"{ARCH}.tiny"), a.model)
    assert main(["weights", "download", f"{ARCH}.unhashed"]) == 1
    assert "zoo weights bundle DIR" in capsys.readouterr().err

    blob = next((bundle / f"models--{repo_id.replace('/', '--')}" / "blobs").iterdir())
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")  # same size, corrupted
    assert main(["weights", "verify", f"{ARCH}.tiny"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_weights_inside_the_package(shipped, capsys, tmp_path, monkeypatch):
    """The bundled demo weights: listed, described, verified and "downloaded" without any Hub or cache."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    name = "rtdetr_mobilenetv3_small.shapes_demo"
    assert main(["weights", "list", "rtdetr_mobilenetv3_small*", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["name"], row["repo"], row["sha256"], row["cached"]) == (
        name, "zoo/assets/shapes_demo/model.safetensors", "pinned", True)
    assert main(["weights", "info", name, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["default"] is False and "hub" not in info
    assert info["loads_from"] == str(manifest_path().parent / "assets" / "shapes_demo" / "model.safetensors")
    assert main(["weights", "verify", name]) == 0
    assert f"{name}: ok" in capsys.readouterr().out
    assert main(["weights", "download", name]) == 0
    assert "sha256 verified" in capsys.readouterr().out
    assert main(["weights", "info", "rtdetr_mobilenetv3_small"]) == 1
    assert "no default weights" in capsys.readouterr().err


def test_package_file_that_does_not_match_is_refused(shipped, use_manifest):
    """A changed or missing file inside the package is an error that says what to do, never a silent load."""
    import zoo
    from zoo.weights.download import WeightsIntegrityError, WeightsNotFoundError

    entry = json.loads(manifest_path().read_text())["weights"]["rtdetr_mobilenetv3_small.shapes_demo"]
    wrong_hash = {**entry, "package": {**entry["package"], "sha256": "0" * 64}}
    wrong_size = {**entry, "package": {**entry["package"], "size": entry["package"]["size"] + 1}}
    missing = {**entry, "package": {**entry["package"], "path": "assets/shapes_demo/absent.safetensors"}}
    use_manifest({"rtdetr_mobilenetv3_small.hash": wrong_hash, "rtdetr_mobilenetv3_small.size": wrong_size,
                  "rtdetr_mobilenetv3_small.missing": missing})
    with pytest.raises(WeightsIntegrityError, match="sha256 .* expected 0000.*restore it"):
        zoo.create_model("rtdetr_mobilenetv3_small.hash", pretrained=True)
    with pytest.raises(WeightsIntegrityError, match="truncated"):
        zoo.create_model("rtdetr_mobilenetv3_small.size", pretrained=True)
    with pytest.raises(WeightsNotFoundError, match="absent.safetensors .*is missing.*reinstall"):
        zoo.create_model("rtdetr_mobilenetv3_small.missing", pretrained=True)


def test_a_tampered_bundle_is_refused_and_bundles_accumulate(local_hub, hub_env, use_manifest, tiny_weights, repo_id,
                                                            tmp_path, capsys, monkeypatch):
    """Issue 21 items 5 and 8: a bundle of unpinned weights with one flipped byte loaded (the sha256 recorded in
    zoo-bundle.json was never read) and the report claimed a check against the Hub's LFS sha256; a second bundle
    into the same folder dropped the first one's records; a pattern that matched nothing created an empty folder."""
    import zoo
    from zoo.weights.download import WeightsIntegrityError

    a, b = tiny_weights
    local_hub.commit(repo_id + "-a", {"model.safetensors": a.path})
    local_hub.commit(repo_id + "-b", {"model.safetensors": b.path})
    use_manifest({f"{ARCH}.a": a.entry(repo_id + "-a", sha256=None, size=None, fmt="official-rtdetr"),
                  f"{ARCH}.b": b.entry(repo_id + "-b", sha256=None, size=None, fmt="official-rtdetr")})
    bundle = tmp_path / "bundle"
    assert main(["weights", "bundle", str(bundle), "no_such_model*"]) == 1
    assert "no manifest entry matches no_such_model*" in capsys.readouterr().err and not bundle.exists()
    assert main(["weights", "bundle", str(bundle), f"{ARCH}.a"]) == 0
    assert main(["weights", "bundle", str(bundle), f"{ARCH}.b"]) == 0
    records = json.loads((bundle / "zoo-bundle.json").read_text())
    assert {k: v["sha256"] for k, v in records.items()} == {f"{ARCH}.a": a.sha256, f"{ARCH}.b": b.sha256}
    # the offline machine: the bundle, an empty zoo cache, no Hub
    monkeypatch.setenv("HF_HUB_CACHE", str(bundle))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "empty-zoo-cache"))
    model = zoo.create_model(f"{ARCH}.b")
    assert_same_state(model, b.model)
    notes = " ".join(model.load_report.notes)
    assert "verified against the bundle's record" in notes and "LFS" not in notes
    blob = next((bundle / f"models--{repo_id.replace('/', '--')}-a" / "blobs").iterdir())
    blob.write_bytes(blob.read_bytes()[:-1] + bytes([blob.read_bytes()[-1] ^ 0xFF]))  # one byte, same size
    with pytest.raises(WeightsIntegrityError, match=r"does not match the sha256 and size recorded for it in .*"
                                                    r"zoo-bundle.json: sha256 [0-9a-f]{64}, expected " + a.sha256):
        zoo.create_model(f"{ARCH}.a")
