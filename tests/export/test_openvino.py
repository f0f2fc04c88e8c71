"""OpenVINO: the IR export keeps zoo's metadata, and the openvino backend (Python and command line) finds what
eager PyTorch finds on the demo."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

from zoo.cli import main
from zoo.export import OpenVinoDetector
from zoo.export.openvino import read_openvino_metadata

from export_setup import DEMO

pytestmark = pytest.mark.usefixtures("single_thread")

DEMO_IMAGE = "zoo/assets/shapes_demo.png"


@pytest.fixture(scope="module")
def demo_ir(tmp_path_factory) -> tuple[Path, str]:
    """The demo exported once, through the command line (zoo.export's openvino format is tested on every family in
    test_every_family.py), with a dynamic batch and size: (its model.xml, what the command printed)."""
    out = tmp_path_factory.mktemp("ir") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", DEMO, "--format", "openvino", "--output", str(out), "--dynamic-batch",
                     "--dynamic-size"]) == 0
    return out / "model.xml", printed.getvalue()


def test_same_detections_as_eager_on_the_demo(demo_model, demo_ir):
    expected = demo_model.predict([DEMO_IMAGE, DEMO_IMAGE], score_threshold=0.3)
    got = OpenVinoDetector(demo_ir[0].parent, threads=1).predict([DEMO_IMAGE, DEMO_IMAGE], score_threshold=0.3)
    for e, g in zip(expected, got):
        assert len(e) == len(g) >= 4 and g.label_names == e.label_names
        torch.testing.assert_close(g.boxes, e.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(g.scores, e.scores, atol=1e-5, rtol=0)


def test_metadata_is_kept(demo_model, demo_ir):
    meta = read_openvino_metadata(demo_ir[0].parent)
    assert meta["config"] == demo_model.config and meta["family"] == "rtdetr"
    assert meta["pretrained_cfg"]["label_names"] == demo_model.pretrained_cfg["label_names"]


def test_cli_export_and_predict(demo_ir, tmp_path, capsys):
    xml, printed = demo_ir
    assert "openvino vs eager rtdetr_mobilenetv3_small at 1x3x96x96" in printed and f"wrote {xml}" in printed
    assert main(["predict", str(xml.parent), DEMO_IMAGE, "--backend", "openvino", "--threshold", "0.7",
                 "--out", str(tmp_path / "pred")]) == 0
    assert "4 detections (2 circle, 1 triangle, 1 square)" in capsys.readouterr().out


def test_missing_ir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="OpenVINO IR not found"):
        OpenVinoDetector(tmp_path / "nothing.xml")
