"""The AIFI sin-cos position embedding: transformers' layout (default) and the official RT-DETR layout."""
from __future__ import annotations

import pytest
import torch

import zoo
from zoo.layers.position import sincos_2d_position_embedding


def official_formula(height: int, width: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """lyuwenyu/RT-DETR's HybridEncoder.build_2d_sincos_position_embedding(w, h), in float64: a w x h mesh
    (``indexing='ij'``) flattened w-major, laid out [sin w, cos w, sin h, cos h]."""
    grid_w, grid_h = torch.meshgrid(torch.arange(width, dtype=torch.float64),
                                    torch.arange(height, dtype=torch.float64), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    out_w = grid_w.flatten()[:, None] @ omega[None]
    out_h = grid_h.flatten()[:, None] @ omega[None]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


@pytest.mark.parametrize("height, width", [(15, 20), (20, 15), (7, 7), (1, 5)])
def test_official_layout_is_the_official_formula(height, width):
    ours = sincos_2d_position_embedding(height, width, 64, dtype=torch.float64, layout="official")
    torch.testing.assert_close(ours, official_formula(height, width, 64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("height, width", [(15, 20), (20, 15)])
def test_default_layout_is_transformers(height, width):
    modeling = pytest.importorskip("transformers.models.rt_detr.modeling_rt_detr")
    theirs = modeling.build_2d_sinusoidal_position_embedding(height, width, 64, 10000.0, dtype=torch.float64)
    ours = sincos_2d_position_embedding(height, width, 64, dtype=torch.float64)
    torch.testing.assert_close(ours[0], theirs, rtol=0, atol=1e-12)


def test_layouts_agree_on_square_maps_only():
    square = [sincos_2d_position_embedding(20, 20, 32, layout=layout) for layout in ("transformers", "official")]
    torch.testing.assert_close(*square, rtol=0, atol=0)
    wide = [sincos_2d_position_embedding(15, 20, 32, layout=layout) for layout in ("transformers", "official")]
    assert (wide[0] - wide[1]).abs().max() > 0.5


def test_rtdetr_option_changes_non_square_outputs_only():
    args = dict(num_classes=3, backbone="mobilenetv3_small_050", encoder={"hidden_dim": 32, "dim_feedforward": 64,
                "num_heads": 4}, decoder={"hidden_dim": 32, "dim_feedforward": 64, "num_decoder_layers": 1,
                                          "num_queries": 10, "num_heads": 4, "num_denoising": 0})
    torch.manual_seed(0)
    default = zoo.create_model("rtdetr_mobilenetv3_small", **args).eval()
    official = zoo.create_model("rtdetr_mobilenetv3_small", **{**args, "encoder": {**args["encoder"],
                                                                                   "pe_layout": "official"}}).eval()
    official.load_state_dict(default.state_dict())
    with torch.no_grad():
        for shape, same in (((1, 3, 128, 128), True), ((1, 3, 96, 160), False)):
            x = torch.rand(shape)
            diff = (default(x)["pred_logits"] - official(x)["pred_logits"]).abs().max().item()
            assert (diff == 0) == same, (shape, diff)
    with pytest.raises(ValueError, match="pe_layout"):
        zoo.create_model("rtdetr_r18vd", encoder={"pe_layout": "paddle"})
