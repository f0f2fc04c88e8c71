"""Multi-scale deformable attention: RT-DETRv2 options against transformers' RTDetrV2MultiscaleDeformableAttention,
per-level point counts against an equivalent padded uniform layout, discrete rounding by hand, ONNX export."""
from __future__ import annotations

import io
import warnings

import pytest
import torch

from zoo.layers import MSDeformableAttention

SHAPES = [(12, 16), (6, 8), (3, 4)]  # rectangular: x and y are clamped to different sizes


pytestmark = pytest.mark.usefixtures("single_thread")


def _inputs(dim: int = 64, batch: int = 2, queries: int = 30, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, queries, dim, generator=g)
    # boxes reaching past the borders so that sampling points fall outside and get clamped / zero-padded
    centres, sizes = torch.rand(batch, queries, 1, 2, generator=g), torch.rand(batch, queries, 1, 2, generator=g) * 1.5
    ref = torch.cat([centres, sizes], -1)
    value = torch.randn(batch, sum(h * w for h, w in SHAPES), dim, generator=g)
    return query, ref, value


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("method", ["default", "discrete"])
def test_matches_transformers_v2_attention(method):
    from transformers import RTDetrV2Config
    from transformers.models.rt_detr_v2.modeling_rt_detr_v2 import RTDetrV2MultiscaleDeformableAttention

    config = RTDetrV2Config(d_model=64, decoder_attention_heads=4, decoder_n_levels=3, decoder_n_points=4,
                            decoder_method=method)
    ref_attn = RTDetrV2MultiscaleDeformableAttention(config).eval()
    _randomise(ref_attn)
    attn = MSDeformableAttention(64, 4, 3, [4, 4, 4], method=method, persistent_points_scale=True).eval()
    attn.load_state_dict({k.replace("n_points_scale", "num_points_scale"): v for k, v in ref_attn.state_dict().items()})
    query, ref, value = _inputs()
    with torch.no_grad():
        expected, _ = ref_attn(query, encoder_hidden_states=value, reference_points=ref,
                               spatial_shapes=torch.tensor(SHAPES), spatial_shapes_list=SHAPES)
        out = attn(query, ref, value, SHAPES)
    assert (out - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_discrete_picks_the_pixel_rt_detrv2_rounds_to():
    """index = floor(location * size + 0.5), clamped: RT-DETRv2's rounding, worked out by hand on a 2x3 map."""
    from zoo.layers.ms_deform_attn import ms_deform_attn_core

    value = torch.arange(6.0).view(1, 6, 1, 1)  # [B, H*W, heads, C]: pixel (row, col) holds 3 * row + col
    locations = torch.tensor([[0.5, 0.5], [0.1, 0.1], [0.99, 0.0], [-0.4, 1.7], [0.34, 0.26]]).view(1, 5, 1, 1, 2)
    weights = torch.ones(1, 5, 1, 1)
    out = ms_deform_attn_core(value, [(2, 3)], locations, weights, [1], method="discrete")
    # x: 0.5*3+.5=2 -> 2; 0.1*3+.5=.8 -> 0; 0.99*3+.5=3.47 -> 3 -> clamp 2; -0.7 -> 0; 1.52 -> 1
    # y: 0.5*2+.5=1.5 -> 1; 0.7 -> 0; 0.5 -> 0; 3.9 -> clamp 1; 1.02 -> 1
    assert out.flatten().tolist() == [5.0, 0.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("method", ["default", "discrete"])
def test_per_level_points_equal_a_padded_uniform_layout(method):
    """[2, 3, 4] points == [4, 4, 4] points whose extra points get zero attention weight, with each level's offsets
    rescaled by 4 / n (the 1 / n points scale): checks the level-major point layout and the per-point scale."""
    points = [2, 3, 4]
    attn = MSDeformableAttention(64, 4, 3, points, method=method).eval()
    _randomise(attn)
    padded = MSDeformableAttention(64, 4, 3, 4, method=method).eval()
    padded.value_proj.load_state_dict(attn.value_proj.state_dict())
    padded.output_proj.load_state_dict(attn.output_proj.state_dict())
    heads, total = 4, sum(points)
    with torch.no_grad():
        off_w = attn.sampling_offsets.weight.view(heads, total, 2, -1)
        off_b = attn.sampling_offsets.bias.view(heads, total, 2)
        att_w = attn.attention_weights.weight.view(heads, total, -1)
        att_b = attn.attention_weights.bias.view(heads, total)
        new_off_w = torch.zeros(heads, 3, 4, 2, 64)
        new_off_b = torch.zeros(heads, 3, 4, 2)
        new_att_w = torch.zeros(heads, 3, 4, 64)
        new_att_b = torch.full((heads, 3, 4), -1e4)  # exp(-1e4) == 0: unused points get no weight
        start = 0
        for level, n in enumerate(points):
            rows = slice(start, start + n)
            new_off_w[:, level, :n] = off_w[:, rows] * 4 / n
            new_off_b[:, level, :n] = off_b[:, rows] * 4 / n
            new_att_w[:, level, :n] = att_w[:, rows]
            new_att_b[:, level, :n] = att_b[:, rows]
            start += n
        padded.sampling_offsets.weight.copy_(new_off_w.reshape(-1, 64))
        padded.sampling_offsets.bias.copy_(new_off_b.flatten())
        padded.attention_weights.weight.copy_(new_att_w.reshape(-1, 64))
        padded.attention_weights.bias.copy_(new_att_b.flatten())
        query, ref, value = _inputs()
        out, expected = attn(query, ref, value, SHAPES), padded(query, ref, value, SHAPES)
    assert attn.num_points_scale.tolist() == pytest.approx([1 / 2] * 2 + [1 / 3] * 3 + [1 / 4] * 4)
    assert (out - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_points_scale_is_in_the_state_dict_only_when_asked():
    assert "num_points_scale" not in MSDeformableAttention(64, 4).state_dict()  # RT-DETR keys unchanged
    assert "num_points_scale" in MSDeformableAttention(64, 4, persistent_points_scale=True).state_dict()


def test_discrete_trains_without_offset_gradients():
    """Integer pixel indices carry no gradient: the official code freezes sampling_offsets; the rest trains."""
    attn = MSDeformableAttention(64, 4, 3, 4, method="discrete")
    query, ref, value = _inputs()
    attn(query, ref, value, SHAPES).square().mean().backward()
    assert not attn.sampling_offsets.weight.requires_grad and attn.sampling_offsets.weight.grad is None
    assert all(p.grad is not None for n, p in attn.named_parameters() if not n.startswith("sampling_offsets"))


def test_discrete_exports_to_onnx_without_grid_sample():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Wrapper(torch.nn.Module):
        def __init__(self, attn):
            super().__init__()
            self.attn = attn

        def forward(self, query, ref, value):
            return self.attn(query, ref, value, SHAPES)

    inputs = _inputs(batch=1)
    ops = {}
    for method in ("default", "discrete"):
        attn = MSDeformableAttention(64, 4, 3, [4, 2, 3], method=method).eval()
        _randomise(attn)
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Wrapper(attn), inputs, buffer, opset_version=16, dynamo=False)
        ops[method] = {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
        session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)})
        with torch.no_grad():
            expected = attn(*inputs, SHAPES)
        assert (torch.from_numpy(out) - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert "GridSample" in ops["default"] and "GridSample" not in ops["discrete"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_points=[4, 4]), "one per level"),
    (dict(num_points=[4, 0, 4]), "positive"),
    (dict(num_points=2.5), "positive int"),
    (dict(method="nearest"), "unknown sampling method"),
])
def test_bad_arguments_get_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MSDeformableAttention(64, 4, 3, **kwargs)
