"""Every registered detector family exports to ONNX (verified with onnxruntime) and to OpenVINO IR (verified with
OpenVINO), with a dynamic batch and size.

The families are found from the registry (the folders under zoo/models/ whose entry points are registered), so a
new family is tested here without editing this file: one model per family, narrowed through model arguments when
NARROW knows the family (else at its smallest registered size, found by name order), at 64x64.
"""
from __future__ import annotations

import onnx
import pytest
import torch

import zoo
from zoo.data.synthetic import make_synthetic_coco
from zoo.export import OnnxRuntimeDetector, read_metadata
from zoo.models.base import Detector
from zoo.registry import list_models, model_entrypoint

from export_setup import TINY_DETR, TINY_RTDETR

pytestmark = pytest.mark.usefixtures("single_thread")

#: family folder -> (model, narrow model arguments): the smallest structure that still has every part
NARROW = {"rtdetr": ("rtdetr_r18vd", TINY_RTDETR), "detr": ("detr_resnet50", TINY_DETR),
          # dfine_n's two levels hold 20 anchors at 64x64: as many queries as fit
          "dfine": ("dfine_n", dict(decoder={"num_queries": 16})),
          # RF-DETR (size divisor 32; LW-DETR's 64 does not divide 96): 2 windowed + global DINOv2 blocks, one
          # decoder layer, the 16 queries 4 x 4 patches hold
          "lwdetr": ("rfdetr_nano", dict(backbone={"depth": 2, "out_indices": [1, 2]},
                                         decoder={"num_queries": 16, "num_decoder_layers": 1})),
          # deimv2_atto's two levels hold 20 anchors at 64x64 too
          "deimv2": ("deimv2_atto", dict(decoder={"num_queries": 16}))}


def _families() -> dict[str, list[str]]:
    """Family folder (zoo/models/<family>/) -> its registered model names."""
    families: dict[str, list[str]] = {}
    for name in list_models():
        parts = model_entrypoint(name).__module__.split(".")
        if parts[:2] == ["zoo", "models"] and len(parts) > 3:  # zoo.models.<family>.<module>
            families.setdefault(parts[2], []).append(name)
    return families


FAMILIES = _families()


def test_the_known_families_are_found():
    assert {"rtdetr", "detr"} <= set(FAMILIES)
    for family, (name, _) in NARROW.items():
        assert name in FAMILIES[family]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_exports_to_onnx_and_openvino(family, tmp_path, capsys):
    name, narrow = NARROW.get(family, (sorted(FAMILIES[family])[0], {}))
    torch.manual_seed(0)
    model = zoo.create_model(name, **narrow).eval()
    assert isinstance(model, Detector)
    xml = zoo.export(model, tmp_path / "ir", format="openvino", input_size=64, dynamic_batch=True,
                     dynamic_size=True)
    printed = capsys.readouterr().out
    for runtime in ("onnxruntime", "openvino"):  # each verified at the export size and at another batch and size
        assert f"{runtime} vs eager {name} at 1x3x64x64" in printed
        assert f"{runtime} vs eager {name} at 2x3x96x128" in printed
    assert xml == tmp_path / "ir" / "model.xml" and xml.with_suffix(".bin").is_file()
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == ["model.bin", "model.xml"]  # nothing else left
    detector = zoo.export.OpenVinoDetector(xml, threads=1)
    assert detector.config == model.config and detector.fixed_size is None and detector.fixed_batch is None


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_exports_to_static_int8(family, tmp_path):
    """Static int8 (issue 23 item 3) for every family: the file runs in onnxruntime with its convolutions
    quantized, and where the graph selects queries (a TopK) the rules keep the selection and everything after it
    in float: those nodes read no dequantized tensor."""
    name, narrow = NARROW.get(family, (sorted(FAMILIES[family])[0], {}))
    torch.manual_seed(0)
    model = zoo.create_model(name, **narrow).eval()
    make_synthetic_coco(tmp_path / "calibration", "images", 2, seed=7, image_size=80)
    path = zoo.export(model, tmp_path / "int8.onnx", input_size=64, int8=True, calibration=tmp_path / "calibration")
    kept = read_metadata(path)["int8"]["kept_float"]
    graph = onnx.load(str(path)).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    assert any(node.op_type == "Conv" and set(node.input) & dequantized for node in graph.node)
    if any(node.op_type == "TopK" for node in graph.node):
        assert kept["query-dependent"] and kept["selection"], kept
    names = {n for names in kept.values() for n in names}
    for node in graph.node:
        if node.name in names or node.op_type in ("TopK", "GridSample"):
            assert not set(node.input) & dequantized, node.name
    if model.pretrained_cfg.get("resize_mode", "stretch") == "stretch":  # fixed-size files of the others refuse
        out = OnnxRuntimeDetector(path, threads=1)(torch.rand(1, 3, 64, 64))
        assert out["pred_logits"].isfinite().all() and out["pred_boxes"].isfinite().all()
