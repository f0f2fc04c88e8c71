"""zoo <-> transformers: save_pretrained(format="transformers") loads in AutoModelForObjectDetection with the same
outputs (float64), pipeline("object-detection") finds what model.predict finds, and transformers-layout folders and
Hub repos load back into zoo (local-dir:, hf-hub: through the local Hub servers)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import zoo
from zoo.weights.transformers_format import UnrepresentableConfigError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models" / "rtdetr"))
from hf_rtdetr import calibrate_batch_norms  # noqa: E402

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("single_thread")

DEMO_IMAGE = Path(zoo.__file__).parent / "assets" / "shapes_demo.png"
_SMALL = dict(encoder={"hidden_dim": 64, "dim_feedforward": 64, "num_heads": 4},
              decoder={"hidden_dim": 64, "dim_feedforward": 64, "num_decoder_layers": 2, "num_queries": 20,
                       "num_heads": 4, "num_denoising": 10})
#: case -> (architecture, model_args); together: v1 and v2, PResNet basic and bottleneck (frozen BN), timm,
#: discrete sampling, fewer CSP blocks than transformers has (padded), DETR
CASES = {
    "rtdetr_r18vd": ("rtdetr_r18vd", _SMALL),
    "rtdetrv2_r50vd": ("rtdetrv2_r50vd", _SMALL),
    "rtdetrv2_r18vd_discrete": ("rtdetrv2_r18vd", {**_SMALL, "decoder": {**_SMALL["decoder"],
                                                                         "cross_attn_method": "discrete"}}),
    "rtdetr_mnv3_small_1block": ("rtdetr_mobilenetv3_small",
                                 {**_SMALL, "backbone": "mobilenetv3_small_050",
                                  "encoder": {**_SMALL["encoder"], "depth_mult": 0.34}}),
    "detr_r18": ("detr_resnet50", dict(backbone={"model_name": "resnet18"}, hidden_dim=32, num_queries=10,
                                       encoder={"num_encoder_layers": 1, "dim_feedforward": 64, "nhead": 2},
                                       decoder={"num_decoder_layers": 2, "dim_feedforward": 64, "nhead": 2})),
}


def _random_model(architecture: str, model_args: dict) -> torch.nn.Module:
    """Every weight perturbed (default init leaves heads at zero) and BatchNorm statistics from data."""
    torch.manual_seed(0)
    model = zoo.create_model(architecture, num_classes=3, **model_args)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not key.endswith(("running_mean", "running_var", "num_points_scale")):
                tensor.add_(torch.randn_like(tensor) * (0.15 if "class_embed" in key else 0.02))
        calibrate_batch_norms(model, lambda: model(torch.rand(2, 3, 128, 128)))
    model.pretrained_cfg["label_names"] = ["cat", "dog", "bird"]
    return model.eval()


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory, single_thread):
    model = _random_model(*CASES[request.param]).double()
    folder = tmp_path_factory.mktemp(request.param)
    # float64 weights: the padded CSP blocks fold an offset of 24 into a BatchNorm mean, which float32 files round
    # to ~1e-5 (see docs/weights.md); the comparison below is of the architectures, in float64
    model.save_pretrained(folder, format="transformers")
    return request.param, model, folder


def _outputs(model, x, hf: bool):
    with torch.no_grad():
        if hf:
            out = model(pixel_values=x)
            return out.logits, out.pred_boxes
        out = model(x)
        return out["pred_logits"], out["pred_boxes"]


def test_transformers_loads_the_export_with_the_same_outputs(exported):
    name, model, folder = exported
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json"}
    hf, info = transformers.AutoModelForObjectDetection.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched key
    assert hf.config.id2label == {0: "cat", 1: "dog", 2: "bird"}
    x = torch.rand(1, 3, 128, 160, dtype=torch.float64)  # non-square: rows and columns must not be swapped
    ours, theirs = _outputs(model, x, hf=False), _outputs(hf.double().eval(), x, hf=True)
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max().item() <= 1e-6, f"{name}: zoo and transformers differ"


def test_export_loads_back_into_zoo(exported):
    name, model, folder = exported
    loaded = zoo.create_model(f"local-dir:{folder}").eval().double()
    assert loaded.load_report.format.startswith("transformers-")
    assert loaded.pretrained_cfg["label_names"] == ["cat", "dog", "bird"]
    for key in ("input_size", "mean", "std", "resize_mode"):
        assert loaded.pretrained_cfg[key] == model.pretrained_cfg[key], key
    x = torch.rand(1, 3, 128, 160, dtype=torch.float64)
    if "1block" in name:  # transformers has 3 blocks per CSP layer: the two padding blocks come back as blocks
        assert loaded.config["model_args"]["encoder"]["depth_mult"] == 1.0
        # loading casts to float32 (the model's dtype): the offset folded into conv3's BatchNorm is rounded
        assert all((a - b).abs().max() <= 1e-4 for a, b in zip(_outputs(model, x, False), _outputs(loaded, x, False)))
    else:
        for part, key in (("decoder", "num_queries"), ("decoder", "num_decoder_layers"), ("encoder", "hidden_dim")):
            args = model.config["model_args"]
            if part in args and key in args[part]:
                assert loaded.config["model_args"][part][key] == args[part][key]
        torch.testing.assert_close(_outputs(loaded, x, False), _outputs(model, x, False), rtol=0, atol=0)


@pytest.mark.parametrize("exported", ["rtdetr_r18vd", "rtdetr_mnv3_small_1block", "detr_r18"], indirect=True)
def test_reads_what_transformers_writes(exported, tmp_path):
    """A folder written by transformers' own save_pretrained (its full config.json) loads into zoo."""
    name, model, folder = exported
    hf = transformers.AutoModelForObjectDetection.from_pretrained(folder).float()
    hf.save_pretrained(tmp_path)
    loaded = zoo.create_model(f"local-dir:{tmp_path}").eval()
    x = torch.rand(1, 3, 96, 128)
    for a, b in zip(_outputs(loaded, x, False), _outputs(hf.eval(), x, True)):
        assert (a - b).abs().max() <= 1e-4


