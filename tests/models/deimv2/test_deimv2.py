"""DEIMv2 parity with transformers' Deimv2ForObjectDetection both ways (float64), the official release layouts,
and what the official configs say (parameter counts, input sizes).

transformers 5.x's DEIMv2 is not the official architecture (ReLU box heads and LQE where the official uses SiLU, an
``enc_output`` Linear+LayerNorm before query selection, the query position embedding recomputed per layer, and the
last ViT-Tiny layer normalised): zoo builds the official model by default and reads / writes transformers files with
the matching options (zoo.models.deimv2.convert.TRANSFORMERS_DECODER); test_official_and_transformers_differ checks
that those options matter, so that the parity tests below could fail.
"""
from __future__ import annotations

import copy

import pytest
import torch

import zoo
from zoo.models.deimv2.convert import TRANSFORMERS_DECODER, zoo_to_official

from hf_deimv2 import calibrate_batch_norms, hf_deimv2, output_diffs, perturb  # noqa: E402

transformers = pytest.importorskip("transformers")

TOL = 1e-6  # float64, logits and boxes
#: each model's own input size (official eval_spatial_size); the DINOv3 variants also at a small input (CPU time)
SIZES = {"atto": 320, "femto": 416, "pico": 640, "n": 640, "s": 640, "m": 160, "l": 160, "x": 160}
PARAMS_M = {"atto": 0.5, "femto": 1.0, "pico": 1.5, "n": 3.6, "s": 9.7, "m": 18.1, "l": 32.2, "x": 50.3}


def _image(size: int) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))


#: the default run's parity checks (the others, as heavy as a 640x640 float64 forward, are marked slow)
QUICK = ("atto",)


@pytest.mark.parametrize("size", [pytest.param(s, marks=[] if s in QUICK else [pytest.mark.slow]) for s in SIZES])
def test_transformers_checkpoint_loads_with_equal_outputs(size, tmp_path):
    """A transformers-initialised Deimv2ForObjectDetection (random weights, calibrated BatchNorms) written by
    save_pretrained loads into zoo from the folder (its config.json gives the architecture and transformers'
    options) with equal outputs; the HGNetV2 variants also by name with checkpoint_path and those options."""
    hf_model = hf_deimv2(size, num_classes=7, calibration_size=min(SIZES[size], 320))
    hf_model.save_pretrained(tmp_path)
    model = zoo.create_model(f"local-dir:{tmp_path}").eval()
    assert model.config["architecture"] == f"deimv2_{size}"
    x = _image(SIZES[size])
    logits_diff, boxes_diff = output_diffs(hf_model, model, x)
    assert logits_diff <= TOL and boxes_diff <= TOL, (logits_diff, boxes_diff)
    with torch.no_grad():
        assert model(x)["pred_logits"].std() > 0.1  # a comparison of non-trivial outputs
    if size in ("atto", "femto", "pico", "n"):
        by_name = zoo.create_model(f"deimv2_{size}", num_classes=7, checkpoint_path=tmp_path / "model.safetensors",
                                   **TRANSFORMERS_DECODER)
        assert by_name.load_report.format == "transformers-deimv2"
        args = copy.deepcopy(model.config["model_args"])
        assert args["decoder"].pop("up") == 0.5  # the config's explicit default
        assert by_name.config["model_args"] == args
        reference = model.state_dict()
        assert all(torch.equal(t, reference[k]) for k, t in by_name.state_dict().items())


