"""LW-DETR / RF-DETR criterion against transformers' loss (``LwDetrForObjectDetectionLoss``, which
``LwDetrForObjectDetection`` and ``RfDetrForObjectDetection`` both use), term by term in float64 on the same
outputs and targets: Group DETR matching, IA-BCE, L1, GIoU, aux layers and encoder proposals, and the gradients."""
from __future__ import annotations

import pytest
import torch

from zoo.models.lwdetr.criterion import LWDETRCriterion, group_match, ia_bce_loss

transformers = pytest.importorskip("transformers")
from transformers import LwDetrConfig, RfDetrConfig  # noqa: E402
from transformers.loss.loss_lw_detr import (LwDetrForObjectDetectionLoss, LwDetrHungarianMatcher,  # noqa: E402
                                            LwDetrImageLoss)

NUM_CLASSES, QUERIES, GROUPS, LAYERS = 5, 12, 3, 3
RTOL = 1e-6


def random_outputs(batch: int, queries: int, seed: int = 0) -> dict:
    """float64 leaf outputs as a training forward returns them: last layer, LAYERS - 1 aux layers, encoder."""
    g = torch.Generator().manual_seed(seed)

    def head():
        logits = (torch.randn(batch, queries, NUM_CLASSES, generator=g, dtype=torch.float64) * 2).requires_grad_()
        xy = torch.rand(batch, queries, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1
        wh = torch.rand(batch, queries, 2, generator=g, dtype=torch.float64) * 0.4 + 0.02
        return {"pred_logits": logits, "pred_boxes": torch.cat([xy, wh], -1).requires_grad_()}
    out = head()
    out["aux_outputs"] = [head() for _ in range(LAYERS - 1)]
    out["enc_outputs"] = head()
    return out


def transformers_loss(outputs: dict, targets: list[dict], config) -> tuple[torch.Tensor, dict, dict]:
    """transformers' loss on the same tensors, as ``LwDetrForObjectDetection.forward`` calls it: the aux layers
    stacked with the last one (it drops the last), the encoder's class logits and boxes."""
    logits = torch.stack([a["pred_logits"] for a in outputs["aux_outputs"]] + [outputs["pred_logits"]])
    boxes = torch.stack([a["pred_boxes"] for a in outputs["aux_outputs"]] + [outputs["pred_boxes"]])
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"].double()} for t in targets]
    loss, loss_dict, _ = LwDetrForObjectDetectionLoss(
        outputs["pred_logits"], labels, "cpu", outputs["pred_boxes"], config, logits, boxes,
        outputs["enc_outputs"]["pred_logits"], outputs["enc_outputs"]["pred_boxes"])
    weights = {"loss_ce": config.class_loss_coefficient, "loss_bbox": config.bbox_loss_coefficient,
               "loss_giou": config.giou_loss_coefficient}
    weighted = {k: v * weights[k.split("_")[0] + "_" + k.split("_")[1]] for k, v in loss_dict.items()
                if not k.startswith("cardinality")}
    return loss, weighted, loss_dict


def tiny_config(cls):
    return cls(num_labels=NUM_CLASSES, num_queries=QUERIES, group_detr=GROUPS, decoder_layers=LAYERS)


def grads(loss: torch.Tensor, outputs: dict) -> list[torch.Tensor]:
    leaves = [outputs["pred_logits"], outputs["pred_boxes"]]
    for h in [*outputs["aux_outputs"], outputs["enc_outputs"]]:
        leaves += [h["pred_logits"], h["pred_boxes"]]
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("config_cls", [LwDetrConfig, RfDetrConfig])
def test_terms_and_gradients_match_transformers(config_cls, random_targets):
    """Every weighted term, the total and the gradients w.r.t. all outputs, with an image without boxes."""
    outputs = random_outputs(3, QUERIES * GROUPS)
    targets = random_targets([4, 0, 6])
    config = tiny_config(config_cls)
    hf_loss, hf_terms, raw = transformers_loss(outputs, targets, config)
    ours = LWDETRCriterion(NUM_CLASSES, group_detr=config.group_detr)(outputs, targets)
    names = {f"loss_{t}{s}" for t in ("ce", "bbox", "giou") for s in ["", "_0", "_1", "_enc"]}
    assert set(ours) == set(hf_terms) == names
    for k in names:
        assert ours[k].item() > 0, k
        torch.testing.assert_close(ours[k], hf_terms[k], rtol=RTOL, atol=0, msg=k)
    total = sum(ours.values())
    torch.testing.assert_close(total, hf_loss, rtol=RTOL, atol=0)
    for a, b in zip(grads(total, outputs), grads(hf_loss, outputs)):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=1e-12)
    assert "cardinality_error" in raw  # transformers logs it; it is not a loss (zoo's trainer sums every term)


