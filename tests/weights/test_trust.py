"""Trust: files without a manifest sha256 are checked against the Hub's LFS sha256 and locked on first use;
``zoo weights lock`` pins the manifest; ``local-dir:`` folders are held to the hashes save_pretrained recorded."""
from __future__ import annotations

import json
import logging

import pytest
from local_hub import ARCH, assert_same_state

import zoo
from zoo.cli import main
from zoo.weights.download import WeightsIntegrityError, cached_file, fetch_file, sha256_file
from zoo.weights.hub_metadata import git_blob_sha1, hub_file_info
from zoo.weights.lock import weights_lock
from zoo.weights.manifest import HubFile, load_manifest
from zoo.weights.pin import manifest_json


def _flip_last_byte(path) -> None:
    with open(path, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))


def _third_party(weights, repo_id: str) -> dict:
    """A manifest entry without sha256 and size (allowed for third-party layouts only; a zoo-layout file loads
    under any declared layout)."""
    return weights.entry(repo_id, sha256=None, size=None, fmt="transformers-rtdetr")


def test_hub_serves_the_lfs_metadata_huggingface_hub_reads(local_hub, hub_env, tiny_weights, repo_id):
    """As on the Hub: an LFS file's sha256 and size in X-Linked-Etag / X-Linked-Size, the commit in X-Repo-Commit;
    a file stored in git has its git blob id as etag."""
    a = tiny_weights[0]
    commit = local_hub.commit(repo_id, {"model.safetensors": a.path, "config.json": "{}"})
    info = hub_file_info(repo_id, "model.safetensors", "main", local_hub.endpoint)
    assert (info.commit, info.sha256, info.git_sha1, info.size) == (commit, a.sha256, None, a.size)
    config = local_hub.repo_dir(repo_id) / "config.json"
    info = hub_file_info(repo_id, "config.json", "main", local_hub.endpoint)
    assert (info.sha256, info.git_sha1, info.size) == (None, git_blob_sha1(config), 2)


def test_first_use_is_checked_against_the_hub_and_a_changed_file_is_refused(
        local_hub, hub_env, use_manifest, tiny_weights, repo_id, capsys):
    a, b = tiny_weights
    first = local_hub.commit(repo_id, {"model.safetensors": a.path})
    use_manifest({f"{ARCH}.main": _third_party(a, repo_id)})
    name = f"{ARCH}.main"
    hub = load_manifest().entries[name].hub
    assert_same_state(zoo.create_model(name), a.model)
    record = weights_lock().get(repo_id, "model.safetensors", "main")
    assert (record.commit, record.sha256, record.size, record.checked) == (first, a.sha256, a.size, "hub")

    second = local_hub.commit(repo_id, {"model.safetensors": b.path}, message="new weights on main")
    refused = (rf"(?s)changed upstream: it is now commit {second}, sha256 {b.sha256}.*first used commit {first}, "
               rf"sha256 {a.sha256}.*`zoo weights trust {name}`")
    with pytest.raises(WeightsIntegrityError, match=refused):  # the download
        zoo.create_model(name)
    with pytest.raises(WeightsIntegrityError, match=refused):  # and the cached file: refused every time
        fetch_file(hub, name=name)
    assert cached_file(hub) is not None  # a valid upstream file: kept in the cache, but not used

    assert main(["weights", "trust", name]) == 0
    assert f"forgot commit {first}" in capsys.readouterr().out
    assert sha256_file(fetch_file(hub, name=name)) == b.sha256
    assert weights_lock().get(repo_id, "model.safetensors", "main").commit == second
    assert main(["weights", "trust", name, "hf-hub:zoo-tests/never-used"]) == 0
    assert main(["weights", "trust", "hf-hub:zoo-tests/never-used"]) == 1


