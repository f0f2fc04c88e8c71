"""Videos and streams (zoo.data.video, PyAV): per-frame detections equal frame-by-frame predictions on the same
decoded frames, streaming decodes one batch at a time, ``zoo predict`` writes an annotated video with the same frame
count and rate whose frames carry zoo.draw's boxes, plus one JSON line per frame; HTTP streams; clear errors.

The clip is generated here: the bundled shapes demo image, shifted a little per frame, encoded with MPEG-4 Part 2 at
NTSC's 30000/1001 fps (zoo writes H.264, so the reader and the writer are not checked against each other only)."""
import functools
import http.server
import json
import sys
import threading
import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av", reason="videos need PyAV (pip install 'zoo[video]')")

import zoo  # noqa: E402
from zoo.data import video  # noqa: E402

DEMO = "rtdetr_mobilenetv3_small.shapes_demo"
FPS, NUM_FRAMES, SIZE = Fraction(30000, 1001), 12, 192


def _decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    image = np.asarray(Image.open(Path(zoo.__file__).parent / "assets" / "shapes_demo.png").resize((SIZE, SIZE)))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        for i in range(NUM_FRAMES):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(image, 4 * i, axis=1)), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return zoo.create_model(DEMO, pretrained=True).eval()


def _assert_same(a, b):
    assert a.labels.tolist() == b.labels.tolist() and a.label_names == b.label_names
    torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)


def test_stream_equals_frame_by_frame(model, clip, monkeypatch):
    decoded = 0
    frames_of = video.VideoReader.__iter__

    def counting(self):
        nonlocal decoded
        for item in frames_of(self):
            decoded += 1
            yield item

    monkeypatch.setattr(video.VideoReader, "__iter__", counting)
    stream = model.predict(str(clip), stream=True, batch_size=5, score_threshold=0.3)
    assert isinstance(stream, types.GeneratorType)
    first = next(stream)
    assert decoded == 5  # one batch decoded, not the whole video: constant memory
    results = [first, *stream]
    assert decoded == NUM_FRAMES and [r.frame for r in results] == list(range(NUM_FRAMES))
    assert [r.time for r in results] == pytest.approx([i / FPS for i in range(NUM_FRAMES)])
    assert sum(len(r) for r in results) >= 2 * NUM_FRAMES  # the demo finds its shapes in every frame
    for frame, result in zip(_decode(clip), results):
        assert result.image_size == (SIZE, SIZE) and result.source == str(clip)
        _assert_same(result, model.predict(frame, score_threshold=0.3))
    as_list = model.predict(str(clip), batch_size=3, score_threshold=0.3)  # without stream: a list
    assert isinstance(as_list, list) and len(as_list) == NUM_FRAMES
    for a, b in zip(as_list, results):
        _assert_same(a, b)


