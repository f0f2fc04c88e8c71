"""Loading rules: class-head adaptation, strictness, refusing code-running pickles, ImageNet backbones."""
from __future__ import annotations

import os

import pytest
import torch
from local_hub import ARCH, assert_same_state, manifest_entry, tiny_rtdetr_args

import zoo
from zoo.weights.checkpoint import CheckpointError
from zoo.layers.init import prior_prob_bias
from zoo.weights.download import sha256_file
from zoo.weights.sources import load_pretrained_backbone
from zoo.weights.publish import save_pretrained

PRIOR = prior_prob_bias(0.01)
#: a class head with another number of rows runs another GEMM shape, which rounds differently (~1e-7 relative)
GEMM_TOL = dict(rtol=0, atol=1e-5)
RTDETR_HEADS = ("decoder.enc_score_head", "decoder.dec_score_head", "decoder.denoising_class_embed")


@pytest.fixture
def tiny_entry(local_hub, hub_env, use_manifest, tiny_weights, repo_id):
    """``ARCH.tiny``: the first tiny model (classes person, car, dog) on the local Hub."""
    local_hub.commit(repo_id, {"model.safetensors": tiny_weights[0].path})
    use_manifest({f"{ARCH}.tiny": tiny_weights[0].entry(repo_id)})
    return tiny_weights[0]


def test_num_classes_reinitialises_only_the_class_heads(tiny_entry):
    source = tiny_entry.model
    model = zoo.create_model(f"{ARCH}.tiny", num_classes=5)
    assert model.num_classes == 5 and model.decoder.enc_score_head.out_features == 5
    state, before = model.state_dict(), source.state_dict()
    for key in state:
        if not key.startswith(RTDETR_HEADS):
            assert torch.equal(state[key], before[key]), key
    report = model.load_report
    assert sorted(report.reinitialized) == sorted(k for k in state if k.startswith(RTDETR_HEADS))
    assert not report.adapted and not report.missing and not report.unexpected
    for head in [model.decoder.enc_score_head, *model.decoder.dec_score_head]:
        assert torch.allclose(head.bias, torch.full((5,), PRIOR))  # prior-probability bias
    # the denoising padding embedding (the row after the classes) is kept
    embed, source_embed = model.decoder.denoising_class_embed.weight, source.decoder.denoising_class_embed.weight
    torch.testing.assert_close(embed[5], source_embed[3], rtol=0, atol=0)
    assert model.pretrained_cfg["label_names"] is None and model.pretrained_cfg["base_weights"] == f"{ARCH}.tiny"
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 128, 128))["pred_logits"].shape == (1, 20, 5)