def test_a_file_the_hub_does_not_vouch_for_is_removed(local_hub, hub_env, tiny_weights, repo_id):
    """A server whose LFS object differs from its own LFS sha256 (same size, one byte): refused and removed."""
    a = tiny_weights[0]
    local_hub.commit(repo_id, {"model.safetensors": a.path})
    _flip_last_byte(local_hub.lfs_object(repo_id, a.sha256))
    hub = HubFile(repo_id, "main", "model.safetensors", None, None)
    with pytest.raises(WeightsIntegrityError, match=rf"does not match the Hub's metadata: sha256 [0-9a-f]{{64}}, "
                                                    rf"the Hub's LFS sha256 is {a.sha256}"):
        fetch_file(hub, name="tampered")
    assert cached_file(hub) is None and weights_lock().get(repo_id, "model.safetensors", "main") is None


def test_a_damaged_cache_file_is_refused_and_downloaded_again(local_hub, hub_env, tiny_weights, repo_id):
    a = tiny_weights[0]
    local_hub.commit(repo_id, {"model.safetensors": a.path})
    hub = HubFile(repo_id, "main", "model.safetensors", None, None)
    _flip_last_byte(fetch_file(hub).resolve())
    with pytest.raises(WeightsIntegrityError, match=rf"not the file zoo first used \(commit [0-9a-f]{{40}}, "
                                                    rf"sha256 {a.sha256}.*damaged in the cache"):
        fetch_file(hub)
    assert sha256_file(fetch_file(hub)) == a.sha256


def test_weights_stored_in_git_are_checked_by_their_blob_id(local_hub, hub_env, tiny_weights, repo_id):
    a = tiny_weights[0]
    local_hub.commit(repo_id, {"model.safetensors": a.path.read_bytes()}, lfs=False)
    path = fetch_file(HubFile(repo_id, "main", "model.safetensors", None, None))
    assert sha256_file(path) == a.sha256
    assert weights_lock().get(repo_id, "model.safetensors", "main").checked == "hub"


def test_offline_first_use_is_recorded_as_found(local_hub, hub_env, tiny_weights, repo_id, monkeypatch, caplog):
    a, b = tiny_weights
    local_hub.commit(repo_id, {"model.safetensors": a.path})
    hub = HubFile(repo_id, "main", "model.safetensors", None, None)
    fetch_file(hub)
    weights_lock().forget(lambda r: True)  # as if the file had been cached before zoo locked anything
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING, logger="zoo.weights"):
        fetch_file(hub)
    assert "without reaching the Hub, so it is not checked" in caplog.text
    assert weights_lock().get(repo_id, "model.safetensors", "main").checked == "cache"


def test_zoo_weights_lock_pins_the_manifest(local_hub, hub_env, use_manifest, tiny_weights, repo_id, capsys):
    a, b = tiny_weights
    commit_a = local_hub.commit(repo_id + "-a", {"model.safetensors": a.path})
    local_hub.commit(repo_id + "-b", {"model.safetensors": b.path})
    wrong = b.entry(repo_id + "-b", sha256=a.sha256, size=b.size)  # records a sha256 the Hub's file does not have
    path = use_manifest({f"{ARCH}.a": _third_party(a, repo_id + "-a"), f"{ARCH}.b": wrong})
    path.write_text(manifest_json(json.loads(path.read_text())))
    before = json.loads(path.read_text())

    assert main(["weights", "lock", f"{ARCH}.*"]) == 1
    out = capsys.readouterr().out
    assert f"{ARCH}.a: pinned: main, no sha256 -> commit {commit_a}, sha256 {a.sha256}, {a.size} bytes" in out
    assert f"{ARCH}.b: error: " in out and f"has sha256 {b.sha256}, but the manifest records {a.sha256}" in out
    after = json.loads(path.read_text())
    assert after["weights"][f"{ARCH}.a"]["hub"] == {"repo_id": repo_id + "-a", "revision": commit_a,
                                                    "filename": "model.safetensors", "sha256": a.sha256,
                                                    "size": a.size}
    assert after["weights"][f"{ARCH}.b"] == before["weights"][f"{ARCH}.b"]  # left as it was
    before["weights"][f"{ARCH}.a"]["hub"] = after["weights"][f"{ARCH}.a"]["hub"]
    assert after == before and path.read_text() == manifest_json(after)  # nothing else changed, same layout
    assert load_manifest().entries[f"{ARCH}.a"].hub.revision == commit_a

    local_hub.commit(repo_id + "-a", {"model.safetensors": b.path})  # main moves on; the pin holds
    assert_same_state(zoo.create_model(f"{ARCH}.a"), a.model)
    assert main(["weights", "lock", f"{ARCH}.a"]) == 0
    assert f"{ARCH}.a: unchanged: commit {commit_a}" in capsys.readouterr().out


