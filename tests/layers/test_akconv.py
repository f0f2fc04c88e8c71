"""AKConv against an independent per-point reference (python loops, float64), plus its blocks, guards and export.

The reference follows the official semantics as documented (docs/akconv.md): sampling point k of N starts at
``divmod(k, round(sqrt(N)))`` (row, column) relative to ``(i, j) * stride``, moved by the offset conv's output
(first N channels: rows, last N: columns); per axis the two neighbours ``floor(p)`` and ``floor(p) + 1`` are
clamped to the image, ``p`` is clamped separately, weights ``1 + lo - p`` and ``1 - hi + p``; the N samples are
mixed by the column conv's weights, then BatchNorm (eval) and SiLU.
"""
from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from zoo.layers.akconv import (AKConv, Bottleneck_AKConv, C3_AKConv, akconv_initial_shape, akconv_param_groups,
                               scale_offset_lr)
from zoo.registry import get_component


pytestmark = pytest.mark.usefixtures("single_thread")


FP32_TOL = 1e-5
# bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.0039): inputs, weights, offsets and the conv sums are rounded.
BF16_ATOL, BF16_RTOL = 3e-2, 1.6e-2


# ------------------------------------------------------------------------------------------------ reference
def ref_initial_shape(num_param: int) -> list[tuple[int, int]]:
    base = round(math.sqrt(num_param))
    points = [(r, c) for r in range(num_param // base) for c in range(base)]
    return points + [(num_param // base, c) for c in range(num_param % base)]


def ref_axis(p: float, size: int, border: str) -> list[tuple[int, float]]:
    """(index, weight) of both neighbours along one axis."""
    if border == "official":
        lo = min(max(math.floor(p), 0), size - 1)
        hi = min(max(math.floor(p) + 1, 0), size - 1)
        pc = min(max(p, 0.0), size - 1)
        return [(lo, 1 + lo - pc), (hi, 1 - hi + pc)]
    pc = min(max(p, 0.0), size - 1)
    lo = math.floor(pc)
    return [(lo, 1 - (pc - lo)), (min(lo + 1, size - 1), pc - lo)]


def reference_akconv(m: AKConv, x: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """Slow, obviously-correct AKConv forward in float64 (BN in eval mode); ``offset`` defaults to the offset conv."""
    x = x.double()
    n_pts, s = m.num_param, m.stride
    if offset is None:
        offset = F.conv2d(x, m.p_conv.weight.double(), m.p_conv.bias.double(), stride=s, padding=1)
    offset = offset.double()
    batch, channels, height, width = x.shape
    h, w = offset.shape[-2:]
    shape = ref_initial_shape(n_pts)
    samples = torch.zeros(batch, channels, n_pts, h, w, dtype=torch.float64)
    for b in range(batch):
        for i in range(h):
            for j in range(w):
                for k, (dy, dx) in enumerate(shape):
                    py = i * s + dy + offset[b, k, i, j].item()
                    px = j * s + dx + offset[b, n_pts + k, i, j].item()
                    for r, wr in ref_axis(py, height, m.border):
                        for c, wc in ref_axis(px, width, m.border):
                            samples[b, :, k, i, j] += wr * wc * x[b, :, r, c]
    conv, bn = m.conv[0], m.conv[1]
    y = torch.einsum("ocn,bcnhw->bohw", conv.weight.double()[..., 0], samples)
    if conv.bias is not None:
        y = y + conv.bias.double()[:, None, None]
    y = (y - bn.running_mean.double()[:, None, None]) / torch.sqrt(bn.running_var.double()[:, None, None] + bn.eps)
    y = y * bn.weight.double()[:, None, None] + bn.bias.double()[:, None, None]
    return y * torch.sigmoid(y)


def make_akconv(cin: int, cout: int, num_param: int, stride: int, offset_std: float = 1.0, seed: int = 0,
                **kwargs) -> AKConv:
    """AKConv with random offsets (some points land outside the image) and non-trivial BN statistics, eval mode."""
    torch.manual_seed(seed)
    m = AKConv(cin, cout, num_param, stride, **kwargs)
    with torch.no_grad():
        m.p_conv.weight.normal_(0, offset_std / math.sqrt(9 * cin))
        m.p_conv.bias.uniform_(-1.5, 1.5)
        bn = m.conv[1]
        bn.running_mean.normal_(0, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.1)
    return m.eval()


# ------------------------------------------------------------------------------------------------ shape
def test_initial_shape_matches_documented_layout():
    assert akconv_initial_shape(5).tolist() == [[0, 0, 1, 1, 2], [0, 1, 0, 1, 0]]
    for n in range(1, 26):
        got = [tuple(p) for p in akconv_initial_shape(n).long().t().tolist()]
        assert got == ref_initial_shape(n), n
        assert len(set(got)) == n
    assert akconv_initial_shape(9).t().tolist() == [[r, c] for r in range(3) for c in range(3)]  # a 3x3 kernel


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "5"])
def test_bad_num_param_is_refused(bad):
    with pytest.raises(ValueError, match="num_param"):
        AKConv(4, 4, bad)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="border"):
        AKConv(4, 4, 3, border="zeros")
    with pytest.raises(ValueError, match="impl"):
        AKConv(4, 4, 3, impl="cuda")
    with pytest.raises(ValueError, match="stride"):
        AKConv(4, 4, 3, stride=0)


@pytest.mark.parametrize("num_param,expected", [(3, 28_294), (5, 46_986), (9, 84_370)])
def test_parameter_counts(num_param, expected):
    m = AKConv(64, 128, num_param, stride=2)
    assert sum(p.numel() for p in m.parameters()) == expected
    # official parameter names, so official checkpoints load as they are
    assert sorted(m.state_dict()) == sorted([
        "conv.0.weight", "conv.1.weight", "conv.1.bias", "conv.1.running_mean", "conv.1.running_var",
        "conv.1.num_batches_tracked", "p_conv.weight", "p_conv.bias"])


def test_offset_conv_starts_at_zero():
    m = AKConv(8, 8, 5)
    assert torch.count_nonzero(m.p_conv.weight) == 0


# ------------------------------------------------------------------------------------------------ reference parity
@pytest.mark.parametrize("impl", ["grid_sample", "gather"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("num_param", [1, 3, 5, 9, 13])
def test_matches_reference_fp32(num_param, stride, impl):
    m = make_akconv(3, 4, num_param, stride, impl=impl, seed=num_param)
    x = torch.randn(2, 3, 5, 7)  # non-square
    y = m(x)
    assert y.shape == (2, 4, (5 - 1) // stride + 1, (7 - 1) // stride + 1)
    torch.testing.assert_close(y.double(), reference_akconv(m, x), atol=FP32_TOL, rtol=FP32_TOL)


@pytest.mark.parametrize("impl", ["grid_sample", "gather"])
@pytest.mark.parametrize("num_param,stride,size", [(5, 1, (6, 4)), (9, 2, (7, 6)), (4, 1, (1, 5))])
def test_matches_reference_replicate_border(num_param, stride, size, impl):
    m = make_akconv(2, 3, num_param, stride, border="replicate", impl=impl, seed=3)
    x = torch.randn(1, 2, *size)
    torch.testing.assert_close(m(x).double(), reference_akconv(m, x), atol=FP32_TOL, rtol=FP32_TOL)


@pytest.mark.parametrize("impl", ["grid_sample", "gather"])
@pytest.mark.parametrize("num_param,stride", [(3, 1), (9, 2), (13, 1)])
def test_matches_reference_bf16(num_param, stride, impl):
    m = make_akconv(3, 4, num_param, stride, impl=impl, seed=7)
    x = torch.randn(1, 3, 6, 5).bfloat16()
    m = m.bfloat16()
    y = m(x)
    assert y.dtype == torch.bfloat16
    # The reference sees exactly the bf16 weights, inputs and offsets (the offset conv's bf16 output: a rounded
    # offset may cross a pixel border, where the official rule jumps), and computes in float64.
    with torch.no_grad():
        ref = reference_akconv(m, x, offset=m.p_conv(x))
    torch.testing.assert_close(y.double(), ref, atol=BF16_ATOL, rtol=BF16_RTOL)


def test_official_border_quirk():
    """Zero offsets, one point: samples on the last row/column count twice per axis (4x in the corner)."""
    x = torch.ones(1, 1, 4, 5)
    expected_quirk = torch.ones(4, 5)
    expected_quirk[-1] *= 2
    expected_quirk[:, -1] *= 2
    for border, expected in (("official", expected_quirk), ("replicate", torch.ones(4, 5))):
        for impl in ("grid_sample", "gather"):
            m = AKConv(1, 1, 1, act=None, border=border, impl=impl).eval()
            with torch.no_grad():
                m.p_conv.bias.zero_()
                m.conv[0].weight.fill_(1.0)
                m.conv[1].running_var.fill_(1.0 - m.conv[1].eps)  # BN becomes the identity
            torch.testing.assert_close(m(x)[0, 0], expected, msg=f"{border} {impl}")


# ------------------------------------------------------------------------------------------------ fast path
@pytest.mark.parametrize("num_param,stride", [(5, 2), (9, 1), (13, 2)])
def test_fast_path_matches_official_formulation_forward_and_backward(num_param, stride):
    m = make_akconv(8, 6, num_param, stride, offset_std=3.0, seed=11).train()
    x = torch.randn(2, 8, 13, 10)
    grad = torch.randn(2, 6, (13 - 1) // stride + 1, (10 - 1) // stride + 1)
    results = []
    for impl in ("gather", "grid_sample"):
        m.impl = impl
        m.zero_grad()
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.backward(grad)
        results.append((y.detach(), xi.grad, m.p_conv.weight.grad.clone(), m.conv[0].weight.grad.clone()))
    for ref, fast, name in zip(*results, ("output", "grad x", "grad p_conv", "grad column conv")):
        scale = ref.abs().max().clamp(min=1.0)
        torch.testing.assert_close(fast / scale, ref / scale, atol=FP32_TOL, rtol=0, msg=name)
    assert results[0][2].abs().sum() > 0, "no gradient reached the offset conv"


def test_gradcheck_fast_path():
    """Analytical gradients (input and, through it, the offsets) equal finite differences; float64."""
    m = make_akconv(2, 2, 5, 2, offset_std=2.0, seed=5).double()
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("impl", ["grid_sample", "gather"])
def test_nan_and_huge_offsets_are_safe(impl):
    """NaN/inf/huge offsets never index outside the image; NaN shows up as NaN output, huge ones are clamped."""
    m = make_akconv(3, 4, 5, 1, impl=impl)
    x = torch.randn(1, 3, 6, 7)
    with torch.no_grad():
        m.p_conv.bias[:] = torch.tensor([1e30, -1e30, 5e6, -5e6, 0.3, 1e30, 1e30, -1e30, 2.5, 1e12])
    torch.testing.assert_close(m(x).double(), reference_akconv(m, x), atol=FP32_TOL, rtol=FP32_TOL)
    with torch.no_grad():
        m.p_conv.bias[0] = float("inf")
        m.p_conv.bias[6] = float("-inf")
        y_inf = m(x)
        m.p_conv.weight[1, :, 1, 1] = float("nan")  # NaN offsets wherever the input is not zero
        y_nan = m(x)
    assert torch.isfinite(y_inf).all()
    assert torch.isnan(y_nan).all()  # every output pixel uses point 1 (eval mode: no BN mixing across pixels)


@pytest.mark.parametrize("impl", ["grid_sample", "gather"])
def test_onnx_export_matches_pytorch(impl):
    ort = pytest.importorskip("onnxruntime")
    m = make_akconv(4, 6, 5, 2, offset_std=3.0, impl=impl)
    buf = io.BytesIO()
    torch.onnx.export(m, (torch.randn(1, 4, 12, 9),), buf, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for shape in [(1, 4, 12, 9), (2, 4, 7, 16)]:  # also a size other than the traced one
        x = torch.randn(shape)
        (got,) = sess.run(None, {"x": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), m(x).detach(), atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ lr groups
def test_param_groups_scale_the_offset_learning_rate():
    model = C3_AKConv(8, 8, num_blocks=2)
    groups = akconv_param_groups(model, lr=1e-3, offset_lr_scale=0.1, weight_decay=1e-4)
    offsets = {id(m.p_conv.weight) for m in model.modules() if isinstance(m, AKConv)}
    offsets |= {id(m.p_conv.bias) for m in model.modules() if isinstance(m, AKConv)}
    assert {id(p) for p in groups[1]["params"]} == offsets and len(offsets) == 4
    assert groups[1]["lr"] == pytest.approx(1e-4) and groups[0]["lr"] == 1e-3
    assert groups[0]["weight_decay"] == groups[1]["weight_decay"] == 1e-4
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())
    # with SGD the offset conv moves exactly 0.1x as far as with the full learning rate
    steps = []
    for scale in (1.0, 0.1):
        torch.manual_seed(0)
        m = AKConv(2, 2, 3)
        opt = torch.optim.SGD(akconv_param_groups(m, lr=0.5, offset_lr_scale=scale))
        before = m.p_conv.weight.detach().clone()
        m(torch.randn(2, 2, 5, 5)).square().mean().backward()
        opt.step()
        steps.append(m.p_conv.weight.detach() - before)
    assert steps[0].abs().sum() > 0
    torch.testing.assert_close(steps[1], 0.1 * steps[0])


def test_scale_offset_lr_keeps_existing_groups():
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), AKConv(4, 4, 3))
    flat = [p for p in model.parameters() if p.ndim <= 1]
    full = [p for p in model.parameters() if p.ndim > 1]
    groups = scale_offset_lr([{"params": full, "lr": 1.0, "weight_decay": 0.1},
                              {"params": flat, "lr": 2.0, "weight_decay": 0.0}], model, 0.1)
    p_conv = model[1].p_conv
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert len(by_param) == len(list(model.parameters())) and len(groups) == 4
    weight, bias = by_param[id(p_conv.weight)], by_param[id(p_conv.bias)]
    assert weight["lr"] == pytest.approx(0.1) and weight["weight_decay"] == 0.1
    assert bias["lr"] == pytest.approx(0.2) and bias["weight_decay"] == 0.0
    assert by_param[id(model[0].weight)]["lr"] == 1.0
    with pytest.raises(ValueError, match="lr"):
        scale_offset_lr([{"params": list(model.parameters())}], model)


# ------------------------------------------------------------------------------------------------ blocks
def _conv_bn(cin: int, cout: int) -> int:
    return cin * cout + 2 * cout  # 1x1 conv without bias + BN affine


def _akconv_params(cin: int, cout: int, n: int) -> int:
    return cout * cin * n + 2 * cout + 2 * n * cin * 9 + 2 * n


def test_bottleneck_yolov5_semantics():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 6, 5)
    b = Bottleneck_AKConv(8, 8, shortcut=True, expansion=0.5).eval()
    torch.testing.assert_close(b(x), x + b.cv2(b.cv1(x)))
    assert isinstance(b.cv2, AKConv) and b.cv2.num_param == 3 and b.cv2.stride == 1
    assert not Bottleneck_AKConv(8, 8, shortcut=False).add and not Bottleneck_AKConv(8, 16).add
    assert sum(p.numel() for p in b.parameters()) == _conv_bn(8, 4) + _akconv_params(4, 8, 3)


def test_c3_yolov5_semantics():
    torch.manual_seed(0)
    c3 = C3_AKConv(16, 12, 2, shortcut=True, expansion=0.5).eval()  # YOLOv5 positional order (c1, c2, n, shortcut)
    x = torch.randn(2, 16, 7, 6)
    torch.testing.assert_close(c3(x), c3.cv3(torch.cat([c3.m(c3.cv1(x)), c3.cv2(x)], 1)))
    assert len(c3.m) == 2 and all(blk.add and blk.cv1.conv.out_channels == 6 for blk in c3.m)
    expected = 2 * _conv_bn(16, 6) + _conv_bn(12, 12) + 2 * (_conv_bn(6, 6) + _akconv_params(6, 6, 3))
    assert sum(p.numel() for p in c3.parameters()) == expected
    assert c3(x).shape == (2, 12, 7, 6)


def test_registered_blocks_follow_the_hybrid_encoder_contract():
    down = get_component("block", "akconv")(16, 16, stride=2, act="silu", num_param=5)
    fuse = get_component("block", "c3_akconv")(32, 16, num_blocks=2, expansion=0.5, act="silu", num_param=3,
                                               shortcut=False)
    x = torch.randn(1, 16, 8, 8)
    assert down(x).shape == (1, 16, 4, 4)
    assert fuse(torch.cat([x, x], 1)).shape == (1, 16, 8, 8)
    from zoo.layers.hybrid_encoder import HybridEncoder

    enc = HybridEncoder([8, 16, 24], hidden_dim=16, num_heads=2, dim_feedforward=32, expansion=0.5,
                        fusion_block="c3_akconv", fusion_args={"shortcut": False, "num_param": 3},
                        downsample_block="akconv", downsample_args={"num_param": 5})
    feats = [torch.randn(1, 8, 16, 12), torch.randn(1, 16, 8, 6), torch.randn(1, 24, 4, 3)]
    outs = enc(feats)
    assert [o.shape[-2:] for o in outs] == [f.shape[-2:] for f in feats]
    assert sum(isinstance(m, AKConv) for m in enc.modules()) == 2 + 4 * 3
