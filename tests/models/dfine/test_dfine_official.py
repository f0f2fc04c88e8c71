"""D-FINE against Peterande/D-FINE's own code, when a checkout of it is given (it is not a test dependency):

    git clone https://github.com/Peterande/D-FINE /tmp/D-FINE
    DFINE_OFFICIAL_SRC=/tmp/D-FINE python -m pytest tests/models/dfine/test_dfine_official.py

The official ``DFINE`` (HGNetv2 + HybridEncoder + DFINETransformer, built from the dfine_hgnetv2_n_coco.yml values)
gets random weights and BatchNorm statistics; its state dict, saved as an official release file, loads into
``dfine_n`` with outputs equal in float64; its ``DFINECriterion`` gives the same terms as zoo's (float32: the
official FGL targets are float32 only). The official modules are loaded from their files with stub packages for
``src.core.register`` and ``src.misc.dist_utils``, so its package imports (and their dependencies) are not needed.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

import zoo
from zoo.models.dfine.criterion import DFINECriterion

SRC = os.environ.get("DFINE_OFFICIAL_SRC")
pytestmark = pytest.mark.skipif(not SRC or not (Path(SRC) / "src" / "zoo" / "dfine").is_dir(),
                                reason="set DFINE_OFFICIAL_SRC to a checkout of Peterande/D-FINE")
MODULES = ["nn.backbone.common", "nn.backbone.hgnetv2", "zoo.dfine.box_ops", "zoo.dfine.utils",
           "zoo.dfine.dfine_utils", "zoo.dfine.denoising", "zoo.dfine.hybrid_encoder", "zoo.dfine.dfine_decoder",
           "zoo.dfine.matcher", "zoo.dfine.dfine_criterion", "zoo.dfine.dfine"]


@pytest.fixture(scope="module")
def official():
    root = Path(SRC) / "src"
    saved = {k: v for k, v in sys.modules.items() if k == "src" or k.startswith("src.")}

    def package(name: str, path: Path) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
        return module

    package("src", root)
    package("src.core", root / "core").register = lambda *a, **k: (lambda cls: cls)
    package("src.misc", root / "misc")
    dist = types.ModuleType("src.misc.dist_utils")
    dist.get_world_size, dist.is_dist_available_and_initialized = (lambda: 1), (lambda: False)
    sys.modules["src.misc.dist_utils"] = dist
    for name in ("src.nn", "src.nn.backbone", "src.zoo", "src.zoo.dfine"):
        package(name, root / Path(*name.split(".")[1:]))
    loaded = {}
    for name in MODULES:
        spec = importlib.util.spec_from_file_location(f"src.{name}", root / (name.replace(".", "/") + ".py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"src.{name}"] = module
        spec.loader.exec_module(module)
        loaded[name.split(".")[-1]] = module
    yield loaded
    for key in [k for k in sys.modules if k == "src" or k.startswith("src.")]:
        del sys.modules[key]
    sys.modules.update(saved)


@pytest.fixture(scope="module")
def official_nano(official):
    torch.manual_seed(0)
    model = official["dfine"].DFINE(
        official["hgnetv2"].HGNetv2("B0", use_lab=True, return_idx=[2, 3], freeze_at=-1, freeze_norm=False,
                                    pretrained=False),
        official["hybrid_encoder"].HybridEncoder(in_channels=[512, 1024], feat_strides=[16, 32], hidden_dim=128,
                                                 use_encoder_idx=[1], dim_feedforward=512, expansion=0.34,
                                                 depth_mult=0.5, eval_spatial_size=[640, 640]),
        official["dfine_decoder"].DFINETransformer(num_classes=80, feat_channels=[128, 128], feat_strides=[16, 32],
                                                   hidden_dim=128, dim_feedforward=512, num_levels=2, num_layers=3,
                                                   num_points=[6, 6], eval_spatial_size=[640, 640]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or name.endswith(("anchors", "valid_mask", "up", "reg_scale",
                                                           "num_points_scale")):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            else:
                t.copy_(torch.randn(t.shape, generator=g) / max(1, t[0].numel()) ** 0.5)
    return model.double().eval()


def test_official_release_file_gives_the_official_outputs(official_nano, tmp_path):
    path = tmp_path / "dfine_hgnetv2_n_coco.pth"
    torch.save({"model": official_nano.state_dict()}, path)  # with the stored 640x640 anchors
    model = zoo.create_model("dfine_n", checkpoint_path=path).double().eval()
    assert model.load_report.format == "official-dfine"
    x = torch.rand(1, 3, 640, 640, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = official_nano(x), model(x)
    # the official code computes its position embedding and anchors in float32: 1e-7 apart in float64
    assert (ref["pred_logits"] - out["pred_logits"]).abs().max() <= 1e-6
    assert (ref["pred_boxes"] - out["pred_boxes"]).abs().max() <= 1e-6


def test_criterion_equals_the_official_criterion(official):
    torch.manual_seed(0)
    model = zoo.create_model("dfine_n", num_classes=5, num_queries=60).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bbox_head" in name or "score_head" in name or "reg_conf" in name:
                p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(1)
    targets = [{"labels": torch.randint(0, 5, (n,), generator=g),
                "boxes": torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2,
                                    torch.rand(n, 2, generator=g) * 0.3 + 0.05], 1)} for n in (3, 5)]
    x = torch.rand(2, 3, 160, 160, generator=g)
    outputs = model(x, **model.training_inputs(x, targets))
    ours = DFINECriterion(5)(outputs, targets)
    matcher = official["matcher"].HungarianMatcher(weight_dict={"cost_class": 2, "cost_bbox": 5, "cost_giou": 2},
                                                   use_focal_loss=True, alpha=0.25, gamma=2.0)
    criterion = official["dfine_criterion"].DFINECriterion(
        matcher, weight_dict={"loss_vfl": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15, "loss_ddf": 1.5},
        losses=["vfl", "boxes", "local"], alpha=0.75, gamma=2.0, num_classes=5, reg_max=32)
    theirs = criterion({**outputs, "enc_aux_outputs": [outputs["enc_outputs"]],
                        "enc_meta": {"class_agnostic": False}}, targets)
    theirs = {k.replace("_enc_0", f"_aux_{len(outputs['aux_outputs'])}"): v for k, v in theirs.items()}
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert abs(ours[key].item() - value.item()) <= 1e-5 * max(1.0, abs(value.item())), key
