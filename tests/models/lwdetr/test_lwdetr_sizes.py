"""Every other LW-DETR / RF-DETR size against transformers at its own input size (float64): zoo ->
save_pretrained(format="transformers") -> AutoModelForObjectDetection. lwdetr_xlarge keeps 4 of its 10 ViT blocks
(windowed and global ones, four outputs, the >512-channel P3 path and P5): the rest of its config is the real one."""
from __future__ import annotations

import pytest
import torch

import zoo

from hf_lwdetr import SIZES, output_diffs, perturb  # noqa: E402

transformers = pytest.importorskip("transformers")

TOL = 1e-6
CUT = {"lwdetr_xlarge": dict(backbone=dict(depth=4, window_blocks=[0, 1, 3], out_indices=[0, 1, 2, 3]))}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lwdetr_small", "lwdetr_medium", "lwdetr_large", "lwdetr_xlarge", "rfdetr_small",
                                  "rfdetr_medium", "rfdetr_large"])
def test_size_matches_transformers(name, tmp_path):
    torch.manual_seed(5)
    model = zoo.create_model(name, **CUT.get(name, {})).eval()
    perturb(model, seed=5)
    model.save_pretrained(tmp_path, format="transformers")
    hf = transformers.AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    x = torch.rand(1, 3, SIZES[name], SIZES[name], generator=torch.Generator().manual_seed(6))
    logits_diff, boxes_diff = output_diffs(hf, model, x)
    assert logits_diff <= TOL and boxes_diff <= TOL, (logits_diff, boxes_diff)
