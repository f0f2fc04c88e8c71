"""LW-DETR / RF-DETR: parity with transformers' LwDetr / RfDetrForObjectDetection both ways (float64, at each
model's own input size), the official rf-detr release layout, the Group-DETR training outputs, parameter counts."""
from __future__ import annotations

import argparse
import copy

import pytest
import torch

import zoo
from zoo.models.lwdetr.convert import zoo_to_rfdetr

from hf_lwdetr import SIZES, hf_model, output_diffs, perturb  # noqa: E402

transformers = pytest.importorskip("transformers")

TOL = 1e-6  # float64, logits and boxes
#: official parameter counts (millions): LW-DETR README, RF-DETR README
PARAMS_M = {"lwdetr_tiny": 12.1, "lwdetr_small": 14.6, "lwdetr_medium": 28.2, "lwdetr_large": 46.8,
            "lwdetr_xlarge": 118.0, "rfdetr_nano": 30.5, "rfdetr_small": 32.1, "rfdetr_medium": 33.7,
            "rfdetr_large": 33.9}


def _image(name: str) -> torch.Tensor:
    return torch.rand(1, 3, SIZES[name], SIZES[name], generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=["rfdetr_nano", "lwdetr_tiny"])
def hf_checkpoint(request, tmp_path_factory):
    """A transformers-initialised model (perturbed weights and BatchNorm statistics) written by save_pretrained."""
    model = hf_model(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return request.param, model, folder / "model.safetensors"


@pytest.mark.slow
def test_transformers_checkpoint_loads_with_equal_outputs(hf_checkpoint):
    """transformers save_pretrained -> zoo.create_model(name, checkpoint_path=...): the same outputs. RfDetr files
    are written in the official rf-detr layout (transformers converts on load), so they load as official-rfdetr."""
    name, hf, path = hf_checkpoint
    model = zoo.create_model(name, checkpoint_path=path).eval()
    assert model.load_report.format == ("official-rfdetr" if name.startswith("rfdetr") else "transformers-lwdetr")
    logits_diff, boxes_diff = output_diffs(hf, model, _image(name))
    assert logits_diff <= TOL and boxes_diff <= TOL, (logits_diff, boxes_diff)


def _random_zoo(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(3)
    model = zoo.create_model(name, **kwargs).eval()
    perturb(model, seed=3)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rfdetr_nano", "lwdetr_tiny"])
def test_save_pretrained_transformers_loads_in_auto_model(name, tmp_path):
    """zoo -> save_pretrained(format="transformers") -> AutoModelForObjectDetection: the same outputs."""
    model = _random_zoo(name, num_classes=7)
    model.save_pretrained(tmp_path, format="transformers")
    hf = transformers.AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == ("RfDetrForObjectDetection" if name.startswith("rf") else "LwDetrForObjectDetection")
    logits_diff, boxes_diff = output_diffs(hf, model, _image(name))
    assert logits_diff <= TOL and boxes_diff <= TOL, (logits_diff, boxes_diff)
    back = zoo.create_model(f"local-dir:{tmp_path}").eval()  # and the folder reads back into zoo, unchanged
    assert back.config["architecture"] == name
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())


def test_official_rfdetr_release_loads(tmp_path):
    """An official rf-detr release ({'model': sd, 'args': Namespace}, with the DINOv2 mask token) loads through
    checkpoint_path with weights_only=True and gives the same outputs to the bit."""
    model = _random_zoo("rfdetr_nano")
    official = zoo_to_rfdetr(model.state_dict())
    assert "backbone.0.encoder.encoder.embeddings.mask_token" in official
    assert "transformer.decoder.layers.0.self_attn.in_proj_weight" in official and "refpoint_embed.weight" in official
    args = argparse.Namespace(encoder="dinov2_windowed_small", resolution=384, out_feature_indexes=[3, 6, 9, 12],
                              num_classes=90, lr=1e-4, pretrain_weights=None)
    path = tmp_path / "rf-detr-nano.pth"
    torch.save({"model": official, "args": args, "epoch": 99}, path)
    loaded = zoo.create_model("rfdetr_nano", checkpoint_path=path).eval()
    assert loaded.load_report.format == "official-rfdetr"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ["rfdetr_nano", "lwdetr_tiny"])
