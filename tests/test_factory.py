"""create_model: name parsing, checkpoint loading errors, config rebuild."""
from __future__ import annotations

import pickle

import pytest
import torch

import zoo
from zoo.weights.checkpoint import CheckpointError
from zoo.factory import parse_model_name


@pytest.mark.parametrize("name, expected", [
    ("rtdetr_r18vd", ("zoo", "rtdetr_r18vd", None)),
    ("rtdetr_r18vd.coco_o365", ("zoo", "rtdetr_r18vd", "coco_o365")),
    ("hf-hub:org/repo@v1.0", ("hf-hub", "org/repo", "v1.0")),
    ("hf-hub:org/repo", ("hf-hub", "org/repo", None)),
    ("local-dir:/tmp/x", ("local-dir", "/tmp/x", None)),
])
def test_parse_model_name(name, expected):
    assert parse_model_name(name) == expected


def test_zoo_format_checkpoint_round_trip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = zoo.create_model("rtdetr_mobilenetv3_small", num_classes=4).eval()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    again = zoo.create_model("rtdetr_mobilenetv3_small", num_classes=4,
                             checkpoint_path=tmp_path / "model.safetensors").eval()
    assert again.load_report.format == "zoo"
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(again(x)["pred_logits"], model(x)["pred_logits"], rtol=0, atol=0)


def test_missing_checkpoint_and_unknown_layout(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError):
        zoo.create_model("rtdetr_r18vd", checkpoint_path=tmp_path / "nope.safetensors")
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        zoo.create_model("rtdetr_r18vd", checkpoint_path=tmp_path / "other.safetensors")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": _RunsCode()}}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="weights_only"):
        zoo.create_model("rtdetr_r18vd", checkpoint_path=path)
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(CheckpointError, match="refusing"):
        zoo.create_model("rtdetr_r18vd", checkpoint_path=raw)


def test_conflicting_weight_requests():
    with pytest.raises(ValueError, match="conflicting"):
        zoo.create_model("rtdetr_r18vd.coco", pretrained="coco_o365")
    with pytest.raises(ValueError, match="only one of"):
        zoo.create_model("rtdetr_r18vd", pretrained=True, checkpoint_path="x.pth")
    with pytest.raises(ValueError, match="only one of"):
        zoo.create_model("rtdetr_mnv3", pretrained_backbone=True, checkpoint_path="x.pth")


def test_create_model_from_config_requires_an_architecture():
    with pytest.raises(ValueError, match="architecture"):
        zoo.create_model_from_config({"model_args": {}})


@pytest.mark.parametrize("location", ["local-dir:/nowhere/model", "hf-hub:org/repo"])
@pytest.mark.parametrize("argument", [{"checkpoint_path": "x.safetensors"}, {"pretrained": "coco"},
                                      {"pretrained_backbone": True}], ids=lambda a: next(iter(a)))
def test_a_location_refuses_other_weight_arguments(location, argument):
    """Issue 21 item 12: create_model("local-dir:X", checkpoint_path=..., pretrained=...) dropped both silently."""
    with pytest.raises(ValueError, match=f"{next(iter(argument))}=.*cannot apply"):
        zoo.create_model(location, **argument)
