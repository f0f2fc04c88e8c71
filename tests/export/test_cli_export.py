"""``zoo export``: writes a verified file; usage errors exit 2, bad values exit 1 and leave no file."""
from __future__ import annotations

import onnxruntime as ort
import pytest

from zoo.cli import main
from zoo.export import read_metadata

from export_setup import DEMO

pytestmark = pytest.mark.usefixtures("single_thread")


def test_help():
    with pytest.raises(SystemExit) as info:
        main(["export", "--help"])
    assert info.value.code == 0


def test_export_command(tmp_path, capsys):
    out = tmp_path / "demo.onnx"
    assert main(["export", DEMO, "--output", str(out), "--size", "64", "96", "--dynamic-batch", "--postprocess"]) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime vs eager rtdetr_mobilenetv3_small at 2x3x64x96" in printed
    assert f"wrote {out}" in printed and "64x96, any batch, with postprocessing" in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 64, 96]
    meta = read_metadata(out)
    assert meta["config"]["architecture"] == "rtdetr_mobilenetv3_small" and meta["postprocess"] is True


@pytest.mark.parametrize("argv, code, message", [
    (["--size", "100", "96"], 1, "not a multiple of rtdetr_mobilenetv3_small's stride 32"),
    (["--format", "tflite"], 2, "invalid choice: 'tflite'"),
    (["--size", "96"], 2, "expected 2 arguments"),
], ids=["size", "format", "one-size"])
def test_errors(tmp_path, capsys, argv, code, message):
    out = tmp_path / "m.onnx"
    try:
        result = main(["export", DEMO, "--output", str(out), *argv])
    except SystemExit as exc:  # argparse usage errors
        result = exc.code
    assert result == code and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_missing_output_folder(tmp_path, capsys):
    assert main(["export", DEMO, "--output", str(tmp_path / "no" / "m.onnx")]) == 1
    assert "output folder" in capsys.readouterr().err and not (tmp_path / "no").exists()


def test_parser_formats_are_the_exporters():
    from zoo.cli.export import FORMATS
    from zoo.export.onnx import EXPORT_FORMATS

    assert tuple(FORMATS) == tuple(EXPORT_FORMATS)
