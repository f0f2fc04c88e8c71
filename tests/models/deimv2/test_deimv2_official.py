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

from hf_deimv2 import calibrate_batch_norms, perturb  # noqa: E402

SRC = os.environ.get("DEIMV2_OFFICIAL_SRC")
pytestmark = pytest.mark.skipif(not SRC or not (Path(SRC) / "engine" / "deim").is_dir(),
                                reason="set DEIMV2_OFFICIAL_SRC to a checkout of Intellindust-AI-Lab/DEIMv2")
MODULES = ["backbone.common", "backbone.hgnetv2", "backbone.vit_tiny", "deim.box_ops", "deim.utils",
           "deim.dfine_utils", "deim.deim_utils", "deim.denoising", "deim.dfine_decoder", "deim.deim_decoder",
           "deim.hybrid_encoder", "deim.lite_encoder", "backbone.dinov3_adapter"]
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
