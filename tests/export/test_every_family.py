"""Every registered detector family exports to ONNX (verified with onnxruntime) and to OpenVINO IR (verified with
OpenVINO), with a dynamic batch and size.

The families are found from the registry (the folders under zoo/models/ whose entry points are registered), so a
new family is tested here without editing this file: one model per family, narrowed through model arguments when
NARROW knows the family (else at its smallest registered size, found by name order), at 64x64.
"""
from __future__ import annotations

import pytest
import torch

import zoo
from zoo.models.base import Detector
from zoo.registry import list_models, model_entrypoint

from conftest import TINY_DETR, TINY_RTDETR

pytestmark = pytest.mark.usefixtures("single_thread")

#: family folder -> (model, narrow model arguments): the smallest structure that still has every part
NARROW = {"rtdetr": ("rtdetr_r18vd", TINY_RTDETR), "detr": ("detr_resnet50", TINY_DETR),
          # dfine_n's two levels hold 20 anchors at 64x64: as many queries as fit
          "dfine": ("dfine_n", dict(decoder={"num_queries": 16})),
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