def _random_zoo(name: str, calibration: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(3)
    model = zoo.create_model(name, num_classes=7, **kwargs).eval()
    perturb(model)
    with torch.no_grad():
        calibrate_batch_norms(model, lambda: model(torch.rand(1, 3, calibration, calibration)))
    return model


@pytest.mark.parametrize("size", ["atto", pytest.param("n", marks=pytest.mark.slow), pytest.param("s", marks=pytest.mark.slow),
                                  pytest.param("x", marks=pytest.mark.slow)])
def test_save_pretrained_transformers_loads_in_auto_model(size, tmp_path):
    """zoo (transformers' options) -> save_pretrained(format="transformers") -> AutoModelForObjectDetection. For
    the ViT-Tiny variants that includes transformers' backbone: LayerScale (at 1) and the last block's norm."""
    options = dict(TRANSFORMERS_DECODER)
    if size in "sm":
        vit = zoo.create_model(f"deimv2_{size}").config["model_args"]["backbone"]["vit"]
        options["backbone"] = {"vit": dict(vit, feature_norm="final", layer_scale=1.0)}
    model = _random_zoo(f"deimv2_{size}", min(SIZES[size], 320), **options)
    model.save_pretrained(tmp_path, format="transformers")
    hf_model = transformers.AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    assert type(hf_model).__name__ == "Deimv2ForObjectDetection"
    logits_diff, boxes_diff = output_diffs(hf_model, model, _image(SIZES[size]))
    assert logits_diff <= TOL and boxes_diff <= TOL, (logits_diff, boxes_diff)


def test_official_model_is_refused_in_the_transformers_layout(tmp_path):
    from zoo.weights.transformers_format import UnrepresentableConfigError

    with pytest.raises(UnrepresentableConfigError, match="head_act"):
        zoo.create_model("deimv2_atto").save_pretrained(tmp_path, format="transformers")


@pytest.fixture(scope="module")
def atto_transformers_options():
    return _random_zoo("deimv2_atto", 320, **TRANSFORMERS_DECODER)


@pytest.mark.parametrize("option", sorted(TRANSFORMERS_DECODER))
def test_official_and_transformers_differ(option, atto_transformers_options):
    """Each of transformers' decoder options changes the outputs of the same weights (so parity is not vacuous);
    the official values are what deimv2_atto's config records."""
    model = atto_transformers_options
    official = zoo.create_model("deimv2_atto").config["model_args"]["decoder"][option]
    assert official != TRANSFORMERS_DECODER[option]
    other = zoo.create_model("deimv2_atto", num_classes=7, **dict(TRANSFORMERS_DECODER, **{option: official})).eval()
    other.load_state_dict(model.state_dict(), strict=False)
    x = _image(320)
    with torch.no_grad():  # float32 rounding of these outputs is ~1e-6; the options move them much further
        a, b = model(x), other(x)
        diff = max((a[k] - b[k]).abs().max().item() for k in ("pred_logits", "pred_boxes"))
    assert diff > 2e-5, diff


@pytest.mark.parametrize("size", ["atto", pytest.param("s", marks=pytest.mark.slow)])
def test_official_release_layout_loads(size, tmp_path):
    """The official training checkpoint ({'ema': {'module': sd}}, anchors stored, ViT-Tiny under ``_model.``) and
    a Hub-style file (PyTorchModelHubMixin's safetensors: tensors shared by reference stored once) load through
    checkpoint_path with outputs equal to the bit, at a size other than the stored anchors'."""
    from safetensors.torch import save_model

    model = _random_zoo(f"deimv2_{size}", 160)
    official = zoo_to_official(model.state_dict(), tiny_vit=size == "s")
    official["decoder.anchors"] = torch.zeros(1, 10, 4)
    official["decoder.valid_mask"] = torch.ones(1, 10, 1, dtype=torch.bool)
    assert "decoder.decoder.up" in official
    path = tmp_path / f"deimv2_{size}.pth"
    torch.save({"ema": {"module": official, "updates": torch.tensor(1)}, "model": official}, path)
    x = _image(160)
    with torch.no_grad():
        ref = model(x)
        loaded = zoo.create_model(f"deimv2_{size}", num_classes=7, checkpoint_path=path).eval()
        assert loaded.load_report.format == "official-deimv2"
        out = loaded(x)
        assert torch.equal(ref["pred_logits"], out["pred_logits"]) and torch.equal(ref["pred_boxes"], out["pred_boxes"])
        if size == "atto":  # the Hub file: a tensor shared by reference is stored under one of its names
            from safetensors.torch import save_file

            hub = {k: v.contiguous() for k, v in official.items() if not k.startswith(("decoder.dec_bbox_head.0.",
                   "decoder.dec_bbox_head.1.")) and k not in ("decoder.up", "decoder.reg_scale")}
            save_file(hub, str(tmp_path / "model.safetensors"))
            hub_loaded = zoo.create_model("deimv2_atto", num_classes=7,
                                          checkpoint_path=tmp_path / "model.safetensors").eval()
            assert hub_loaded.load_report.format == "official-deimv2"
            assert torch.equal(ref["pred_logits"], hub_loaded(x)["pred_logits"])


@pytest.mark.parametrize("size", sorted(PARAMS_M))
def test_parameter_counts_match_the_official_figures(size):
    with torch.device("meta"):
        model = zoo.create_model(f"deimv2_{size}")
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - PARAMS_M[size]) <= 0.05 * PARAMS_M[size], params


