"""DETR parity with transformers' DetrForObjectDetection (timm backbone), through the converters zoo ships."""
from __future__ import annotations

import json

import pytest
import torch

import zoo
from zoo.weights.checkpoint import read_checkpoint
from zoo.models.detr.model import DETR_PRETRAINED_CFG, pad_images

from hf_detr import HF_DETR_CONFIGS, hf_detr, hf_to_official  # noqa: E402

#: max |diff| allowed against transformers (measured: ~5e-6 on logits, ~3e-6 on boxes)
LOGITS_TOL, BOXES_TOL = 1e-4, 1e-4
SIZES = [(256, 320), (320, 224)]  # two differently sized images: the batch is padded to 320x320


pytestmark = pytest.mark.usefixtures("single_thread")


def _images(seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h, w, generator=generator) for h, w in SIZES]


@pytest.fixture(scope="module")
def hf_cases(tmp_path_factory):
    """``hf_cases(name)``: a transformers DETR with random weights saved with save_pretrained, and its outputs on
    a padded batch of two images; built once per architecture."""
    from transformers.loss.loss_for_object_detection import nested_tensor_from_tensor_list

    cache = {}

    def get(name: str):
        if name not in cache:
            model = hf_detr(name)
            out = tmp_path_factory.mktemp(name)
            model.save_pretrained(out)
            images = _images()
            pixel_values, padding = nested_tensor_from_tensor_list(images).decompose()  # the reference padding
            with torch.no_grad():
                ref = model(pixel_values=pixel_values, pixel_mask=(~padding).long())
            cache[name] = out / "model.safetensors", images, ref
        return cache[name]

    return get


def _max_diff(ref, out) -> tuple[float, float]:
    return ((ref.logits - out["pred_logits"]).abs().max().item(),
            (ref.pred_boxes - out["pred_boxes"]).abs().max().item())


@pytest.mark.parametrize("name", ["detr_resnet50", "detr_resnet50_dc5"])
def test_parity_with_transformers(hf_cases, name):
    path, images, ref = hf_cases(name)
    model = zoo.create_model(name, checkpoint_path=path).eval()
    assert model.load_report.format == "transformers-detr"
    assert ref.logits.shape == (2, 100, 92) and ref.logits.std() > 1 and ref.pred_boxes.std() > 0.1
    with torch.no_grad():
        out = model(images)  # padded here, as the reference does
    logits_diff, boxes_diff = _max_diff(ref, out)
    assert logits_diff <= LOGITS_TOL, f"{name} logits differ by {logits_diff}"
    assert boxes_diff <= BOXES_TOL, f"{name} boxes differ by {boxes_diff}"


def test_official_layout_round_trip(hf_cases, tmp_path):
    """The same weights under the official key names, saved as {'model': state_dict} (.pth), give the same outputs."""
    name = "detr_resnet50"  # the layout does not depend on dilation
    path, images, ref = hf_cases(name)
    official = hf_to_official(read_checkpoint(path))
    assert any(k.startswith("backbone.0.body.layer4.") for k in official)
    pth = tmp_path / "detr-r50-random.pth"
    torch.save({"model": official}, pth)
    model = zoo.create_model(name, checkpoint_path=pth).eval()
    assert model.load_report.format == "official-detr"
    from_transformers = zoo.create_model(name, checkpoint_path=path).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, from_transformers[key]), key
    with torch.no_grad():
        out = model(images)
    logits_diff, boxes_diff = _max_diff(ref, out)
    assert logits_diff <= LOGITS_TOL and boxes_diff <= BOXES_TOL


def test_postprocess_matches_transformers(hf_cases):
    _, _, ref = hf_cases("detr_resnet50")
    from transformers import DetrImageProcessor

    sizes = torch.tensor([[480, 600], [427, 300]])
    expected = DetrImageProcessor().post_process_object_detection(ref, threshold=0.05, target_sizes=sizes)
    model = _small()  # postprocessing has no weights
    got = model.postprocess({"pred_logits": ref.logits, "pred_boxes": ref.pred_boxes}, sizes, score_threshold=0.05)
    for g, e in zip(got, expected):
        assert len(e["scores"]) > 0
        torch.testing.assert_close(g["scores"], e["scores"], rtol=0, atol=1e-6)
        torch.testing.assert_close(g["labels"], e["labels"], rtol=0, atol=0)
        torch.testing.assert_close(g["boxes"], e["boxes"], rtol=0, atol=1e-4)
    top = model.postprocess({"pred_logits": ref.logits, "pred_boxes": ref.pred_boxes}, sizes, top_k=5)
    for t, g in zip(top, model.postprocess({"pred_logits": ref.logits, "pred_boxes": ref.pred_boxes}, sizes)):
        assert len(t["scores"]) == 5 and (t["scores"][:-1] >= t["scores"][1:]).all()
        torch.testing.assert_close(t["scores"], g["scores"].sort(descending=True).values[:5])
        assert (t["labels"] >= 0).all() and (t["labels"] <= 90).all()  # COCO ids, never the no-object index 91


def test_padding_matches_reference_nested_tensor():
    from transformers.loss.loss_for_object_detection import nested_tensor_from_tensor_list

    images = [torch.rand(3, 5, 9), torch.rand(3, 8, 4), torch.rand(3, 2, 2)]
    expected, padding = nested_tensor_from_tensor_list(images).decompose()
    pixel_values, pixel_mask = pad_images(images)
    assert pixel_values.shape == (3, 3, 8, 9)
    torch.testing.assert_close(pixel_values, expected, rtol=0, atol=0)
    assert torch.equal(pixel_mask, ~padding)


