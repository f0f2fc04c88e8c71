"""DETR SetCriterion against transformers' DETR loss (``ForObjectDetectionLoss``, the reference SetCriterion)."""
from __future__ import annotations

import pytest
import torch

from zoo.models.detr.criterion import SetCriterion

REL_TOL = 1e-5
NUM_CLASSES, QUERIES, LAYERS = 91, 100, 6
WEIGHTS = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}


def _case(seed: int = 0):
    """Random predictions for 6 decoder layers and targets with raw COCO ids (one image without objects)."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(LAYERS, 3, QUERIES, NUM_CLASSES + 1, generator=g) * 2).requires_grad_()
    centers = torch.rand(LAYERS, 3, QUERIES, 2, generator=g) * 0.6 + 0.2
    sizes = torch.rand(LAYERS, 3, QUERIES, 2, generator=g) * 0.3 + 0.05
    boxes = torch.cat([centers, sizes], -1).requires_grad_()
    targets = []
    for n in (4, 0, 7):
        labels = torch.tensor([1, 3, 17, 18, 44, 62, 90, 90])[torch.randperm(8, generator=g)[:n]]
        xy = torch.rand(n, 2, generator=g) * 0.5 + 0.25
        wh = torch.rand(n, 2, generator=g) * 0.4 + 0.05
        targets.append({"labels": labels, "boxes": torch.cat([xy, wh], -1)})
    return logits, boxes, targets


def _zoo_outputs(logits, boxes):
    return {"pred_logits": logits[-1], "pred_boxes": boxes[-1],
            "aux_outputs": [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]}


def _transformers_loss(logits, boxes, targets):
    from transformers import DetrConfig
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

    config = DetrConfig(num_labels=NUM_CLASSES, auxiliary_loss=True, decoder_layers=LAYERS)
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    loss, loss_dict, _ = ForObjectDetectionLoss(logits[-1], labels, logits.device, boxes[-1], config,
                                                logits, boxes)
    return loss, loss_dict


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return abs(a.item() - b.item()) <= REL_TOL * max(abs(b.item()), 1e-12)


def test_matches_transformers_loss_terms_total_and_gradients():
    logits, boxes, targets = _case()
    hf_loss, hf_dict = _transformers_loss(logits, boxes, targets)
    hf_grads = torch.autograd.grad(hf_loss, (logits, boxes))

    losses = SetCriterion(num_classes=NUM_CLASSES)(_zoo_outputs(logits, boxes), targets)
    assert len(losses) == 3 * LAYERS
    for name, weight in WEIGHTS.items():
        assert _close(losses[name] / weight, hf_dict[name]), (name, losses[name] / weight, hf_dict[name])
        for i in range(LAYERS - 1):  # transformers names the auxiliary terms "<name>_<i>"
            zoo_term, hf_term = losses[f"{name}_aux_{i}"] / weight, hf_dict[f"{name}_{i}"]
            assert _close(zoo_term, hf_term), (name, i, zoo_term, hf_term)
    total = sum(losses.values())
    assert _close(total, hf_loss), (total, hf_loss)
    grads = torch.autograd.grad(total, (logits, boxes))
    for got, expected in zip(grads, hf_grads):
        assert expected.abs().sum() > 0
        assert (got - expected).abs().max() <= REL_TOL * expected.abs().max()


def test_cardinality_error_matches_transformers():
    logits, boxes, targets = _case(1)
    _, hf_dict = _transformers_loss(logits, boxes, targets)
    got = SetCriterion.cardinality_error({"pred_logits": logits[-1]}, targets)
    assert _close(got, hf_dict["cardinality_error"])


def test_no_object_weight_and_matching_are_used():
    """With every prediction at no-object and perfect boxes, only the matched queries pay: CE = -log p / weight sum."""
    target = {"labels": torch.tensor([5, 7]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])}
    logits = torch.zeros(1, 10, 11)
    logits[..., -1] = 10.0
    boxes = torch.full((1, 10, 4), 0.5)
    boxes[0, 3], boxes[0, 8] = target["boxes"][0], target["boxes"][1]
    losses = SetCriterion(num_classes=10, eos_coef=0.1)({"pred_logits": logits, "pred_boxes": boxes}, [target])
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    log_z = torch.logsumexp(logits[0, 0], 0)
    matched, unmatched = (log_z - logits[0, 0, 5]).item(), (log_z - 10.0).item()
    expected = (2 * matched + 8 * 0.1 * unmatched) / (2 + 8 * 0.1)
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("logits_cols, labels, error", [
    (11, torch.tensor([91]), "labels outside"),
    (91, torch.tensor([3]), "expects 92"),
])
def test_bad_targets_get_clear_errors(logits_cols, labels, error):
    criterion = SetCriterion(num_classes=NUM_CLASSES if logits_cols != 11 else 10)
    outputs = {"pred_logits": torch.zeros(1, 5, logits_cols), "pred_boxes": torch.full((1, 5, 4), 0.5)}
    with pytest.raises(ValueError, match=error):
        criterion(outputs, [{"labels": labels, "boxes": torch.full((1, 4), 0.5)}])
