"""An unreachable Hub with nothing cached fails at once with the offline hint: one connection attempt, not
huggingface_hub's retries (about 25 s of back-off)."""
from __future__ import annotations

import socket
import threading

import pytest

from zoo.weights.download import WeightsNotCachedError, fetch_file
from zoo.weights.manifest import HubFile


@pytest.fixture
def dropping_server():
    """A TCP server that accepts connections and closes them at once (a broken network path); counts them."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    count, stop = [0], threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            count[0] += 1
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", count
    stop.set()
    thread.join()
    server.close()


def test_unreachable_hub_fails_fast_with_the_offline_hint(dropping_server, tmp_path, monkeypatch):
    endpoint, connections = dropping_server
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(WeightsNotCachedError) as info:
        fetch_file(HubFile("org/repo", "main", "model.safetensors", None, None), name="org/repo")
    message = str(info.value)
    assert "could not be reached" in message and "HF_HUB_OFFLINE=1" in message and "zoo weights download" in message
    assert connections[0] <= 2, connections  # huggingface_hub alone retries with back-off, then raises its own error


def test_bundled_weights_touch_neither_network_nor_cache(dropping_server, tmp_path, monkeypatch):
    import zoo

    endpoint, connections = dropping_server
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where a lock would go if the cache were read-only
    monkeypatch.setattr("tempfile.tempdir", None)
    model = zoo.create_model("rtdetr_mobilenetv3_small.shapes_demo")
    assert model.pretrained_cfg["weights"] == "rtdetr_mobilenetv3_small.shapes_demo"
    assert connections[0] == 0 and list(tmp_path.iterdir()) == [tmp_path / "tmp"]
    assert list((tmp_path / "tmp").iterdir()) == []
