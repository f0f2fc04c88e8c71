"""A training step of zoo's LW-DETR / RF-DETR against transformers', end to end in float64: the same weights
(transformers ``save_pretrained`` -> zoo), both models in training mode (13 Group DETR groups, two-stage proposals
per group), zoo's criterion on zoo's outputs against the ``loss_dict`` transformers' model computes, then the
gradients of every parameter. Tiny configurations (a 2-block ViT of width 32 at 64 px) keep it fast."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import zoo
from zoo.models.lwdetr.convert import from_transformers

transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))
from hf_lwdetr import perturb  # noqa: E402

NUM_CLASSES, RTOL = 5, 1e-6
WEIGHTS = {"ce": 1.0, "bbox": 5.0, "giou": 2.0}


def tiny_hf(kind: str):
    head = dict(d_model=32, decoder_ffn_dim=64, decoder_layers=3, decoder_self_attention_heads=2,
                decoder_cross_attention_heads=2, decoder_n_points=2, num_queries=10, num_labels=NUM_CLASSES,
                c2f_num_blocks=1, dropout=0.0)
    if kind == "lwdetr":
        backbone = transformers.LwDetrViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                image_size=64, pretrain_image_size=64, patch_size=16,
                                                window_block_indices=[0], out_indices=[1, 2], num_windows=4)
        config = transformers.LwDetrConfig(backbone_config=backbone, projector_scale_factors=[1.0], **head)
        return transformers.LwDetrForObjectDetection(config)
    backbone = transformers.RfDetrDinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               patch_size=16, num_windows=2, out_indices=[1, 2], image_size=64)
    config = transformers.RfDetrConfig(backbone_config=backbone, **head)
    return transformers.RfDetrForObjectDetection(config)


@pytest.mark.parametrize("kind", ["lwdetr", "rfdetr"])
def test_training_step_matches_transformers(kind, tmp_path):
    torch.manual_seed(0)
    hf = tiny_hf(kind)
    perturb(hf, seed=1, scale=0.05)  # non-zero box deltas, non-trivial norms and heads
    hf.save_pretrained(tmp_path)
    arch, args = from_transformers(hf.config.to_dict())
    model = zoo.create_model(arch, checkpoint_path=tmp_path / "model.safetensors", num_classes=NUM_CLASSES, **args)
    hf, model = hf.double().train(), model.double().train()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 64, 64, generator=g, dtype=torch.float64)
    targets = [{"labels": torch.tensor([1, 3, 0]),
                "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.4, 0.1, 0.2], [0.7, 0.7, 0.3, 0.2]])},
               {"labels": torch.tensor([4]), "boxes": torch.tensor([[0.6, 0.5, 0.3, 0.3]])}]
    out = hf(pixel_values=x, labels=[{"class_labels": t["labels"], "boxes": t["boxes"].double()} for t in targets])
    outputs = model(x)
    assert outputs["pred_logits"].shape == out.logits.shape == (2, 10 * 13, NUM_CLASSES)
    losses = model.criterion()(outputs, targets)
    expected = {k: v * WEIGHTS[k.split("_")[1]] for k, v in out.loss_dict.items() if k.startswith("loss_")}
    assert set(losses) == set(expected) and len(losses) == 12  # last, 2 earlier layers, encoder
    for k in losses:
        torch.testing.assert_close(losses[k], expected[k], rtol=RTOL, atol=0, msg=k)
    total = sum(losses.values())
    torch.testing.assert_close(total, out.loss, rtol=RTOL, atol=0)

    total.backward()
    out.loss.backward()
    # transformers' gradients as weights, written and read back through the same conversion as the weights
    # (q/k/v packed on one side and split on the other): every parameter's gradient compared
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    hf.save_pretrained(tmp_path / "grads")
    ref = zoo.create_model(arch, checkpoint_path=tmp_path / "grads" / "model.safetensors", num_classes=NUM_CLASSES,
                           **args).double()
    ref_grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(grad, ref_grads[name].detach(), rtol=RTOL, atol=1e-12, msg=name)
    assert model.decoder.class_embed.weight.grad.abs().sum() > 0