def test_group_matching_matches_transformers(random_targets):
    """One match per target in each group, the same (query, target) pairs in the same order as transformers."""
    outputs = random_outputs(2, QUERIES * GROUPS, seed=3)
    targets = random_targets([5, 2], seed=4)
    ours = group_match(LWDETRCriterion(NUM_CLASSES).matcher, outputs, targets, GROUPS)
    hf = LwDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2)(
        {"logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]},
        [{"class_labels": t["labels"], "boxes": t["boxes"].double()} for t in targets], GROUPS)
    for (q, t), (hq, ht), target in zip(ours, hf, targets):
        assert torch.equal(q, hq) and torch.equal(t, ht)
        assert len(q) == GROUPS * len(target["labels"])
        assert torch.equal((q // QUERIES).bincount(minlength=GROUPS),
                           torch.full((GROUPS,), len(target["labels"])))  # each group matched on its own
    single = group_match(LWDETRCriterion(NUM_CLASSES).matcher, outputs, targets, 1)
    assert [len(q) for q, _ in single] == [5, 2]


def test_no_boxes_at_all_matches_transformers(random_targets):
    """A batch without boxes: only the negatives' IA-BCE, over max(boxes x groups, 1) as the official clamp."""
    outputs = random_outputs(2, QUERIES * GROUPS, seed=5)
    targets = random_targets([0, 0])
    _, hf_terms, _ = transformers_loss(outputs, targets, tiny_config(LwDetrConfig))
    ours = LWDETRCriterion(NUM_CLASSES, group_detr=GROUPS)(outputs, targets)
    for k in ours:
        torch.testing.assert_close(ours[k], hf_terms[k], rtol=RTOL, atol=0, msg=k)
    assert ours["loss_ce"] > 0 and ours["loss_bbox"] == 0


def test_eval_mode_is_one_group(random_targets):
    """criterion.eval(): the queries are one group (the official ``group_detr if self.training else 1``)."""
    outputs = random_outputs(2, QUERIES, seed=6)
    targets = random_targets([3, 2], seed=7)
    hf = LwDetrImageLoss(LwDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2), NUM_CLASSES, 0.25,
                         ["labels", "boxes"], GROUPS).eval()
    hf_inputs = {"logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]}
    hf_terms = hf(hf_inputs, [{"class_labels": t["labels"], "boxes": t["boxes"].double()} for t in targets])
    criterion = LWDETRCriterion(NUM_CLASSES, group_detr=GROUPS).eval()
    ours = criterion({"pred_logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]}, targets)
    torch.testing.assert_close(ours["loss_ce"], hf_terms["loss_ce"], rtol=RTOL, atol=0)
    torch.testing.assert_close(ours["loss_bbox"], hf_terms["loss_bbox"] * 5, rtol=RTOL, atol=0)
    torch.testing.assert_close(ours["loss_giou"], hf_terms["loss_giou"] * 2, rtol=RTOL, atol=0)


def test_ia_bce_targets_quality():
    """IA-BCE by hand on one positive: weight t = clamp(p^0.25 * IoU^0.75, 0.01) towards 1 - t, negatives p^2."""
    logits = torch.tensor([[[0.3, -1.2]]], dtype=torch.float64)
    iou = torch.tensor([0.5], dtype=torch.float64)
    loss = ia_bce_loss(logits, (torch.tensor([0]), torch.tensor([0]), torch.tensor([0])), iou)
    p = logits.sigmoid()[0, 0]
    t = p[0] ** 0.25 * 0.5 ** 0.75
    torch.testing.assert_close(loss[0, 0, 0], -t * p[0].log() - (1 - t) * (1 - p[0]).log())
    torch.testing.assert_close(loss[0, 0, 1], -(p[1] ** 2) * (1 - p[1]).log())
    low = ia_bce_loss(logits, (torch.tensor([0]), torch.tensor([0]), torch.tensor([0])), torch.zeros(1).double())
    torch.testing.assert_close(low[0, 0, 0], -0.01 * p[0].log() - 0.99 * (1 - p[0]).log())  # the 0.01 floor


def test_bad_inputs_are_refused(random_targets):
    criterion = LWDETRCriterion(NUM_CLASSES, group_detr=GROUPS)
    with pytest.raises(ValueError, match="do not split into 3 Group DETR groups"):
        criterion(random_outputs(2, QUERIES * GROUPS + 1), random_targets([1, 1]))
    bad = random_targets([1, 1])
    bad[0]["labels"][0] = NUM_CLASSES
    with pytest.raises(ValueError, match="labels outside"):
        criterion(random_outputs(2, QUERIES * GROUPS), bad)
    with pytest.raises(ValueError, match="group_detr"):
        LWDETRCriterion(NUM_CLASSES, group_detr=0)


def test_on_a_transformers_lwdetr_training_forward():
    """The outputs of a tiny ``LwDetrForObjectDetection`` in training mode (3 groups x 10 queries, two-stage,
    float64, random weights), in zoo's outputs dict: zoo's terms equal the ``loss_dict`` it computed itself."""
    from transformers import LwDetrForObjectDetection, LwDetrViTConfig

    backbone = LwDetrViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=64,
                               pretrain_image_size=64, patch_size=16, window_block_indices=[0], out_indices=[1, 2],
                               num_windows=4)
    config = LwDetrConfig(backbone_config=backbone, d_model=32, projector_scale_factors=[1.0], decoder_ffn_dim=64,
                          decoder_layers=2, decoder_self_attention_heads=2, decoder_cross_attention_heads=2,
                          decoder_n_points=2, num_queries=10, group_detr=3, num_labels=NUM_CLASSES, c2f_num_blocks=1)
    torch.manual_seed(0)
    model = LwDetrForObjectDetection(config).double().train()
    targets = [{"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.4, 0.1, 0.2]])},
               {"labels": torch.tensor([4]), "boxes": torch.tensor([[0.6, 0.5, 0.3, 0.3]])}]
    out = model(pixel_values=torch.rand(2, 3, 64, 64, dtype=torch.float64),
                labels=[{"class_labels": t["labels"], "boxes": t["boxes"].double()} for t in targets])
    assert out.logits.shape == (2, 30, NUM_CLASSES) and out.enc_outputs_class.shape == (2, 30, NUM_CLASSES)
    outputs = {"pred_logits": out.logits, "pred_boxes": out.pred_boxes,
               "aux_outputs": [{"pred_logits": a["logits"], "pred_boxes": a["pred_boxes"]}
                               for a in out.auxiliary_outputs],
               "enc_outputs": {"pred_logits": out.enc_outputs_class, "pred_boxes": out.enc_outputs_coord_logits}}
    ours = LWDETRCriterion(NUM_CLASSES, group_detr=3)(outputs, targets)
    weights = {"ce": 1.0, "bbox": 5.0, "giou": 2.0}
    expected = {k: v * weights[k.split("_")[1]] for k, v in out.loss_dict.items() if k.startswith("loss_")}
    assert set(ours) == set(expected) and len(ours) == 9
    for k in ours:
        torch.testing.assert_close(ours[k], expected[k], rtol=RTOL, atol=0, msg=k)
    torch.testing.assert_close(sum(ours.values()), out.loss, rtol=RTOL, atol=0)


def test_mixed_precision_outputs_are_summed_in_float32(random_targets):
    """bf16 outputs (AMP): the terms equal float32 ones on the same (bf16) values, not bf16 sums over all queries."""
    outputs = random_outputs(2, QUERIES * GROUPS, seed=8)
    low = {"pred_logits": outputs["pred_logits"].detach().bfloat16(),
           "pred_boxes": outputs["pred_boxes"].detach().bfloat16()}
    targets = random_targets([4, 3], seed=9)
    criterion = LWDETRCriterion(NUM_CLASSES, group_detr=GROUPS)
    ours = criterion(low, targets)
    ref = criterion({k: v.float() for k, v in low.items()}, targets)
    for k in ref:
        assert ours[k].dtype == torch.float32
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-6, atol=0, msg=k)