def test_cli_writes_annotated_video_and_json_lines(model, clip, tmp_path, capsys):
    from zoo.cli import main
    from zoo.engine.draw import draw

    out = tmp_path / "out"
    assert main(["predict", DEMO, str(clip), "--out", str(out), "--batch-size", "5", "--threshold", "0.5"]) == 0
    assert "12 frames at 29.97 fps" in capsys.readouterr().out
    records = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(NUM_FRAMES))
    expected = list(model.predict(str(clip), stream=True, score_threshold=0.5))
    for record, det in zip(records, expected):
        # the command runs the model fused in place with channels-last memory, model.predict a fused copy: the
        # same maths, rounded by other kernels
        want = json.loads(det.to_json())
        assert {k: v for k, v in record.items() if k not in ("boxes", "scores")} == \
            {k: v for k, v in want.items() if k not in ("boxes", "scores")}
        assert torch.allclose(torch.tensor(record["scores"]), torch.tensor(want["scores"]), atol=1e-5, rtol=0)
        assert torch.allclose(torch.tensor(record["boxes"]), torch.tensor(want["boxes"]), atol=1e-3, rtol=0)

    with av.open(str(out / "clip.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == FPS and (stream.width, stream.height) == (SIZE, SIZE)
    written, inputs = _decode(out / "clip.mp4"), _decode(clip)
    assert len(written) == NUM_FRAMES
    luma = np.array([0.299, 0.587, 0.114])  # H.264 4:2:0 keeps luma at full resolution, colour at half
    for k in (0, 7):  # open a written frame: the boxes are there, where zoo.draw puts them
        drawn, plain, out_k = (np.asarray(x, dtype=float) @ luma
                               for x in (draw(inputs[k], expected[k]), inputs[k], written[k]))
        lines = np.abs(drawn - plain) > 40  # pixels the drawing changed
        assert lines.sum() > 200
        to_drawn, to_plain = np.abs(out_k - drawn)[lines].mean(), np.abs(out_k - plain)[lines].mean()
        assert to_drawn < 12 and to_plain > 4 * to_drawn, (to_drawn, to_plain)


def test_http_stream(model, clip):
    handler = functools.partial(type("Quiet", (http.server.SimpleHTTPRequestHandler,),
                                     {"log_message": lambda *args: None}), directory=str(clip.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{clip.name}"
        remote = list(model.predict(url, stream=True, score_threshold=0.3))
    finally:
        server.shutdown()
    local = model.predict(str(clip), score_threshold=0.3)
    assert len(remote) == NUM_FRAMES and remote[0].source == url
    for a, b in zip(remote, local):
        _assert_same(a, b)


def test_writer_odd_size(tmp_path):
    frames = [np.full((95, 97, 3), 40 * i, np.uint8) for i in range(5)]
    with video.VideoWriter(tmp_path / "odd.mp4", Fraction(25), 97, 95) as writer:
        for frame in frames:
            writer.write(frame)
    decoded = _decode(tmp_path / "odd.mp4")
    assert len(decoded) == 5 and decoded[0].shape == (95, 97, 3)
    assert np.abs(np.stack(decoded).astype(float) - np.stack(frames)).max() <= 3


def test_errors(model, clip, tmp_path, monkeypatch):
    assert video.is_video_source(str(clip)) and video.is_video_source(0) and video.is_video_source("rtsp://cam/1")
    assert not video.is_video_source("image.png") and not video.is_video_source(np.zeros((4, 4, 3)))
    with pytest.raises(FileNotFoundError, match="video not found"):
        model.predict(str(tmp_path / "missing.mp4"), stream=True)
    (tmp_path / "fake.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="cannot open video"):
        model.predict(str(tmp_path / "fake.mp4"))
    if sys.platform.startswith("linux") and not Path("/dev/video9").exists():
        with pytest.raises(ValueError, match=r"webcam 9 \(/dev/video9\)"):
            model.predict(9, stream=True)
    with pytest.raises(ValueError, match="stream=True is for a video"):
        model.predict(np.zeros((8, 8, 3), np.uint8), stream=True)
    with pytest.raises(ValueError, match="one at a time"):
        model.predict([str(clip), str(clip)])
    from zoo.cli import main

    assert main(["predict", DEMO, str(clip), "--out", str(clip.parent)]) == 1  # would overwrite its input
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    with pytest.raises(ImportError, match=r"pip install 'zoo\[video\]'"):
        model.predict(str(clip))


def test_a_stream_that_never_answers_times_out_and_says_so(model, tmp_path, capsys):
    """Issue 21 item 13: an RTSP server that accepts and never answers took ~30 s and reported "Invalid data found"."""
    import socket
    import time

    from zoo.cli import main

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)  # connections are accepted by the kernel and never answered
    url = f"rtsp://127.0.0.1:{server.getsockname()[1]}/live"
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no answer within 1 s"):
            video.VideoReader(url, timeout=1)
        assert time.monotonic() - start < 15
        assert main(["predict", DEMO, url, "--timeout", "1", "--out", str(tmp_path)]) == 1
        assert "no answer within 1 s" in capsys.readouterr().err
    finally:
        server.close()
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        video.VideoReader(url, timeout=0)
