"""RT-DETRv2 parity with transformers' RTDetrV2ForObjectDetection (random weights, save_pretrained files), the
official v2 checkpoint layout, discrete sampling, and v1/v2 checkpoints never loading into each other."""
from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo.weights.checkpoint import CheckpointError, convert_state_dict, load_checkpoint, read_checkpoint
from zoo.models.rtdetr.convert import transformers_to_zoo

from hf_rtdetr import hf_rtdetrv2, output_diffs, saved  # noqa: E402

LOGITS_TOL, BOXES_TOL = 1e-4, 1e-5


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def r18(tmp_path_factory, single_thread):
    return saved("rtdetrv2_r18vd", hf_rtdetrv2("rtdetrv2_r18vd"), tmp_path_factory)


@pytest.fixture(scope="module")
def r50(tmp_path_factory, single_thread):
    return saved("rtdetrv2_r50vd", hf_rtdetrv2("rtdetrv2_r50vd"), tmp_path_factory)


# R18 at 320 and at a non-square size; R50 (bottleneck blocks, expansion 1.0, 6 layers) with batch 2
@pytest.mark.parametrize("which, shape", [("r18", (1, 3, 320, 320)), ("r18", (1, 3, 480, 640)),
                                          ("r50", (2, 3, 320, 320))], ids=["r18-320", "r18-480x640", "r50-batch2"])
def test_parity_with_transformers(request, which, shape):
    name, hf_model, path = request.getfixturevalue(which)
    model = zoo.create_model(name, checkpoint_path=path).eval()
    assert model.load_report.format == "transformers-rtdetrv2"
    torch.manual_seed(1)
    logits_diff, boxes_diff = output_diffs(hf_model, model, torch.rand(*shape))
    assert logits_diff <= LOGITS_TOL, f"{name} logits differ by {logits_diff}"
    assert boxes_diff <= BOXES_TOL, f"{name} boxes differ by {boxes_diff}"


@contextlib.contextmanager
def _hf_method(hf_model, method):
    """Switch transformers' deformable attention to ``method`` (its config.decoder_method) for the block."""
    attns = [m for m in hf_model.modules() if type(m).__name__ == "RTDetrV2MultiscaleDeformableAttention"]
    assert attns
    for m in attns:
        m.method = method
    try:
        yield
    finally:
        for m in attns:
            m.method = "default"


def test_discrete_sampling_matches_transformers(r18):
    """cross_attn_method="discrete" (GridSample-free) == transformers' decoder_method="discrete", on a
    rectangular input (x and y are clamped to different sizes).

    Nearest-pixel sampling is discontinuous: the ~1e-6 differences the two implementations accumulate before the
    decoder can move a sampling point across a pixel boundary, which changes that query's output. So all but 1% of
    the queries must match at the usual tolerances (here 2 of 300 differ); the sampling kernel itself matches
    transformers exactly on identical inputs (tests/layers/test_ms_deform_attn.py).
    """
    name, hf_model, path = r18
    model = zoo.create_model(name, cross_attn_method="discrete", checkpoint_path=path).eval()
    torch.manual_seed(3)
    x = torch.rand(1, 3, 480, 640)
    with torch.no_grad(), _hf_method(hf_model, "discrete"):
        ref, out = hf_model(pixel_values=x), model(x)
    with torch.no_grad():
        bilinear = hf_model(pixel_values=x)
    logits_diff = (ref.logits - out["pred_logits"]).abs().amax(-1)
    boxes_diff = (ref.pred_boxes - out["pred_boxes"]).abs().amax(-1)
    mismatched = int(((logits_diff > LOGITS_TOL) | (boxes_diff > BOXES_TOL)).sum())
    assert mismatched <= 0.01 * logits_diff.numel(), f"{mismatched} of {logits_diff.numel()} queries differ"
    # not vacuous: nearest-pixel sampling changes the outputs of (almost) every query
    assert ((bilinear.logits - out["pred_logits"]).abs().amax(-1) > 100 * LOGITS_TOL).float().mean() > 0.9


