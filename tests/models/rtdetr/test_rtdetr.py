"""RT-DETR parity with transformers' RTDetrForObjectDetection, through the converters zoo ships."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

import zoo
from zoo.weights.checkpoint import CheckpointError, read_checkpoint
from zoo.models.rtdetr.convert import transformers_to_zoo

from hf_rtdetr import HF_CONFIGS, calibrate_batch_norms, hf_rtdetr, output_diffs, saved  # noqa: E402

LOGITS_TOL, BOXES_TOL = 1e-4, 1e-5


@pytest.fixture(scope="module", params=sorted(HF_CONFIGS))
def hf_checkpoint(request, tmp_path_factory):
    """A transformers model with random weights, saved with save_pretrained (a real model.safetensors)."""
    return saved(request.param, hf_rtdetr(request.param), tmp_path_factory)


# a batch, and a non-square input: 4:3 like 480x640 with, like it, an odd side at stride 32 (9x12 there, 15x20
# at 480x640), at 0.36 of its pixels (float64 parity of R101 at 480x640 was the slowest model test)
@pytest.mark.parametrize("shape", [(2, 3, 320, 320), (1, 3, 288, 384)], ids=["batch2", "288x384"])
def test_parity_with_transformers(hf_checkpoint, shape):
    name, hf_model, path = hf_checkpoint
    model = zoo.create_model(name, checkpoint_path=path).eval()
    assert model.load_report.format == "transformers-rtdetr"
    torch.manual_seed(1)
    logits_diff, boxes_diff = output_diffs(hf_model, model, torch.rand(*shape))
    assert logits_diff <= LOGITS_TOL, f"{name} logits differ by {logits_diff}"
    assert boxes_diff <= BOXES_TOL, f"{name} boxes differ by {boxes_diff}"


def test_official_layout_loads(hf_checkpoint, tmp_path):
    """The official release layout {'ema': {'module': state_dict}} (.pth) loads through the same path."""
    name, hf_model, path = hf_checkpoint
    if name != "rtdetr_r18vd":
        pytest.skip("the layout is the same for every depth (key names are checked per depth below)")
    official = transformers_to_zoo(read_checkpoint(path))
    # the official checkpoints keep num_batches_tracked for trainable BN only; keep them all, as saved
    pth = tmp_path / f"{name}_official.pth"
    torch.save({"ema": {"module": official, "updates": torch.tensor(1)}}, pth)
    model = zoo.create_model(name, checkpoint_path=pth).eval()
    assert model.load_report.format in ("official-rtdetr", "zoo")
    torch.manual_seed(2)
    logits_diff, boxes_diff = output_diffs(hf_model, model, torch.rand(1, 3, 320, 320))
    assert logits_diff <= LOGITS_TOL and boxes_diff <= BOXES_TOL


def test_official_key_names(hf_checkpoint):
    """Zoo keys are the official RT-DETR keys listed in shared/docs/rtdetr.md."""
    name, _, _ = hf_checkpoint
    keys = set(zoo.create_model(name).state_dict())
    expected = {
        "backbone.conv1.conv1_1.conv.weight", "backbone.conv1.conv1_3.norm.running_var",
        "backbone.res_layers.0.blocks.0.short.conv.weight", "backbone.res_layers.1.blocks.0.short.conv.conv.weight",
        "encoder.input_proj.0.0.weight", "encoder.input_proj.0.1.weight",
        "encoder.encoder.0.layers.0.self_attn.in_proj_weight", "encoder.encoder.0.layers.0.linear1.weight",
        "encoder.fpn_blocks.0.bottlenecks.0.conv1.conv.weight", "encoder.downsample_convs.0.conv.weight",
        "decoder.input_proj.0.conv.weight", "decoder.decoder.layers.0.cross_attn.sampling_offsets.weight",
        "decoder.decoder.layers.0.norm3.weight", "decoder.denoising_class_embed.weight",
        "decoder.query_pos_head.layers.1.weight", "decoder.enc_output.1.weight", "decoder.enc_score_head.weight",
        "decoder.enc_bbox_head.layers.2.weight", "decoder.dec_score_head.0.weight",
        "decoder.dec_bbox_head.0.layers.2.bias",
    }
    assert expected <= keys, sorted(expected - keys)


def test_checkpoint_for_other_architecture_is_refused(hf_checkpoint):
    name, _, path = hf_checkpoint
    other = "rtdetr_r50vd" if name == "rtdetr_r18vd" else None
    if other is None:
        pytest.skip("checked once")
    with pytest.raises(CheckpointError, match="does not fit"):
        zoo.create_model(other, checkpoint_path=path)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        zoo.create_model(name, num_classes=3, checkpoint_path=path)


# --------------------------------------------------------------------------------------------------
# every registered detector
# --------------------------------------------------------------------------------------------------



def _rtdetr_names() -> list[str]:
    from zoo.registry import model_entrypoint

    return [n for n in zoo.list_models() if model_entrypoint(n).__module__ == "zoo.models.rtdetr.model"]


@pytest.mark.parametrize("name", _rtdetr_names())
def test_forward_and_config_round_trip(name):
    torch.manual_seed(0)
    model = zoo.create_model(name, num_classes=7).eval()
    x = torch.rand(1, 3, 160, 160)  # 525 anchors for the 300 queries: shapes and the round trip, at any size
    with torch.no_grad():
        out = model(x)
    assert out["pred_logits"].shape == (1, 300, 7)
    assert out["pred_boxes"].shape == (1, 300, 4)
    assert torch.isfinite(out["pred_logits"]).all() and (out["pred_boxes"] >= 0).all()
    # the config serialises to JSON and rebuilds the same architecture: same keys, same outputs
    config = json.loads(json.dumps(model.config))
    rebuilt = zoo.create_model_from_config(config).eval()
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config == model.config
    with torch.no_grad():
        again = rebuilt(x)
    torch.testing.assert_close(again["pred_logits"], out["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(again["pred_boxes"], out["pred_boxes"], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["rtdetr_r18vd", "rtdetr_r50vd_m", "rtdetr_mobilenetv3_small",
                                  "rtdetr_r18vd_akconv", "rtdetrv2_r18vd"])
def test_deploy_fuses_without_changing_outputs(name):
    """In float64, where the fusion is exact up to rounding far below the tolerances (in float32 the fused convs
    round differently, by amounts that depend on the CPU's kernels)."""
    torch.manual_seed(0)
    model = zoo.create_model(name).eval().double()
    x = torch.rand(1, 3, 320, 320, dtype=torch.float64)
    with torch.no_grad():  # non-trivial BN statistics so that the fusion has something to fold
        calibrate_batch_norms(model, lambda: model(x))
        model.decoder.enc_score_head.weight.mul_(20)  # well-separated scores: a stable top-k to compare
        feats = model.backbone(x)
        before, enc_before = model(x), model.encoder(feats)
        model.deploy()
        after, enc_after = model(x), model.encoder(feats)
    from zoo.layers import RepVggBlock

    blocks = [m for m in model.modules() if isinstance(m, RepVggBlock)]
    assert all(b.conv is not None and not hasattr(b, "conv1") for b in blocks)
    # every BatchNorm after a convolution in zoo's modules is folded (timm backbones keep theirs)
    folded = [model.encoder, model.decoder] + ([] if "mobilenet" in name else [model.backbone])
    assert not [m for part in folded for m in part.modules() if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d))]
    assert model.deployed
    for a, b in zip(enc_before, enc_after):  # fused convs round differently: relative to the feature scale
        assert (a - b).abs().max() <= 1e-10 * a.abs().max()
    # near-equal encoder scores may leave top-k in another order: compare the queries as a set
    before, after = _by_box(before), _by_box(after)
    assert (before["pred_logits"] - after["pred_logits"]).abs().max() <= 1e-9
    assert (before["pred_boxes"] - after["pred_boxes"]).abs().max() <= 1e-10
    if name != "rtdetr_r18vd":
        return  # random weights amplify rounding differently per network: the channels-last check runs on R18
    with torch.no_grad():  # channels-last memory: same maths, other convolution kernels
        fast = _by_box(model.deploy(channels_last=True)(x.contiguous(memory_format=torch.channels_last)))
    assert (before["pred_logits"] - fast["pred_logits"]).abs().max() <= 1e-9
    assert (before["pred_boxes"] - fast["pred_boxes"]).abs().max() <= 1e-10


