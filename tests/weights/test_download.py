"""Downloads from a real Hub server (olah on 127.0.0.1): tags, revisions, integrity, errors, offline, concurrency."""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest
import torch
from local_hub import ARCH, assert_same_state

import zoo
from zoo.weights.download import (
    WeightsIntegrityError,
    WeightsNotCachedError,
    WeightsNotFoundError,
    cached_file,
    fetch_weights,
    sha256_file,
)
from zoo.weights.lock import weights_lock
from zoo.weights.manifest import load_manifest


def _publish(hub, repo_id, weights, **entry_overrides):
    """Put ``weights`` in ``repo_id`` on the local Hub; returns (commit, manifest entry)."""
    commit = hub.commit(repo_id, {"model.safetensors": weights.path})
    return commit, weights.entry(repo_id, **entry_overrides)


def test_default_and_tagged_downloads(local_hub, hub_env, use_manifest, tiny_weights, repo_id):
    a, b = tiny_weights
    _, entry_a = _publish(local_hub, repo_id + "-a", a)
    _, entry_b = _publish(local_hub, repo_id + "-b", b)
    use_manifest({f"{ARCH}.first": entry_a, f"{ARCH}.second": entry_b})

    default = zoo.create_model(ARCH, pretrained=True)
    assert_same_state(default, a.model)
    assert default.pretrained_cfg["weights"] == f"{ARCH}.first"
    assert default.pretrained_cfg["label_names"] == ["person", "car", "dog"]
    assert_same_state(zoo.create_model(ARCH, pretrained="second"), b.model)
    tagged = zoo.create_model(f"{ARCH}.second")
    assert_same_state(tagged, b.model)
    report = tagged.load_report
    assert report.weights == f"{ARCH}.second" and report.format == "zoo"
    assert len(report.loaded) == len(b.model.state_dict()) and not (report.missing or report.unexpected)
    # the weights are memory-mapped from the cached file, not copied (low-memory load)
    if Path("/proc/self/maps").exists():
        blob = str(cached_file(load_manifest().entries[f"{ARCH}.second"].hub).resolve())
        assert blob in Path("/proc/self/maps").read_text()
    with pytest.raises(KeyError, match="Its tags: first, second"):
        zoo.create_model(ARCH, pretrained="third")


def test_revision_pinning(local_hub, hub_env, use_manifest, tiny_weights, repo_id):
    a, b = tiny_weights
    first, entry = _publish(local_hub, repo_id, a, revision=None)
    local_hub.commit(repo_id, {"model.safetensors": b.path}, message="newer weights")
    entry["hub"]["revision"] = first
    use_manifest({f"{ARCH}.pinned": entry})
    assert_same_state(zoo.create_model(f"{ARCH}.pinned"), a.model)  # main has moved on; the pin holds
    assert_same_state(zoo.create_model(ARCH, pretrained=True), a.model)


def test_sha256_mismatch_raises_and_removes_the_file(local_hub, hub_env, use_manifest, tiny_weights, repo_id):
    a, b = tiny_weights
    _, entry = _publish(local_hub, repo_id, a, sha256=b.sha256, size=a.size)  # a hash that is not the file's
    use_manifest({f"{ARCH}.bad": entry})
    for _ in range(2):  # the bad file is not used again: each attempt downloads and fails afresh
        with pytest.raises(WeightsIntegrityError, match="sha256 .* expected " + b.sha256):
            zoo.create_model(f"{ARCH}.bad")
        assert cached_file(load_manifest().entries[f"{ARCH}.bad"].hub) is None
    blobs = hub_env / f"models--{repo_id.replace('/', '--')}" / "blobs"
    assert not [p for p in blobs.iterdir() if p.is_file()]