def _official_v2(zoo_sd: dict[str, torch.Tensor], input_size: int = 640) -> dict[str, torch.Tensor]:
    """Zoo keys -> the official RT-DETRv2 release keys (written out here, independently of the converter), plus
    the anchors / valid_mask buffers an official model built for ``input_size`` stores."""
    out = {}
    for key, value in zoo_sd.items():
        key = re.sub(r"^encoder\.input_proj\.(\d+)\.0\.", r"encoder.input_proj.\1.conv.", key)
        key = re.sub(r"^encoder\.input_proj\.(\d+)\.1\.", r"encoder.input_proj.\1.norm.", key)
        key = re.sub(r"^decoder\.enc_output\.0\.", "decoder.enc_output.proj.", key)
        key = re.sub(r"^decoder\.enc_output\.1\.", "decoder.enc_output.norm.", key)
        out[key] = value
    tokens = sum((input_size // s) ** 2 for s in (8, 16, 32))
    out["decoder.anchors"] = torch.full((1, tokens, 4), float("inf"))  # a stale size: must not be used
    out["decoder.valid_mask"] = torch.zeros(1, tokens, 1, dtype=torch.bool)
    return out


def _load_official(name: str, path: Path) -> tuple[torch.nn.Module, str]:
    """read_checkpoint -> layout detection -> strict load (zoo.weights.checkpoint.load_checkpoint)."""
    model = zoo.create_model(name).eval()
    return model, load_checkpoint(model, path).format


def test_official_v2_layout_loads(r18, tmp_path):
    name, hf_model, path = r18
    official = _official_v2(transformers_to_zoo(read_checkpoint(path)))
    assert {"encoder.input_proj.0.conv.weight", "decoder.enc_output.proj.weight",
            "decoder.decoder.layers.0.cross_attn.num_points_scale"} <= set(official)
    pth = tmp_path / "rtdetrv2_r18vd_official.pth"
    torch.save({"ema": {"module": official, "updates": torch.tensor(1)}}, pth)
    model, fmt = _load_official(name, pth)
    assert fmt == "official-rtdetrv2"
    torch.manual_seed(2)
    logits_diff, boxes_diff = output_diffs(hf_model, model, torch.rand(1, 3, 320, 320))
    assert logits_diff <= LOGITS_TOL and boxes_diff <= BOXES_TOL, (logits_diff, boxes_diff)
    # unrelated extra keys are still refused: only the anchor buffers are dropped
    torch.save({"ema": {"module": {**official, "decoder.extra_buffer": torch.zeros(1)}}}, pth)
    with pytest.raises(CheckpointError, match="unexpected: decoder.extra_buffer"):
        _load_official(name, pth)


def test_official_v2_layout_loads_through_create_model(r18, tmp_path):
    name, _, path = r18
    pth = tmp_path / "official.pth"
    torch.save({"ema": {"module": _official_v2(transformers_to_zoo(read_checkpoint(path)))}}, pth)
    assert zoo.create_model(name, checkpoint_path=pth).load_report.format == "official-rtdetrv2"


def test_v1_and_v2_checkpoints_are_told_apart(r18, tmp_path):
    """Same module structure, but a v2 checkpoint never loads silently into a v1 model, nor the reverse."""
    name, _, path = r18
    v2 = read_checkpoint(path)
    v1 = {k: v for k, v in v2.items() if not k.endswith("n_points_scale")}  # the transformers v1 layout
    assert convert_state_dict("rtdetr", v2)[1] == "transformers-rtdetrv2"
    assert convert_state_dict("rtdetr", v1)[1] == "transformers-rtdetr"
    zoo_v2 = transformers_to_zoo(v2)
    zoo_v1 = transformers_to_zoo(v1)
    assert convert_state_dict("rtdetr", zoo_v1)[1] == "official-rtdetr"
    assert convert_state_dict("rtdetr", _official_v2(zoo_v2))[1] == "official-rtdetrv2"

    with pytest.raises(CheckpointError, match=r"unexpected: decoder\.decoder\.layers\.0\.cross_attn\.num_points_scale"):
        zoo.create_model("rtdetr_r18vd", checkpoint_path=path)
    save_file(v1, tmp_path / "v1.safetensors")
    with pytest.raises(CheckpointError, match=r"missing: decoder\.decoder\.layers\.0\.cross_attn\.num_points_scale"):
        zoo.create_model(name, checkpoint_path=tmp_path / "v1.safetensors")


def test_v2_configs():
    """Official rtdetrv2_pytorch configs: the v1 backbone / encoder / depths, decoder with num_points [4, 4, 4]."""
    def model_args(name):
        with torch.device("meta"):  # configs only: no memory, no init time
            return zoo.create_model(name).config["model_args"]

    names = ["rtdetrv2_r18vd", "rtdetrv2_r34vd", "rtdetrv2_r50vd_m", "rtdetrv2_r50vd", "rtdetrv2_r101vd"]
    assert sorted(zoo.list_models("rtdetrv2_*")) == sorted(names)
    for name in names:
        v2, v1 = model_args(name), model_args(name.replace("rtdetrv2_", "rtdetr_"))
        v2_decoder = v2.pop("decoder")
        assert v2_decoder == {**v1.pop("decoder"), "num_points": [4, 4, 4], "cross_attn_method": "default",
                              "persistent_points_scale": True}
        assert v2 == v1