def test_class_names_keep_pretrained_rows(tiny_entry):
    source = tiny_entry.model
    x = torch.rand(1, 3, 128, 128)
    # a permutation of all classes: same query selection, so the logits are exactly the permuted columns
    permuted = zoo.create_model(f"{ARCH}.tiny", class_names=["dog", "person", "car"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(permuted(x)["pred_logits"], source(x)["pred_logits"][..., [2, 0, 1]], **GEMM_TOL)
    assert permuted.pretrained_cfg["label_names"] == ["dog", "person", "car"]
    # a subset plus a new class: known rows copied, the new one re-initialised
    model = zoo.create_model(f"{ARCH}.tiny", class_names=["dog", "bicycle", "person"])
    for new, old in ((model.decoder.enc_score_head, source.decoder.enc_score_head),
                     (model.decoder.dec_score_head[1], source.decoder.dec_score_head[1])):
        torch.testing.assert_close(new.weight[[0, 2]], old.weight[[2, 0]], rtol=0, atol=0)
        torch.testing.assert_close(new.bias[[0, 2]], old.bias[[2, 0]], rtol=0, atol=0)
        assert new.bias[1].item() == pytest.approx(PRIOR)
    embed, old_embed = model.decoder.denoising_class_embed.weight, source.decoder.denoising_class_embed.weight
    torch.testing.assert_close(embed[[0, 2, 3]], old_embed[[2, 0, 3]], rtol=0, atol=0)  # row 3: padding
    assert len(model.load_report.adapted) == 7
    assert "2 of 3 classes keep their pretrained rows, 1 is new" in model.load_report.notes[-1]
    with pytest.raises(ValueError, match="num_classes=4 but 3 class_names"):
        zoo.create_model(f"{ARCH}.tiny", num_classes=4, class_names=["dog", "car", "person"])


def test_detr_class_embed_keeps_no_object_row(tmp_path):
    torch.manual_seed(0)
    args = dict(backbone={"model_name": "resnet10t"}, encoder={"num_encoder_layers": 1, "dim_feedforward": 64},
                decoder={"num_decoder_layers": 1, "dim_feedforward": 64}, hidden_dim=32, num_queries=10)
    source = zoo.create_model("detr_resnet50", num_classes=4, **args).eval()
    source.pretrained_cfg["label_names"] = ["cat", "dog", "cow", "owl"]
    save_pretrained(source, tmp_path)
    subset = zoo.create_model(f"local-dir:{tmp_path}", class_names=["owl", "cat"]).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():  # DETR's queries do not depend on the classes: the columns are the pretrained ones
        torch.testing.assert_close(subset(x)["pred_logits"], source(x)["pred_logits"][..., [3, 0, 4]], **GEMM_TOL)
    fresh = zoo.create_model(f"local-dir:{tmp_path}", num_classes=2)
    assert fresh.load_report.reinitialized == ["class_embed.weight", "class_embed.bias"]
    assert torch.allclose(fresh.class_embed.bias[:2], torch.full((2,), PRIOR))
    torch.testing.assert_close(fresh.class_embed.weight[2], source.class_embed.weight[4])  # no-object kept
    torch.testing.assert_close(fresh.class_embed.bias[2], source.class_embed.bias[4])


def test_strict_by_default_names_the_keys(tmp_path, tiny_weights):
    save_pretrained(tiny_weights[0].model, tmp_path)
    with pytest.raises(CheckpointError, match=r"(?s)missing: decoder\.decoder\.layers\.2\..*num_classes or class_"):
        zoo.create_model(f"local-dir:{tmp_path}", num_decoder_layers=3)
    model = zoo.create_model(f"local-dir:{tmp_path}", num_decoder_layers=3, strict=False).eval()
    assert model.load_report.missing and all(".2." in k for k in model.load_report.missing)
    assert_same_state(model.backbone, tiny_weights[0].model.backbone)
    with torch.no_grad():  # what the file lacks was initialised by the model, not left on the meta device
        assert torch.isfinite(model(torch.rand(1, 3, 128, 128))["pred_logits"]).all()
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 10)  # does not match config.json's record
    with pytest.raises(CheckpointError, match="does not match the sha256 and size recorded in its config.json"):
        zoo.create_model(f"local-dir:{tmp_path}")


class _RunsCode:
    marker = ""

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_would_run_code_is_refused(local_hub, hub_env, use_manifest, tiny_weights, repo_id, tmp_path):
    marker = tmp_path / "code-ran"
    _RunsCode.marker = str(marker)
    evil = tmp_path / "model.pth"
    state = {k: v for k, v in tiny_weights[0].model.state_dict().items()}
    torch.save({"model": state, "extra": _RunsCode()}, evil)
    with pytest.raises(CheckpointError, match="refusing to load"):
        zoo.create_model(ARCH, num_classes=3, checkpoint_path=evil, **tiny_rtdetr_args())
    local_hub.commit(repo_id, {"model.pth": evil.read_bytes()})
    use_manifest({f"{ARCH}.pickle": manifest_entry(repo_id, filename="model.pth", fmt="official-rtdetr",
                                                   sha256=sha256_file(evil), size=evil.stat().st_size,
                                                   model_args=tiny_rtdetr_args())})
    with pytest.raises(CheckpointError, match="refusing to load"):
        zoo.create_model(f"{ARCH}.pickle")
    assert not marker.exists()


def test_pretrained_backbone_from_the_manifest(local_hub, hub_env, use_manifest, repo_id, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    classifier = zoo.create_model("mobilenetv3_small_050")  # timm ImageNet classifier with random weights
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(path))
    local_hub.commit(repo_id, {"model.safetensors": path})
    entry = manifest_entry(repo_id, sha256=sha256_file(path), size=path.stat().st_size, fmt="timm",
                           num_classes=1000, label_names="imagenet-1k")
    use_manifest({"mobilenetv3_small_050.test_in1k": entry})

    detector = zoo.create_model(ARCH, num_classes=3, pretrained_backbone=True, **tiny_rtdetr_args())
    report = detector.load_report
    assert sorted(report.dropped) == ["classifier.bias", "classifier.weight", "conv_head.bias", "conv_head.weight"]
    backbone, weights = detector.backbone.model.state_dict(), classifier.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in backbone.items())
    assert detector.pretrained_cfg["backbone_weights"] == "mobilenetv3_small_050.test_in1k"
    assert detector.load_report is report and not report.missing
    # the same entry loads the classifier itself
    assert_same_state(zoo.create_model("mobilenetv3_small_050", pretrained=True), classifier)
    with pytest.raises(ValueError, match="only one of"):
        zoo.create_model(ARCH, pretrained="x", pretrained_backbone=True)
    with pytest.raises(ValueError, match="timm backbones"):
        load_pretrained_backbone(zoo.create_model("rtdetr_r18vd", num_classes=2, num_decoder_layers=1))