def test_pipeline_finds_what_predict_finds(tmp_path):
    """The bundled demo weights in transformers' object-detection pipeline: same labels, boxes within 2 px."""
    model = zoo.create_model("rtdetr_mobilenetv3_small.shapes_demo").eval()
    model.save_pretrained(tmp_path, format="transformers")
    ours = model.predict(str(DEMO_IMAGE), score_threshold=0.5)
    found = transformers.pipeline("object-detection", model=str(tmp_path))(str(DEMO_IMAGE), threshold=0.5)
    assert len(ours) >= 3 and len(found) == len(ours)
    found = sorted(found, key=lambda d: -d["score"])
    assert [d["label"] for d in found] == ours.label_names
    for box, d in zip(ours.boxes.tolist(), found):
        theirs = [d["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")]  # transformers rounds down to pixels
        assert max(abs(a - b) for a, b in zip(box, theirs)) <= 2, (box, theirs)


def test_push_and_load_from_the_hub(upload_server, hub_env, repo_id, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_local_test_token")  # the local upload server accepts any token
    model = _random_model(*CASES["rtdetr_r18vd"])
    zoo.push_to_hub(model, repo_id, endpoint=upload_server.endpoint, format="transformers")
    loaded = zoo.create_model(f"hf-hub:{repo_id}").eval()
    assert loaded.load_report.format == "transformers-rtdetr"
    assert loaded.pretrained_cfg["label_names"] == ["cat", "dog", "bird"]
    assert loaded.pretrained_cfg["hf_hub_id"] == repo_id
    x = torch.rand(1, 3, 96, 96)
    torch.testing.assert_close(_outputs(loaded, x, False), _outputs(model, x, False), rtol=0, atol=0)
    # fine-tuning a transformers repo: another class list keeps the matching rows
    adapted = zoo.create_model(f"hf-hub:{repo_id}", class_names=["dog", "cat"])
    assert adapted.num_classes == 2 and adapted.pretrained_cfg["label_names"] == ["dog", "cat"]


@pytest.mark.parametrize("architecture, args, field", [
    ("rtdetr_r50vd_m", {}, "decoder.eval_idx"),
    ("rtdetr_r18vd_akconv", {}, "encoder.fusion_block"),
    ("rtdetr_r18vd", {"encoder": {"pe_layout": "official"}}, "encoder.pe_layout"),
    ("rtdetr_r18vd", {"encoder": {"depth_mult": 2.0}}, "encoder.depth_mult"),
])
def test_export_refuses_what_transformers_cannot_express(tmp_path, architecture, args, field):
    with torch.device("meta"):
        model = zoo.create_model(architecture, **args)
    with pytest.raises(UnrepresentableConfigError, match=field.replace(".", r"\.")):
        model.save_pretrained(tmp_path, format="transformers")


@pytest.mark.parametrize("exported", ["rtdetr_r18vd"], indirect=True)
@pytest.mark.parametrize("field, value", [("eval_size", [640, 640]), ("learn_initial_query", True),
                                          ("decoder_offset_scale", 1.0)])
def test_import_names_the_field_zoo_cannot_build(exported, tmp_path, field, value):
    _, _, folder = exported
    for item in folder.iterdir():
        shutil.copy(item, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(UnrepresentableConfigError, match=f"zoo cannot build .*{field}"):
        zoo.create_model(f"local-dir:{tmp_path}")


@pytest.mark.parametrize("exported", ["detr_r18"], indirect=True)
def test_detr_with_transformers_auxiliary_loss_is_refused(exported, tmp_path):
    _, _, folder = exported
    for item in folder.iterdir():
        shutil.copy(item, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "auxiliary_loss": True}))
    with pytest.raises(UnrepresentableConfigError, match="auxiliary_loss"):
        zoo.create_model(f"local-dir:{tmp_path}")


@pytest.mark.parametrize("exported", ["rtdetr_r18vd"], indirect=True)
def test_the_unverified_warning_gives_advice_that_helps(exported, caplog):
    """Issue 21 item 21: loading save_pretrained(format="transformers")'s folder said "save it again with
    save_pretrained to record one", which writes the same folder again."""
    import logging

    with caplog.at_level(logging.WARNING, logger="zoo.weights"):
        zoo.create_model(f"local-dir:{exported[2]}")
    assert "loaded unverified" in caplog.text
    assert "save it again" not in caplog.text and "zoo's layout" in caplog.text
