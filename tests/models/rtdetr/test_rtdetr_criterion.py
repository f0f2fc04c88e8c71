"""RT-DETR criterion vs transformers' RTDetrForObjectDetectionLoss on the same zoo model outputs and targets:
every loss term within 1e-5 relative, with denoising off and with the same denoising groups fed to both."""
import pytest
import torch

from zoo import create_model
from zoo.layers.denoising import build_denoising_queries
from zoo.models.rtdetr.criterion import RTDETRCriterion

transformers = pytest.importorskip("transformers")
from transformers import RTDetrConfig  # noqa: E402
from transformers.loss.loss_rt_detr import RTDetrForObjectDetectionLoss  # noqa: E402

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("rtdetr_mobilenetv3_small", num_classes=NUM_CLASSES,  # narrow, to keep the test fast
                     encoder={"hidden_dim": 64, "dim_feedforward": 128, "num_heads": 4},
                     decoder={"hidden_dim": 64, "dim_feedforward": 128, "num_heads": 4, "num_queries": 30}).train()
    with torch.no_grad():  # heads start at zero: perturb them so that boxes and scores differ per query
        for p in m.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _hf_loss(outputs, targets):
    """Feed zoo's outputs to transformers' loss in its own layout (dn queries concatenated in front)."""
    dn = outputs.get("dn_outputs")
    layers = [*outputs["aux_outputs"], {"pred_logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]}]
    if dn is not None:
        layers = [{k: torch.cat([d[k], o[k]], 1) for k in o} for d, o in zip(dn, layers)]
    config = RTDetrConfig(num_labels=NUM_CLASSES)
    _, terms, _ = RTDetrForObjectDetectionLoss(
        logits=layers[-1]["pred_logits"], labels=[{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets],
        device="cpu", pred_boxes=layers[-1]["pred_boxes"], config=config,
        outputs_class=torch.stack([x["pred_logits"] for x in layers], 1),
        outputs_coord=torch.stack([x["pred_boxes"] for x in layers], 1),
        enc_topk_logits=outputs["enc_outputs"]["pred_logits"], enc_topk_bboxes=outputs["enc_outputs"]["pred_boxes"],
        denoising_meta_values=outputs.get("dn_meta"))
    num_aux = len(outputs["aux_outputs"])
    rename = {f"_aux_{num_aux}": "_enc"}  # transformers appends the encoder head as the last aux output
    return {(k[:-len(s)] + rename[s] if any(k.endswith(s := x) for x in rename) else k): v for k, v in terms.items()}


def _compare(ours, ref):
    assert set(ours) == set(ref)
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key].float(), rtol=1e-5, atol=1e-7, msg=key)


@pytest.mark.parametrize("denoising", [False, True])
def test_matches_transformers(model, denoising, random_targets):
    targets = random_targets([3, 5])
    torch.manual_seed(1)
    x = torch.rand(2, 3, 128, 128)
    dn = build_denoising_queries(targets, model.decoder) if denoising else None
    with torch.no_grad():
        outputs = model(x, denoising=dn)
    ours = RTDETRCriterion(NUM_CLASSES)(outputs, targets)
    assert len(ours) == 3 * (1 + 2 + 1 + (3 if denoising else 0))
    _compare(ours, _hf_loss(outputs, targets))


def test_edge_cases_finite_and_trainable(model, random_targets):
    # no boxes in one image, a zero-area box, and more boxes than the denoising budget in another
    targets = random_targets([0, 120], seed=2)
    targets[1]["boxes"][0, 2:] = 0.0
    dn = build_denoising_queries(targets, model.decoder)
    x = torch.rand(2, 3, 128, 128)
    outputs = model(x, denoising=dn)
    losses = RTDETRCriterion(NUM_CLASSES)(outputs, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad()


def test_all_empty_targets(model, random_targets):
    targets = random_targets([0, 0])
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, 128, 128))
    losses = RTDETRCriterion(NUM_CLASSES)(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"] == 0 and losses["loss_giou"] == 0 and losses["loss_vfl"] > 0
    _compare(losses, _hf_loss(outputs, targets))


def test_bad_labels_rejected(model):
    outputs = {"pred_logits": torch.zeros(1, 4, NUM_CLASSES), "pred_boxes": torch.full((1, 4, 4), 0.5)}
    with pytest.raises(ValueError, match="contiguous"):
        RTDETRCriterion(NUM_CLASSES)(outputs, [{"labels": torch.tensor([NUM_CLASSES]), "boxes": torch.rand(1, 4)}])
