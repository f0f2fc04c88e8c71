"""deploy()'s rewrites (zoo.layers.fusion): each computes what it replaces, in float64, and reaches the blocks the
models have (HGNetV2's timm blocks in D-FINE and DEIMv2)."""
from __future__ import annotations

import copy

import pytest
import torch
from timm.models.hgnet import ConvBNAct
from torch import nn

import zoo
from zoo.layers.fusion import AddConstant, ShiftedMaxPool2x2, fold_conv_norm_act, rewrite_for_deploy


def _randomise(block: nn.Module) -> nn.Module:
    """Random weights and BatchNorm statistics, so that no fold is a no-op."""
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.3)
        for module in block.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return block.eval()


def test_shifted_max_pool_equals_max_pool_with_ties_and_nan():
    x = torch.randn(2, 5, 9, 12, dtype=torch.float64)
    x[0, 0, :3, :3] = 0.0  # ties, as after a ReLU
    x[1, 2, 4, 4] = float("nan")
    for ceil_mode in (False, True):
        expected = nn.MaxPool2d(2, stride=1, ceil_mode=ceil_mode)(x)
        torch.testing.assert_close(ShiftedMaxPool2x2()(x), expected, rtol=0, atol=0, equal_nan=True)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ShiftedMaxPool2x2()(channels_last), nn.MaxPool2d(2, 1)(x), rtol=0, atol=0,
                               equal_nan=True)


def test_only_2x2_stride_1_pools_are_rewritten():
    parent = nn.Module()
    parent.a, parent.b, parent.c = nn.MaxPool2d(2, 1, ceil_mode=True), nn.MaxPool2d(2, 2), nn.MaxPool2d(3, 1, 1)
    rewrite_for_deploy(parent)
    assert isinstance(parent.a, ShiftedMaxPool2x2)
    assert type(parent.b) is nn.MaxPool2d and type(parent.c) is nn.MaxPool2d


@pytest.mark.parametrize("scale", [1.7, -0.6])
@pytest.mark.parametrize("use_act", [True, False])
def test_conv_norm_act_fold_keeps_the_function(scale, use_act):
    """BatchNorm always folds; the affine block folds only after a ReLU with a positive scale (a negative one
    does not commute with the ReLU and stays)."""
    block = _randomise(ConvBNAct(6, 8, 3, stride=2, use_act=use_act, use_lab=True).double())
    if use_act:
        with torch.no_grad():
            block.lab.scale.fill_(scale)
    x = torch.randn(2, 6, 15, 15, dtype=torch.float64, requires_grad=True)
    fused = copy.deepcopy(block)
    fold_conv_norm_act(fused)
    assert isinstance(fused.bn, nn.Identity)
    assert isinstance(fused.lab, AddConstant) == (use_act and scale > 0)
    with torch.no_grad():  # the in-place path
        torch.testing.assert_close(fused(x), block(x), rtol=1e-12, atol=1e-12)
    # with autograd (saliency maps on a deployed model): out of place, the same input gradient
    expected = torch.autograd.grad(block(x).square().sum(), x)[0]
    torch.testing.assert_close(torch.autograd.grad(fused(x).square().sum(), x)[0], expected, rtol=1e-10, atol=1e-10)


def test_deploy_reaches_hgnetv2():
    """DEIMv2 Atto's HGNetV2 (timm blocks) keeps no BatchNorm, no positive-scale affine block and no slow pool
    after deploy(), and computes the same function in float64."""
    torch.manual_seed(0)
    model = _randomise(zoo.create_model("deimv2_atto")).double()
    x = torch.rand(1, 3, 160, 160, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        model.deploy()
        got = model(x)
    names = [type(module).__name__ for module in model.backbone.modules()]
    assert "BatchNorm2d" not in names and "MaxPool2d" not in names and "ShiftedMaxPool2x2" in names
    assert names.count("AddConstant") > 0
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-9, atol=1e-9)


def test_onnx_export_keeps_max_pool(tmp_path):
    """In an ONNX graph the pool stays one MaxPool node (fast in the runtimes), not slices and maxima."""
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "pool.onnx"
    torch.onnx.export(ShiftedMaxPool2x2(), (torch.rand(1, 4, 9, 9),), str(path), dynamo=False)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops == ["MaxPool"], ops
