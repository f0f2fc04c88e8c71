"""DETR checkpoint layouts: transformers (saved legacy names and 5.x runtime names) and official -> zoo keys.

Uses a small DETR (ResNet-18, 2 + 2 layers, 7 classes) so that the whole path, including outputs, stays fast.
"""
from __future__ import annotations


import pytest
import torch

import zoo
from zoo.weights.checkpoint import CheckpointError, convert_state_dict, read_checkpoint
from zoo.models.detr.convert import official_to_zoo, transformers_to_zoo

from hf_detr import hf_detr, hf_to_official  # noqa: E402

SMALL = dict(backbone={"model_name": "resnet18"}, num_encoder_layers=2, num_decoder_layers=2, num_classes=7)


@pytest.fixture(scope="module")
def small_hf(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = hf_detr("detr_resnet50", num_classes=7, backbone="resnet18", encoder_layers=2, decoder_layers=2)
    out = tmp_path_factory.mktemp("detr_small")
    model.save_pretrained(out)
    yield model, out / "model.safetensors"
    torch.set_num_threads(threads)


def _small_zoo(**kwargs):
    return zoo.create_model("detr_resnet50", **SMALL, **kwargs).eval()


def test_saved_and_runtime_transformers_names_convert_alike(small_hf):
    model, path = small_hf
    saved, runtime = read_checkpoint(path), model.state_dict()
    # transformers 5.x renames at load time; save_pretrained writes the legacy names back
    assert any(".conv_encoder." in k for k in saved) and any(k.endswith("self_attn.out_proj.weight") for k in saved)
    assert any(k.endswith("self_attn.o_proj.weight") for k in runtime) and any(".mlp.fc1." in k for k in runtime)
    from_saved, from_runtime = transformers_to_zoo(dict(saved)), transformers_to_zoo(dict(runtime))
    assert from_saved.keys() == from_runtime.keys() == set(_small_zoo().state_dict())
    for key in from_saved:
        assert torch.equal(from_saved[key], from_runtime[key]), key


def test_small_model_parity_and_official_layout(small_hf, tmp_path):
    model, path = small_hf
    images = [torch.randn(3, 128, 160), torch.randn(3, 160, 96)]
    from zoo.models.detr.model import pad_images

    pixel_values, pixel_mask = pad_images(images)
    with torch.no_grad():
        ref = model(pixel_values=pixel_values, pixel_mask=pixel_mask.long())
    official = hf_to_official(read_checkpoint(path))
    # a checkpoint saved from plain BatchNorm carries counters that FrozenBatchNorm does not have
    official["backbone.0.body.bn1.num_batches_tracked"] = torch.tensor(0)
    pth = tmp_path / "official.pth"
    torch.save({"model": official}, pth)
    for source, fmt in ((path, "transformers-detr"), (pth, "official-detr")):
        zoo_model = _small_zoo(checkpoint_path=source)
        assert zoo_model.load_report.format == fmt
        with torch.no_grad():
            out = zoo_model(images)
        assert (out["pred_logits"] - ref.logits).abs().max() <= 1e-4
        assert (out["pred_boxes"] - ref.pred_boxes).abs().max() <= 1e-4
    converted, fmt = convert_state_dict("detr", official)
    assert fmt == "official-detr" and converted == official_to_zoo(official)


def test_unknown_layout_and_wrong_architecture_are_refused(small_hf):
    _, path = small_hf
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout for a detr model"):
        convert_state_dict("detr", {"head.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="does not fit"):
        zoo.create_model("detr_resnet50", checkpoint_path=path)  # ResNet-18 weights, ResNet-50 model


def test_incomplete_attention_projection_is_reported(small_hf):
    _, path = small_hf
    sd = dict(read_checkpoint(path))
    del sd["model.encoder.layers.0.self_attn.v_proj.weight"]
    with pytest.raises(KeyError, match="v_proj.weight"):
        transformers_to_zoo(sd)