def test_group_detr_training_outputs(name):
    """Training runs the groups side by side (each attending within itself): group 0 of the training outputs is
    the inference output, and the dict has the shape zoo's criteria read (3 groups here, 13 in the configs)."""
    model = _random_zoo(name, group_detr=3)
    size = 320
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    q, g = model.decoder.num_queries, model.decoder.group_detr
    with torch.no_grad():
        ref = model.eval()(x)
        model.train()
        for m in model.modules():  # BatchNorm statistics of the batch would differ from the running ones
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        out = model(x)
    assert out["pred_logits"].shape == (2, q * g, 91) and out["pred_boxes"].shape == (2, q * g, 4)
    assert len(out["aux_outputs"]) == len(model.decoder.layers) - 1
    assert out["enc_outputs"]["pred_logits"].shape == (2, q * g, 91)
    assert out["enc_outputs"]["pred_boxes"].shape == (2, q * g, 4)
    assert (out["pred_logits"][:, :q] - ref["pred_logits"]).abs().max() < 1e-4
    assert (out["pred_boxes"][:, :q] - ref["pred_boxes"]).abs().max() < 1e-5
    assert (out["pred_logits"][:, q:2 * q] - ref["pred_logits"]).abs().max() > 1e-3  # group 1 is another decoder


def test_deploy_and_input_size_checks():
    from zoo.engine.validate import UsageError

    model = _random_zoo("lwdetr_tiny")
    x = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref, fused = model(x), copy.deepcopy(model).deploy()(x)
    assert (ref["pred_logits"] - fused["pred_logits"]).abs().max() <= 1e-4
    assert (ref["pred_boxes"] - fused["pred_boxes"]).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="multiples of 64"):
        model(torch.rand(1, 3, 320, 352))
    with pytest.raises(UsageError, match="smallest square input size is 192"):
        model.check_input_size(64, 64)  # 4 x 4 cells < 100 queries


@pytest.mark.parametrize("name", sorted(PARAMS_M))
def test_parameter_counts_match_the_official_figures(name):
    with torch.device("meta"):
        model = zoo.create_model(name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - PARAMS_M[name]) <= 0.05, params


def test_windowed_vit_refuses_bad_arguments():
    from zoo.models.lwdetr.backbone import WindowedViT

    with pytest.raises(ValueError, match="square number"):
        WindowedViT(style="cae", num_windows=8, window_blocks=(0,), out_indices=(1,), depth=2)
    with pytest.raises(ValueError, match="out_indices"):
        WindowedViT(style="dinov2", depth=4, out_indices=(0, 5))


def test_manifest_entries():
    """transformers' LW-DETR conversions (AnnaZhang/lwdetr_*_60e_coco) and Roboflow's RF-DETR repos (official keys):
    91 outputs by COCO id, Apache-2.0, the published AP; coco is each size's default tag."""
    from zoo.weights.manifest import load_manifest

    aps = {"lwdetr_tiny": 42.6, "lwdetr_small": 48.0, "lwdetr_medium": 52.5, "lwdetr_large": 56.1,
           "lwdetr_xlarge": 58.3, "rfdetr_nano": 48.4, "rfdetr_small": 53.0, "rfdetr_medium": 54.7,
           "rfdetr_large": 56.5}
    manifest = load_manifest()
    entries = {k: e for k, e in manifest.entries.items() if k.startswith(("lwdetr_", "rfdetr_"))}
    assert sorted(entries) == sorted(f"{name}.coco" for name in aps)
    for key, e in entries.items():
        name = key.split(".")[0]
        rf = name.startswith("rfdetr")
        assert (e.format, e.license, e.num_classes, e.label_set) == (
            "official-rfdetr" if rf else "transformers-lwdetr", "apache-2.0", 91, "coco91")
        assert e.hub.repo_id.startswith("Roboflow/rf-detr-" if rf else "AnnaZhang/lwdetr_")
        assert e.metric("box_ap") == aps[name] and e.preprocessing["input_size"][1] == SIZES[name]
        assert manifest.resolve(name).name == key


@pytest.mark.parametrize("postprocess", [False, True])
def test_lwdetr_onnx_export(tmp_path, postprocess):
    """LW-DETR's ViT (16 windows, global blocks across them) exports raw and with postprocessing, dynamic batch,
    verified by zoo.export with onnxruntime at batch 1 and 2 (RF-DETR's: tests/export/test_every_family.py)."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = zoo.create_model("lwdetr_tiny", backbone={"depth": 2, "window_blocks": [0], "out_indices": [0, 1]},
                             decoder={"num_queries": 16, "num_decoder_layers": 1}).eval()
    path = zoo.export(model, tmp_path / "lwdetr.onnx", input_size=128, dynamic_batch=True, postprocess=postprocess)
    assert path.is_file()
