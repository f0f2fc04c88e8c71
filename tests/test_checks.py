"""Issue 21 item 10: config and --model-args values are validated in one place (zoo.checks), with a ValueError that
names the field, for create_model keywords, --model-args and a config.json's values."""
from __future__ import annotations

import json

import pytest
import torch

import zoo
from zoo.cli import main

ARCH = "rtdetr_mobilenetv3_small"
TINY = dict(backbone={"model_name": "mobilenetv3_small_050"},
            encoder={"hidden_dim": 32, "dim_feedforward": 64, "num_heads": 4},
            decoder={"hidden_dim": 32, "dim_feedforward": 64, "num_decoder_layers": 2, "num_queries": 20,
                     "num_heads": 4, "num_denoising": 10})


@pytest.mark.parametrize("args, field", [
    ({"encoder": {"hidden_dim": -32}}, "encoder.hidden_dim"),     # was a raw RuntimeError
    ({"num_queries": -1}, "decoder.num_queries"),
    ({"num_queries": 1e9}, "decoder.num_queries"),                # was "zeros() takes 1 positional argument"
    ({"num_queries": 10 ** 9}, "decoder.num_queries"),
    ({"num_decoder_layers": 0}, "decoder.num_decoder_layers"),
    ({"num_denoising": -1}, "decoder.num_denoising"),
    ({"decoder": {"dropout": float("nan")}}, "decoder.dropout"),
    ({"num_points": [4, 0, 4]}, "decoder.num_points"),
])
def test_model_args_name_the_field(args, field):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        zoo.create_model(ARCH, **args)


def test_model_args_on_the_command_line_name_the_field(tmp_path, capsys):
    from zoo.data.synthetic import make_synthetic_coco

    make_synthetic_coco(tmp_path / "data", "train", 2, seed=0, image_size=64)
    assert main(["train", ARCH, "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run"),
                 "--model-args", json.dumps({"num_queries": -1})]) == 1
    assert "decoder.num_queries must be an integer" in capsys.readouterr().err


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    zoo.create_model(ARCH, num_classes=3, **TINY).save_pretrained(path)
    return path


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(label_names=5), "label_names must be a list of strings"),          # was a TypeError
    (lambda c: c.update(label_names=["a", "b"]), "2 label_names for num_classes=3"),
    (lambda c: c["pretrained_cfg"].update(input_size=[3, 100000, 100000]), "input_size must be an integer from 1 "
                                                                           "to 8192"),   # was an empty MemoryError
    (lambda c: c["pretrained_cfg"].update(mean=[float("nan"), 0.5, 0.5]), "mean must be 3 finite numbers"),
    (lambda c: c["pretrained_cfg"].update(std=[0.2, 0.0, 0.2]), "std must be 3 finite numbers > 0"),
    (lambda c: c["model_args"]["decoder"].update(num_queries=-1), "decoder.num_queries must be an integer"),
], ids=["labels-int", "labels-count", "huge-size", "nan-mean", "zero-std", "negative-queries"])
def test_config_json_values_name_the_field(folder, tmp_path, change, message):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text())
    change(config)
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"local-dir:{bad}: config.json: .*{message}"):
        zoo.create_model(f"local-dir:{bad}")


def test_the_valid_defaults_pass():
    from zoo.checks import check_model_args, check_pretrained_cfg

    model = zoo.create_model(ARCH, num_classes=3, **TINY)
    check_model_args(model.config["model_args"])
    check_pretrained_cfg(model.pretrained_cfg, 3)