def test_deploy_in_float32_is_as_accurate_as_the_unfused_model():
    """Folded BatchNorms round differently in float32: the fused model is no further from the float64 result than
    the unfused one (x1.5 + 1e-6; float32 rounding through ~30 layers is ~1e-4 on logits of size ~7)."""
    torch.manual_seed(0)
    model = zoo.create_model("rtdetr_r18vd").eval()
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        calibrate_batch_norms(model, lambda: model(x))
        model.decoder.enc_score_head.weight.mul_(20)  # well-separated scores: a stable top-k to compare
        truth = _by_box(copy.deepcopy(model).double()(x.double()))
        before = _by_box(model(x))
        after = _by_box(model.deploy()(x))
    for key in ("pred_logits", "pred_boxes"):
        baseline_error = (before[key].double() - truth[key]).abs().max()
        error = (after[key].double() - truth[key]).abs().max()
        assert error <= 1.5 * baseline_error + 1e-6, (key, error, baseline_error)


def _by_box(out: dict) -> dict:
    """Queries of image 0 sorted by their (rounded) box: an order that does not depend on top-k tie-breaking."""
    b = (out["pred_boxes"][0].double() * 1e3).round()
    order = torch.argsort(((b[:, 0] * 1e3 + b[:, 1]) * 1e3 + b[:, 2]) * 1e3 + b[:, 3])
    return {"pred_logits": out["pred_logits"][0, order], "pred_boxes": out["pred_boxes"][0, order]}