def test_input_sizes_and_preprocessing():
    """Official eval sizes; the DINOv3 variants normalise with ImageNet mean/std (their val transforms)."""
    for size, pixels in {"atto": 320, "femto": 416, "pico": 640, "n": 640, "s": 640, "x": 640}.items():
        cfg = zoo.create_model(f"deimv2_{size}").pretrained_cfg
        assert cfg["input_size"] == (3, pixels, pixels)
        assert (cfg["mean"] is None) == (size in ("atto", "femto", "pico", "n"))


def test_deploy_and_onnx_export_with_postprocess(tmp_path):
    """deploy() keeps the outputs; the postprocess=True ONNX graph is verified by zoo.export with onnxruntime."""
    pytest.importorskip("onnxruntime")
    model = _random_zoo("deimv2_atto", 320)
    x, model64 = _image(320).double(), copy.deepcopy(model).double()  # float64: no near-tied top-k swaps
    with torch.no_grad():
        ref, fused = model64(x), copy.deepcopy(model64).deploy()(x)
    torch.testing.assert_close(fused["pred_logits"], ref["pred_logits"], rtol=0, atol=1e-9)
    torch.testing.assert_close(fused["pred_boxes"], ref["pred_boxes"], rtol=0, atol=1e-9)
    assert zoo.export(model, tmp_path / "deimv2_atto.onnx", input_size=320, postprocess=True).is_file()


#: the official README's GFLOPs; its counter does not see the ViT's scaled_dot_product_attention, zoo's does
GFLOPS = {"atto": 0.8, "femto": 1.7, "pico": 5.2, "n": 6.8, "s": 25.6, "m": 52.2, "l": 96.7, "x": 151.6}


@pytest.mark.parametrize("size", [pytest.param(s, marks=[pytest.mark.slow] if s in "mlx" else []) for s in GFLOPS])
def test_gflops_match_the_official_figures(size):
    """zoo's count (one multiply-add = 2 FLOPs) within 5% of the official table, once the ViT's attention matmuls
    (QK^T and AV: 4 N^2 d per block, N tokens of width d) that the official count leaves out are taken off."""
    from zoo.models.complexity import model_complexity

    gflops = model_complexity(f"deimv2_{size}")["gflops"]
    if size in "smlx":
        with torch.device("meta"):
            vit = zoo.create_model(f"deimv2_{size}").backbone.dinov3
        tokens = 1 + (vit.storage_tokens.shape[1] if vit.storage_tokens is not None else 0) + 40 * 40
        gflops -= 4 * tokens ** 2 * vit.embed_dim * len(vit.blocks) / 1e9
    assert abs(gflops - GFLOPS[size]) <= 0.05 * GFLOPS[size] + 0.01, gflops


def test_manifest_entries():
    """Intellindust's eight Hub repos (PyTorchModelHubMixin files in the official layout), coco80, the published AP;
    Apache-2.0 for the HGNetV2 ones, 'other' (DINOv3 License on the backbone) for the DINOv3-derived ones."""
    from zoo.weights.manifest import load_manifest

    entries = {k: e for k, e in load_manifest().entries.items() if k.startswith("deimv2_")}
    assert sorted(entries) == sorted(f"deimv2_{s}.coco" for s in SIZES)
    aps = {"atto": 23.8, "femto": 31.0, "pico": 38.5, "n": 43.0, "s": 50.9, "m": 53.0, "l": 56.0, "x": 57.8}
    for name, e in entries.items():
        size = name[len("deimv2_"):-len(".coco")]
        assert (e.format, e.num_classes, e.label_set) == ("official-deimv2", 80, "coco80")
        assert e.license == ("other" if size in "smlx" else "apache-2.0")
        assert e.hub.repo_id.startswith("Intellindust/DEIMv2_") and e.metric("box_ap") == aps[size]
        pixels = {"atto": 320, "femto": 416}.get(size, 640)  # official eval_spatial_size
        assert list(e.preprocessing["input_size"]) == [3, pixels, pixels]
        assert (e.preprocessing["mean"] is None) == (size not in "smlx")  # DINOv3 variants: ImageNet mean/std