def test_truncated_download_and_truncated_cache(local_hub, hub_env, use_manifest, tiny_weights, repo_id, monkeypatch):
    a = tiny_weights[0]
    data = a.path.read_bytes()
    local_hub.commit(repo_id + "-cut", {"model.safetensors": data[: len(data) // 2]})
    _, good = _publish(local_hub, repo_id, a)
    use_manifest({f"{ARCH}.cut": a.entry(repo_id + "-cut"), f"{ARCH}.good": good})
    with pytest.raises(WeightsIntegrityError, match="truncated"):
        zoo.create_model(f"{ARCH}.cut")

    entry = load_manifest().entries[f"{ARCH}.good"]
    path = fetch_weights(entry)
    with open(path.resolve(), "r+b") as f:  # a cache file cut short after the download (full disk, crash)
        f.truncate(a.size - 100)
    with pytest.raises(WeightsIntegrityError, match=r"cached file .*\(truncated\)"):
        fetch_weights(entry)
    assert_same_state(zoo.create_model(f"{ARCH}.good"), a.model)  # removed, so downloaded afresh

    with open(fetch_weights(entry).resolve(), "r+b") as f:  # same size, one byte flipped: only a hash sees it
        f.seek(a.size - 1)
        last = f.read(1)
        f.seek(a.size - 1)
        f.write(bytes([last[0] ^ 0xFF]))
    monkeypatch.setenv("ZOO_VERIFY_CACHE", "0")
    assert fetch_weights(entry)  # opted out of hashing: sizes only
    monkeypatch.delenv("ZOO_VERIFY_CACHE")
    with pytest.raises(WeightsIntegrityError, match="cached file .* sha256"):  # default: written since it was hashed
        fetch_weights(entry)


def test_cache_hits_are_hashed_once_until_written(local_hub, hub_env, use_manifest, tiny_weights, repo_id,
                                                   monkeypatch):
    """A cache hit is hashed when zoo has not hashed the file since it was last written; ZOO_VERIFY_CACHE=1 always."""
    import zoo.weights.hashing as hashing

    a = tiny_weights[0]
    _, entry = _publish(local_hub, repo_id, a)
    use_manifest({f"{ARCH}.good": entry})
    entry = load_manifest().entries[f"{ARCH}.good"]
    hashed = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda path, *args: hashed.append(path) or real(path, *args))
    path = fetch_weights(entry).resolve()
    assert hashed == [path]  # the download
    fetch_weights(entry)
    assert hashed == [path]  # an unchanged cache hit: the remembered hash
    monkeypatch.setenv("ZOO_VERIFY_CACHE", "1")
    fetch_weights(entry)
    assert hashed == [path, path]
    monkeypatch.delenv("ZOO_VERIFY_CACHE")
    os.utime(path)  # written (here: touched) since: hashed again
    fetch_weights(entry)
    assert hashed == [path, path, path]
    monkeypatch.setenv("ZOO_VERIFY_CACHE", "sometimes")
    with pytest.raises(ValueError, match="ZOO_VERIFY_CACHE='sometimes': use 1 .* or 0"):
        fetch_weights(entry)


def test_missing_file_and_unknown_repo(local_hub, hub_env, use_manifest, tiny_weights, repo_id):
    a = tiny_weights[0]
    _publish(local_hub, repo_id, a)
    use_manifest({f"{ARCH}.missing": a.entry(repo_id, filename="weights/missing.safetensors"),
                  f"{ARCH}.norepo": a.entry("zoo-tests/does-not-exist")})
    with pytest.raises(WeightsNotFoundError, match=r"'weights/missing.safetensors' does not exist in .*"
                                                   r"it has: .*model.safetensors"):
        zoo.create_model(f"{ARCH}.missing")
    with pytest.raises(WeightsNotFoundError, match="repository 'zoo-tests/does-not-exist' not found"):
        zoo.create_model(f"{ARCH}.norepo")
    with pytest.raises(WeightsNotFoundError, match="revision 'v9' does not exist"):
        zoo.create_model(f"hf-hub:{repo_id}@v9")


def test_offline_with_and_without_cache(local_hub, hub_env, use_manifest, tiny_weights, repo_id, monkeypatch):
    a = tiny_weights[0]
    _, entry = _publish(local_hub, repo_id, a)
    use_manifest({f"{ARCH}.offline": entry})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotCachedError, match=r"not in the cache .*offline.*zoo weights download "
                                                    rf"{ARCH}.offline"):
        zoo.create_model(f"{ARCH}.offline")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    zoo.create_model(f"{ARCH}.offline")  # prefetch
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: no request may be made
    assert_same_state(zoo.create_model(f"{ARCH}.offline"), a.model)


def _fetch_in_child(entry, start, results) -> None:
    start.wait()  # every process starts downloading at the same moment
    try:
        results.put(str(fetch_weights(entry).resolve()))
    except Exception as exc:  # reported to the parent
        results.put(f"error: {type(exc).__name__}: {exc}")


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork (Linux)")
def test_two_processes_download_at_once(local_hub, hub_env, use_manifest, tiny_weights, repo_id):
    a = tiny_weights[0]
    _, entry = _publish(local_hub, repo_id, a)
    use_manifest({f"{ARCH}.shared": entry})
    entry = load_manifest().entries[f"{ARCH}.shared"]
    ctx = multiprocessing.get_context("fork")  # separate processes, each with its own file lock and HTTP session
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_fetch_in_child, args=(entry, start, results)) for _ in range(3)]
    for p in procs:
        p.start()
    start.set()
    paths = {results.get(timeout=120) for _ in procs}
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0] and len(paths) == 1, paths
    assert Path(paths.pop()).name == a.sha256  # one blob, named by its sha256 (the LFS etag), verified
    assert not list(hub_env.rglob("*.incomplete"))