def test_the_shipped_manifest_keeps_its_layout():
    from zoo.weights.manifest import manifest_path

    text = manifest_path().read_text(encoding="utf-8")
    assert manifest_json(json.loads(text)) == text


def test_local_dir_verifies_every_recorded_file(tmp_path, tiny_weights, caplog):
    folder = tmp_path / "model"
    zoo.save_pretrained(tiny_weights[0].model, folder)
    config = json.loads((folder / "config.json").read_text())
    weights = folder / "model.safetensors"
    assert config["files"] == {"model.safetensors": {"sha256": sha256_file(weights),
                                                     "size": weights.stat().st_size}}
    assert_same_state(zoo.create_model(f"local-dir:{folder}"), tiny_weights[0].model)
    _flip_last_byte(weights)  # same size, one byte: only the sha256 sees it
    with pytest.raises(WeightsIntegrityError, match=rf"{weights} does not match the sha256 and size recorded in its "
                                                    rf"config.json: sha256 [0-9a-f]{{64}}, expected "
                                                    rf"{config['files']['model.safetensors']['sha256']}"):
        zoo.create_model(f"local-dir:{folder}")
    assert zoo.create_model(f"local-dir:{folder}", verify_cache=False)  # opted out: sizes only

    del config["files"]  # a folder that records no hash loads, and says so
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="zoo.weights"):
        model = zoo.create_model(f"local-dir:{folder}")
    assert "records no sha256, so it is loaded unverified" in caplog.text
    assert any("loaded unverified" in note for note in model.load_report.notes)


def test_a_damaged_lock_file_is_an_error_not_a_fresh_start(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path))
    (tmp_path / "weights.lock.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"weights.lock.json is not valid JSON .*delete it to start afresh"):
        weights_lock().get("org/repo", "model.safetensors", "main")


def test_a_wrong_lock_record_says_so_and_keeps_the_file(local_hub, hub_env, tiny_weights, repo_id, capsys):
    """Issue 21 item 6: a lock record with another sha256 made every load download, compare, delete and say the file
    was "damaged in the cache". The Hub vouches for the file: the record is wrong; point at `zoo weights trust`."""
    a = tiny_weights[0]
    local_hub.commit(repo_id, {"model.safetensors": a.path})
    hub = HubFile(repo_id, "main", "model.safetensors", None, None)
    fetch_file(hub, name=f"hf-hub:{repo_id}")
    with weights_lock().store.update() as data:
        (record,) = data["files"].values()
        record["sha256"] = "0" * 64
    for _ in range(2):  # the cached file, and again: no loop of downloads
        with pytest.raises(WeightsIntegrityError, match=rf"(?s)lock record disagrees with the Hub.*"
                                                        rf"`zoo weights trust hf-hub:{repo_id}`"):
            fetch_file(hub, name=f"hf-hub:{repo_id}")
        assert cached_file(hub) is not None  # the good file is kept
    assert main(["weights", "trust", f"hf-hub:{repo_id}"]) == 0
    assert sha256_file(fetch_file(hub)) == a.sha256


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.bin", "sub/../../outside.bin"])
def test_local_dir_files_outside_the_folder_are_refused(tmp_path, tiny_weights, name):
    """Issue 21 item 7: a config.json 'files' entry naming /etc/passwd made zoo read and hash it (and print the hash)."""
    from zoo.weights.checkpoint import CheckpointError

    folder = tmp_path / "model"
    zoo.save_pretrained(tiny_weights[0].model, folder)
    (tmp_path / "outside.bin").write_bytes(b"secret")
    config = json.loads((folder / "config.json").read_text())
    config["files"][name] = {"sha256": "0" * 64, "size": 6}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="outside the folder") as info:
        zoo.create_model(f"local-dir:{folder}")
    assert sha256_file(tmp_path / "outside.bin") not in str(info.value)
