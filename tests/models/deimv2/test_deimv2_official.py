"""DEIMv2 against Intellindust-AI-Lab/DEIMv2's own code, when a checkout of it is given (not a test dependency):

    git clone https://github.com/Intellindust-AI-Lab/DEIMv2 /tmp/DEIMv2
    DEIMV2_OFFICIAL_SRC=/tmp/DEIMv2 python -m pytest tests/models/deimv2/test_deimv2_official.py

The official model (backbone + encoder + ``DEIMTransformer``, built from the configs/deimv2/*.yml values) gets random
weights and BatchNorm statistics; its state dict, saved as an official release file, loads into zoo's model with
outputs equal in float64 (the official anchors, float32 in its code, are made float64 here; its RMSNorm computes in
float32, as zoo's does). The official modules are
loaded from their files under stub packages for ``engine`` and ``engine.core.register``, so the official package
imports (and their dependencies) are not needed.
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
from zoo.models.deimv2.convert import zoo_to_official  # noqa: F401  (the layout the official state dict is in)
from zoo.models.dfine.criterion import DEIMV2_MATCHER_CHANGE_EPOCH

from hf_deimv2 import calibrate_batch_norms, perturb  # noqa: E402

SRC = os.environ.get("DEIMV2_OFFICIAL_SRC")
pytestmark = pytest.mark.skipif(not SRC or not (Path(SRC) / "engine" / "deim").is_dir(),
                                reason="set DEIMV2_OFFICIAL_SRC to a checkout of Intellindust-AI-Lab/DEIMv2")
MODULES = ["backbone.common", "backbone.hgnetv2", "backbone.vit_tiny", "deim.box_ops", "deim.utils",
           "deim.dfine_utils", "deim.deim_utils", "deim.denoising", "deim.dfine_decoder", "deim.deim_decoder",
           "deim.hybrid_encoder", "deim.lite_encoder", "backbone.dinov3_adapter", "deim.matcher",
           "deim.deim_criterion"]
TOL = 1e-6


@pytest.fixture(scope="module")
def official():
    root = Path(SRC) / "engine"
    saved = {k: v for k, v in sys.modules.items() if k == "engine" or k.startswith("engine.")}

    def package(name: str, path: Path) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
        return module

    package("engine", root)
    package("engine.core", root / "core").register = lambda *a, **k: (lambda cls: cls)
    package("engine.backbone", root / "backbone")
    package("engine.deim", root / "deim")
    misc = package("engine.misc", root / "misc")  # the criterion's distributed helpers, single process here
    misc.dist_utils = types.ModuleType("engine.misc.dist_utils")
    misc.dist_utils.get_world_size, misc.dist_utils.is_dist_available_and_initialized = lambda: 1, lambda: False
    sys.modules["engine.misc.dist_utils"] = misc.dist_utils
    loaded = {}
    for name in MODULES:
        spec = importlib.util.spec_from_file_location(f"engine.{name}", root / (name.replace(".", "/") + ".py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"engine.{name}"] = module
        spec.loader.exec_module(module)
        loaded[name.split(".")[-1]] = module
    torch.distributed.get_rank = getattr(torch.distributed, "get_rank", lambda: 0)
    yield loaded
    for key in [k for k in sys.modules if k == "engine" or k.startswith("engine.")]:
        del sys.modules[key]
    sys.modules.update(saved)


class _Official(torch.nn.Module):
    def __init__(self, backbone, encoder, decoder):
        super().__init__()
        self.backbone, self.encoder, self.decoder = backbone, encoder, decoder

    def forward(self, x):
        return self.decoder(self.encoder(self.backbone(x)))


def _decoder(official, hidden, layers, ffn, levels, points, queries=300, lite=False, channels=None, strides=None):
    return official["deim_decoder"].DEIMTransformer(
        num_classes=7, hidden_dim=hidden, num_queries=queries, feat_channels=channels or [hidden] * levels,
        feat_strides=strides or [8, 16, 32][-levels:], num_levels=levels, num_points=points, num_layers=layers,
        dim_feedforward=ffn, activation="silu", mlp_act="silu", reg_max=32, reg_scale=4.0,
        use_gateway=not lite, share_bbox_head=lite)


def _official_model(official, size: str) -> torch.nn.Module:
    if size == "atto":
        backbone = official["hgnetv2"].HGNetv2("Atto", use_lab=True, return_idx=[2], freeze_at=-1, freeze_norm=False,
                                               pretrained=False)
        encoder = official["lite_encoder"].LiteEncoder(in_channels=[256], feat_strides=[16], hidden_dim=64,
                                                       expansion=0.34, depth_mult=0.5, act="silu")
        decoder = _decoder(official, 64, 3, 160, 2, [4, 2], queries=100, lite=True, strides=[16, 32])
    elif size == "n":
        backbone = official["hgnetv2"].HGNetv2("B0", use_lab=True, return_idx=[2, 3], freeze_at=-1, freeze_norm=False,
                                               pretrained=False)
        encoder = official["hybrid_encoder"].HybridEncoder(
            in_channels=[512, 1024], feat_strides=[16, 32], hidden_dim=128, use_encoder_idx=[1], dim_feedforward=512,
            expansion=0.34, depth_mult=0.5, version="dfine", csp_type="csp2", fuse_op="sum")
        decoder = _decoder(official, 128, 3, 512, 2, [6, 6], strides=[16, 32])
    elif size == "s":  # DINOv3-distilled ViT-Tiny + STA
        backbone = official["dinov3_adapter"].DINOv3STAs(name="vit_tiny", embed_dim=192, num_heads=3,
                                                         interaction_indexes=[3, 7, 11])
        encoder = official["hybrid_encoder"].HybridEncoder(
            in_channels=[192] * 3, hidden_dim=192, dim_feedforward=512, expansion=0.34, depth_mult=0.67,
            version="deim", csp_type="csp2", fuse_op="sum")
        decoder = _decoder(official, 192, 4, 512, 3, [3, 6, 3])
    elif size == "l":  # DINOv3 ViT-S/16 (registers, LayerScale, masked key bias) + STA 32 -> 224
        backbone = official["dinov3_adapter"].DINOv3STAs(name="dinov3_vits16", interaction_indexes=[5, 8, 11],
                                                         conv_inplane=32, hidden_dim=224)
        encoder = official["hybrid_encoder"].HybridEncoder(
            in_channels=[224] * 3, hidden_dim=224, dim_feedforward=896, version="deim", csp_type="csp2",
            fuse_op="sum")
        decoder = _decoder(official, 224, 4, 1792, 3, [3, 6, 3])
    else:
        raise ValueError(size)
    return _Official(backbone, encoder, decoder)


@pytest.mark.parametrize("size, pixels", [("atto", 320), ("n", 320), ("s", 320), ("l", 160)])
def test_official_model_loads_with_equal_outputs(official, size, pixels, tmp_path):
    torch.manual_seed(0)
    ref = _official_model(official, size).eval()
    with torch.no_grad():  # the official DINOv3 ViT leaves its token parameters uninitialised (torch.empty) and
        for key, tensor in ref.state_dict().items():  # its key-bias masks NaN until DINOv3's weights are loaded
            if key.endswith("attn.qkv.bias_mask"):
                tensor.fill_(1)[tensor.numel() // 3:2 * tensor.numel() // 3] = 0
            elif tensor.is_floating_point() and not tensor.isfinite().all():
                tensor.normal_(0, 0.02)
    perturb(ref, skip=("running_mean", "running_var", "num_points_scale", "decoder.up", "decoder.reg_scale",
                       "rope_embed.periods", "bias_mask"))
    with torch.no_grad():
        calibrate_batch_norms(ref, lambda: ref(torch.rand(1, 3, pixels, pixels)))
    path = tmp_path / f"deimv2_{size}.pth"
    torch.save({"model": ref.state_dict()}, path)
    model = zoo.create_model(f"deimv2_{size}", num_classes=7, checkpoint_path=path).eval()
    assert model.load_report.format == "official-deimv2"
    x = torch.rand(1, 3, pixels, pixels, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # the official anchors are float32 whatever the model's dtype (1e-6 on the logits); in float64 here, so that
    # the comparison is of the architectures
    generate = ref.decoder._generate_anchors
    ref.decoder._generate_anchors = lambda *a, **k: generate(*a, **{**k, "dtype": torch.float64})
    with torch.no_grad():
        expected, out = ref.double()(x), model.double()(x)
    assert expected["pred_logits"].std() > 0.1
    logits = (expected["pred_logits"] - out["pred_logits"]).abs().max().item()
    boxes = (expected["pred_boxes"] - out["pred_boxes"]).abs().max().item()
    print(f"deimv2_{size} vs the official code at {pixels}x{pixels}, float64: logits {logits:.1e}, boxes {boxes:.1e}")
    assert logits <= TOL and boxes <= TOL, (logits, boxes)


@pytest.mark.parametrize("size, epoch", [("atto", 0), ("atto", 460), ("n", 0), ("n", 140)])
def test_criterion_equals_the_official_deim_criterion(official, size, epoch):
    """``model.criterion()`` (configs/base/deimv2.yml ``DEIMCriterion`` with the size's overrides: Atto ``losses:
    [mal, boxes]``, ``use_uni_set: False``) against the official criterion and matcher, term by term in float64,
    before and after the size's matcher change (IoU-ordered costs). The official FGL targets are float32
    (``translate_gt``: ``.float()``), so sizes with FGL compare in float32, to 1e-5 relative; Atto in float64."""
    torch.manual_seed(0)
    light = size == "atto"
    dtype, tol = (torch.float64, 1e-10) if light else (torch.float32, 1e-5)
    model = zoo.create_model(f"deimv2_{size}", num_classes=5, num_queries=60).to(dtype).train()
    with torch.no_grad():  # non-zero heads so that every term is non-trivial
        for name, p in model.named_parameters():
            if "bbox_head" in name or "score_head" in name or "reg_conf" in name:
                p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(1)
    targets = [{"labels": torch.randint(0, 5, (n,), generator=g),
                "boxes": torch.cat([torch.rand(n, 2, generator=g) * 0.6 + 0.2,
                                    torch.rand(n, 2, generator=g) * 0.3 + 0.05], 1).to(dtype)} for n in (3, 5)]
    x = torch.rand(2, 3, 160, 160, generator=g, dtype=dtype)
    outputs = model(x, **model.training_inputs(x, targets))
    criterion = model.criterion()
    criterion.set_epoch(epoch)
    ours = criterion(outputs, targets)
    matcher = official["matcher"].HungarianMatcher(
        weight_dict={"cost_class": 2, "cost_bbox": 5, "cost_giou": 2}, use_focal_loss=True, alpha=0.25, gamma=2.0,
        change_matcher=True, iou_order_alpha=4.0, matcher_change_epoch=DEIMV2_MATCHER_CHANGE_EPOCH[size])
    reference = official["deim_criterion"].DEIMCriterion(
        matcher, weight_dict={"loss_mal": 1, "loss_bbox": 5, "loss_giou": 2, "loss_fgl": 0.15, "loss_ddf": 1.5},
        losses=["mal", "boxes"] if light else ["mal", "boxes", "local"], alpha=0.75, gamma=1.5, num_classes=5,
        reg_max=32, use_uni_set=not light)
    theirs = reference({**outputs, "enc_aux_outputs": [outputs["enc_outputs"]], "enc_meta": {"class_agnostic": False}},
                       targets, epoch=epoch)
    theirs = {k.replace("_enc_0", f"_aux_{len(outputs['aux_outputs'])}"): v for k, v in theirs.items()}
    # D-FINE's criterion gives the last denoising layer (its own teacher) a DDF of 0; DEIM's leaves the term out
    extra = {k for k in set(ours) - set(theirs) if k.startswith("loss_ddf_dn_") and ours[k].item() == 0}
    assert set(ours) - extra == set(theirs), sorted(set(ours) ^ set(theirs))
    assert ("loss_fgl" in ours) == (not light) and "loss_mal_pre" in ours
    worst = max(abs(ours[k].item() - v.item()) / max(1.0, abs(v.item())) for k, v in theirs.items())
    print(f"deimv2_{size} criterion at epoch {epoch}: {len(theirs)} terms, worst relative difference {worst:.1e}")
    assert worst <= tol