def test_training_mode_returns_what_the_loss_needs():
    model = zoo.create_model("rtdetr_r18vd", num_classes=5).train()
    out = model(torch.rand(1, 3, 320, 320))
    assert len(out["aux_outputs"]) == 2  # 3 decoder layers: the last is the main output
    assert out["enc_outputs"]["pred_logits"].shape == (1, 300, 5)
    assert out["pred_boxes"].requires_grad


def test_eval_idx_selects_the_layer():
    """eval_idx=0 on a 3-layer decoder equals a 1-layer decoder with the same first layer and heads."""
    torch.manual_seed(0)
    model = zoo.create_model("rtdetr_r18vd", eval_idx=0).eval()
    single = zoo.create_model("rtdetr_r18vd", num_decoder_layers=1).eval()
    missing, unexpected = single.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(".1." in k or ".2." in k for k in unexpected)
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        first, reference = model(x), single(x)
    torch.testing.assert_close(first["pred_logits"], reference["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(first["pred_boxes"], reference["pred_boxes"], rtol=0, atol=0)


def test_timm_backbone_composes_without_a_new_class():
    model = zoo.create_model("rtdetr_r18vd", backbone="resnet18d", num_classes=3).eval()
    assert model.config["model_args"]["backbone"] == {"name": "timm", "model_name": "resnet18d"}
    assert model.backbone.out_channels == [128, 256, 512]
    with torch.no_grad():
        assert model(torch.rand(1, 3, 256, 320))["pred_logits"].shape == (1, 300, 3)


@pytest.mark.parametrize("bad, error", [
    (torch.rand(3, 320, 320), "shape"),
    (torch.rand(1, 1, 320, 320), "shape"),
    (torch.zeros(1, 3, 320, 320, dtype=torch.uint8), "float"),
    (torch.rand(1, 3, 300, 320), "multiples of 32"),
    ([1, 2, 3], "torch.Tensor"),
])
def test_bad_inputs_get_clear_errors(bad, error):
    model = zoo.create_model("rtdetr_mobilenetv3_small").eval()
    with pytest.raises((TypeError, ValueError), match=error):
        model(bad)
