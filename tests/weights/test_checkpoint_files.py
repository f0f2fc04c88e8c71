"""Damaged, legacy and non-finite checkpoint files: a CheckpointError that names the file (one line in the CLI), the
legacy torch format loads without running code, and NaN/Inf weights are named in the report."""
from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo.cli import main
from zoo.weights.checkpoint import CheckpointError, read_checkpoint

ARCH = "rtdetr_mobilenetv3_small"
TINY = dict(backbone={"model_name": "mobilenetv3_small_050"},
            encoder={"hidden_dim": 32, "dim_feedforward": 64, "num_heads": 4},
            decoder={"hidden_dim": 32, "dim_feedforward": 64, "num_decoder_layers": 2, "num_queries": 20,
                     "num_heads": 4, "num_denoising": 10})


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return zoo.create_model(ARCH, num_classes=3, **TINY).eval()


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("damage", ["empty", "truncated", "header"])
def test_damaged_safetensors_name_the_file(tiny, tmp_path, damage, capsys):
    good = tmp_path / "good.safetensors"
    save_file(_state(tiny), str(good))
    data = good.read_bytes()
    bad = tmp_path / f"{damage}.safetensors"
    bad.write_bytes({"empty": b"", "truncated": data[:len(data) // 2], "header": data[:6]}[damage])
    with pytest.raises(CheckpointError, match=str(bad)):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match="(?i)save or download it again"):
        zoo.create_model(ARCH, num_classes=3, checkpoint_path=bad, **TINY)
    # the command line: one line naming the file, exit 1, no traceback
    assert main(["benchmark", ARCH, "--checkpoint", str(bad), "--iters", "1", "--warmup", "0"]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err and err.startswith("zoo benchmark: error: ")


def test_truncated_pth_names_the_file(tiny, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(_state(tiny), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=str(path)):
        read_checkpoint(path)


def test_legacy_torch_format_loads_without_mmap(tiny, tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"model": _state(tiny)}, path, _use_new_zipfile_serialization=False)
    model = zoo.create_model(ARCH, num_classes=3, checkpoint_path=path, **TINY)
    for key, value in tiny.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_legacy_torch_format_still_refuses_code(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:  # what torch.save(..., _use_new_zipfile_serialization=False) writes for an object
        torch.save({"model": {"w": torch.ones(2)}, "x": _RunsCode()}, f, _use_new_zipfile_serialization=False,
                   pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_checkpoint(path)
    assert "this must never run" not in capsys.readouterr().out


def test_nonfinite_weights_are_named(tiny, tmp_path):
    state = _state(tiny)
    poisoned = ["decoder.dec_score_head.0.bias", "encoder.input_proj.0.0.weight"]
    assert all(k in state for k in poisoned)
    state[poisoned[0]] = state[poisoned[0]].clone().fill_(float("nan"))
    state[poisoned[1]] = state[poisoned[1]].clone()
    state[poisoned[1]].view(-1)[3] = float("inf")
    path = tmp_path / "diverged.safetensors"
    save_file(state, str(path))
    # checkpoint_path loads strictly: an error naming both tensors
    with pytest.raises(CheckpointError) as info:
        zoo.create_model(ARCH, num_classes=3, checkpoint_path=path, **TINY)
    assert all(k in str(info.value) for k in poisoned) and str(path) in str(info.value)
    # weights loaded with strict=False: a warning, and the report names them
    from zoo.weights.load import WeightsSource, build_with_weights

    source = WeightsSource("diverged", path, 3)
    with pytest.warns(UserWarning, match="NaN or Inf"):
        model = build_with_weights(ARCH, TINY, source, strict=False)
    assert sorted(model.load_report.nonfinite) == sorted(poisoned)
    assert "2 with NaN/Inf" in str(model.load_report)
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        build_with_weights(ARCH, TINY, source, strict=True)


def test_an_integer_tensor_for_a_float_weight_is_named_not_cast(tiny, tmp_path):
    """Issue 21 item 13: an int8 tensor in place of a float weight was cast silently."""
    state = _state(tiny)
    key = "decoder.dec_score_head.0.weight"
    state[key] = state[key].to(torch.int8)
    path = tmp_path / "quantised.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=rf"dtype mismatch.*{key}: file torch.int8 vs model torch.float32"):
        zoo.create_model(ARCH, num_classes=3, checkpoint_path=path, **TINY)
    half = {k: v.half() if v.is_floating_point() else v for k, v in _state(tiny).items()}
    save_file(half, str(path))  # fp16 weights are cast, as intended
    assert zoo.create_model(ARCH, num_classes=3, checkpoint_path=path, **TINY)


def test_safetensors_named_pth_is_read_as_safetensors(tiny, tmp_path):
    """Issue 21 item 13: a safetensors file named .pth was refused with a message about pickles."""
    path = tmp_path / "model.pth"
    save_file(_state(tiny), str(path))
    model = zoo.create_model(ARCH, num_classes=3, checkpoint_path=path, **TINY)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny.state_dict().items())
    torch.save(_state(tiny), tmp_path / "real.pth")  # and a torch file is still read by torch
    assert read_checkpoint(tmp_path / "real.pth").keys() == tiny.state_dict().keys()