# --------------------------------------------------------------------------------------------------
# every registered DETR
# --------------------------------------------------------------------------------------------------

#: trainable parameters reported by the official repository (README / main.py ``n_parameters``), in millions
OFFICIAL_PARAMS = {"detr_resnet50": 41.3, "detr_resnet50_dc5": 41.3, "detr_resnet101": 60.2,
                   "detr_resnet101_dc5": 60.2}


@pytest.mark.parametrize("name", sorted(HF_DETR_CONFIGS))
def test_architecture_matches_the_official_one(name):
    model = zoo.create_model(name)
    assert model.family == "detr" and model.num_classes == 91
    assert model.class_embed.out_features == 92 and model.query_embed.num_embeddings == 100
    assert model.pretrained_cfg == DETR_PRETRAINED_CFG
    assert model.backbone.strides == [16 if name.endswith("dc5") else 32]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert round(trainable / 1e6, 1) == OFFICIAL_PARAMS[name]
    keys = set(model.state_dict())
    expected = {  # official names (backbone.0.body -> backbone.body), shared/docs/detr-akconv.md
        "backbone.body.conv1.weight", "backbone.body.bn1.running_var", "backbone.body.layer4.2.conv3.weight",
        "backbone.body.layer1.0.downsample.1.weight", "input_proj.weight", "query_embed.weight",
        "transformer.encoder.layers.5.self_attn.in_proj_weight", "transformer.encoder.layers.0.norm2.bias",
        "transformer.decoder.layers.5.multihead_attn.out_proj.weight", "transformer.decoder.layers.0.norm3.weight",
        "transformer.decoder.layers.0.linear2.bias", "transformer.decoder.norm.weight", "class_embed.bias",
        "bbox_embed.layers.2.weight",
    }
    assert expected <= keys, sorted(expected - keys)
    assert not any("num_batches_tracked" in k for k in keys)


def _small(**kwargs):
    """A DETR small enough to train in a test: ResNet-18, 1 encoder and 2 decoder layers."""
    return zoo.create_model("detr_resnet50", backbone={"model_name": "resnet18"}, num_encoder_layers=1,
                            num_decoder_layers=2, **kwargs)


def test_training_step_and_frozen_stem():
    from zoo.models.detr.criterion import SetCriterion

    torch.manual_seed(0)
    model = _small(num_classes=5).train()
    images = [torch.randn(3, 96, 128), torch.randn(3, 128, 64)]
    out = model(images)
    assert out["pred_logits"].shape == (2, 100, 6) and len(out["aux_outputs"]) == 1
    targets = [{"labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1]])},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.5, 0.5]])}]
    losses = SetCriterion(num_classes=5)(out, targets)
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_aux_0", "loss_bbox_aux_0",
                           "loss_giou_aux_0"}
    sum(losses.values()).backward()
    body = model.backbone.body
    assert body.conv1.weight.grad is None and body.layer1[0].conv1.weight.grad is None
    assert all(p.grad is not None for p in body.layer2.parameters())
    assert any(p.grad.abs().sum() > 0 for p in body.layer4.parameters())
    assert model.query_embed.weight.grad.abs().sum() > 0
    # eval mode: the last layer only
    with torch.no_grad():
        assert "aux_outputs" not in model.eval()(images)


def test_config_round_trip_and_routing():
    model = _small(num_classes=3, num_queries=7).eval()
    assert model.config["model_args"]["backbone"]["model_name"] == "resnet18"
    assert model.config["model_args"]["decoder"]["num_decoder_layers"] == 2
    rebuilt = zoo.create_model_from_config(json.loads(json.dumps(model.config))).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        out, again = model(x), rebuilt(x)
    assert out["pred_logits"].shape == (1, 7, 4)
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    with pytest.raises(TypeError, match="encoder=|decoder="):
        zoo.create_model("detr_resnet50", nhead=4)  # ambiguous: say which transformer half


def test_list_input_is_the_padded_batch_with_its_mask():
    torch.manual_seed(0)
    model = _small().eval()
    images = [torch.randn(3, 64, 96), torch.randn(3, 96, 64)]
    pixel_values, pixel_mask = pad_images(images)
    with torch.no_grad():
        from_list = model(images)
        from_batch = model(pixel_values, pixel_mask=pixel_mask.long())
        unmasked = model(pixel_values)
    torch.testing.assert_close(from_batch, from_list, rtol=0, atol=0)
    # the mask matters: without it the padding is image content
    assert (unmasked["pred_logits"] - from_list["pred_logits"]).abs().max() > 1e-3


@pytest.mark.parametrize("bad, mask, error", [
    (torch.rand(3, 64, 64), None, "shape"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), None, "float"),
    (torch.rand(1, 3, 64, 64), torch.ones(1, 32, 64), "pixel_mask"),
    ([torch.rand(1, 64, 64)], None, r"\[3, H, W\]"),
    ([torch.rand(3, 64, 64)], torch.ones(1, 64, 64), "not both"),
])
def test_bad_inputs_get_clear_errors(bad, mask, error):
    model = _small().eval()
    with pytest.raises((TypeError, ValueError), match=error):
        model(bad, pixel_mask=mask)


def test_summary_counts_flops():
    """``zoo info`` counts FLOPs under no_grad with torch's module tracker, which refuses parameter views as inputs."""
    from zoo.cli.models import model_summary

    info = model_summary("detr_resnet50", 128)
    assert info["gflops"] > 1 and round(info["params_m"], 1) == 41.5