def test_detector_without_weights_points_to_its_backbone(monkeypatch):
    monkeypatch.delenv("ZOO_WEIGHTS_MANIFEST", raising=False)
    with pytest.raises(KeyError, match=r"pretrained_backbone=True\) loads mobilenetv3_small_100.lamb_in1k.*"
                                       r"rtdetr_mobilenetv3_small.shapes_demo"):
        zoo.create_model("rtdetr_mobilenetv3_small", pretrained=True)  # its only weights are the narrow demo
    with pytest.raises(KeyError, match=r"pretrained_backbone=True\) loads mobilenetv3_large_100.ra_in1k"):
        zoo.create_model("rtdetr_mobilenetv3_large", pretrained=True)


def test_transformers_detr_weights_with_coco_class_names(local_hub, hub_env, use_manifest, repo_id, tmp_path):
    """facebook/detr-style weights (transformers layout, 91 COCO-id classes) against transformers itself:
    all classes give its logits, class_names pick its columns (and keep no-object)."""
    from hf_detr import hf_detr

    hf = hf_detr("detr_resnet50", backbone="resnet10t", encoder_layers=1, decoder_layers=1)
    hf.save_pretrained(tmp_path)
    local_hub.commit(repo_id, {"model.safetensors": tmp_path / "model.safetensors"})
    path = tmp_path / "model.safetensors"
    args = {"backbone": {"model_name": "resnet10t"}, "encoder": {"num_encoder_layers": 1},
            "decoder": {"num_decoder_layers": 1}}
    use_manifest({"detr_resnet50.tiny": manifest_entry(repo_id, fmt="transformers-detr", sha256=sha256_file(path),
                                                      size=path.stat().st_size, num_classes=91,
                                                      label_names="coco91", model_args=args)})
    x = torch.rand(1, 3, 96, 128)
    model = zoo.create_model("detr_resnet50.tiny").eval()
    assert model.load_report.format == "transformers-detr"
    subset = zoo.create_model("detr_resnet50.tiny", class_names=["dog", "person"]).eval()
    with torch.no_grad():
        ref, out, picked = hf(pixel_values=x), model(x), subset(x)
    torch.testing.assert_close(out["pred_logits"], ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out["pred_boxes"], ref.pred_boxes, rtol=0, atol=1e-5)
    torch.testing.assert_close(picked["pred_logits"], ref.logits[..., [18, 1, 91]], **GEMM_TOL)  # dog=18, person=1
    assert subset.pretrained_cfg["label_names"] == ["dog", "person"]