def _put_in_cache(cache: Path, repo_id: str, files: dict[str, Path], commit: str = "1" * 40) -> None:
    """A huggingface_hub cache entry as a download (or `zoo weights bundle`) leaves it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, source in files.items():
        blob = repo / "blobs" / sha256_file(source)
        blob.parent.mkdir(exist_ok=True)
        shutil.copyfile(source, blob)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def test_unhashed_third_party_transformers_weights(hub_env, monkeypatch, caplog):
    """The shipped manifest's rtdetr_r18vd.coco (PekingU/rtdetr_r18vd, transformers layout, no sha256) from a
    pre-filled offline cache loads exactly like the local file through checkpoint_path (whose outputs tests/models
    checks against transformers). Served by olah, an 80 MB file would only slow the test down."""
    import hf_rtdetr

    monkeypatch.delenv("ZOO_WEIGHTS_MANIFEST", raising=False)
    # a transformers save_pretrained file without transformers' slow initialisation: build on the meta device and
    # fill with random values (the test compares tensors, not outputs)
    monkeypatch.setattr(hf_rtdetr, "calibrate_batch_norms", lambda model, run: None)
    with torch.device("meta"):
        hf = hf_rtdetr.hf_rtdetr("rtdetr_r18vd", num_classes=80)
    hf.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in hf.state_dict().values():
            tensor.normal_() if tensor.is_floating_point() else tensor.zero_()
    hf.save_pretrained(hub_env.parent / "pekingu")
    weights = hub_env.parent / "pekingu" / "model.safetensors"
    _put_in_cache(hub_env, "PekingU/rtdetr_r18vd", {"model.safetensors": weights})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="zoo.weights"):
        model = zoo.create_model("rtdetr_r18vd", pretrained=True)
    assert "not checked against the Hub's sha256 (and has none in the manifest)" in caplog.text
    assert model.load_report.format == "transformers-rtdetr"
    assert any("no sha256 in the manifest" in n for n in model.load_report.notes)
    record = weights_lock().get("PekingU/rtdetr_r18vd", "model.safetensors", "main")  # trust on first use
    assert (record.commit, record.sha256, record.checked) == ("1" * 40, sha256_file(weights), "cache")
    assert model.pretrained_cfg["label_names"][:2] == ["person", "bicycle"]
    # every tensor identical to the checkpoint_path load, so the outputs are too (no forward needed)
    assert_same_state(model, zoo.create_model("rtdetr_r18vd", checkpoint_path=weights))
    # the repo is in the manifest, so hf-hub:PekingU/rtdetr_r18vd loads as that entry
    assert zoo.create_model("hf-hub:PekingU/rtdetr_r18vd").pretrained_cfg["weights"] == "rtdetr_r18vd.coco"
