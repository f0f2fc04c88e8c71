"""MAL (DEIM's Matchability-Aware Loss) and DEIMv2's late matching cost against the official formulas.

The references below are copied from the official code (not a test dependency): ``loss_labels_mal`` from
ShihuaHuang95/DEIM engine/deim/deim_criterion.py (identical in Intellindust-AI-Lab/DEIMv2), and the
``change_matcher`` cost of DEIMv2's engine/deim/matcher.py; only ``self`` became arguments and the box helpers
torchvision's. Compared in float64 to 1e-12."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, box_iou

from zoo.losses.matcher import HungarianMatcher
from zoo.models.dfine.criterion import DEIMV2_LOSS, DFINECriterion


def box_cxcywh_to_xyxy(x):
    return box_convert(x, "cxcywh", "xyxy")


def _get_src_permutation_idx(indices):
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for (src, _) in indices])
    return batch_idx, src_idx


def official_loss_labels_mal(self, outputs, targets, indices, num_boxes, values=None):
    """Copied from ShihuaHuang95/DEIM engine/deim/deim_criterion.py (DEIMCriterion.loss_labels_mal)."""
    assert 'pred_boxes' in outputs
    idx = _get_src_permutation_idx(indices)
    if values is None:
        src_boxes = outputs['pred_boxes'][idx]
        target_boxes = torch.cat([t['boxes'][i] for t, (_, i) in zip(targets, indices)], dim=0)
        ious = box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes))
        ious = torch.diag(ious).detach()
    else:
        ious = values

    src_logits = outputs['pred_logits']
    target_classes_o = torch.cat([t["labels"][J] for t, (_, J) in zip(targets, indices)])
    target_classes = torch.full(src_logits.shape[:2], self.num_classes,
                                dtype=torch.int64, device=src_logits.device)
    target_classes[idx] = target_classes_o
    target = F.one_hot(target_classes, num_classes=self.num_classes + 1)[..., :-1]

    target_score_o = torch.zeros_like(target_classes, dtype=src_logits.dtype)
    target_score_o[idx] = ious.to(target_score_o.dtype)
    target_score = target_score_o.unsqueeze(-1) * target

    pred_score = F.sigmoid(src_logits).detach()
    target_score = target_score.pow(self.gamma)
    if self.mal_alpha != None:  # noqa: E711 (official)
        weight = self.mal_alpha * pred_score.pow(self.gamma) * (1 - target) + target
    else:
        weight = pred_score.pow(self.gamma) * (1 - target) + target

    loss = F.binary_cross_entropy_with_logits(src_logits, target_score, weight=weight, reduction='none')
    loss = loss.mean(1).sum() * src_logits.shape[1] / num_boxes
    return {'loss_mal': loss}


def official_change_matcher_cost(outputs, targets, iou_order_alpha):
    """The ``change_matcher`` branch of Intellindust-AI-Lab/DEIMv2 engine/deim/matcher.py HungarianMatcher.forward
    (focal: sigmoid probabilities)."""
    out_prob = F.sigmoid(outputs["pred_logits"].flatten(0, 1))
    out_bbox = outputs["pred_boxes"].flatten(0, 1)
    tgt_ids = torch.cat([v["labels"] for v in targets])
    tgt_bbox = torch.cat([v["boxes"] for v in targets])
    class_score = out_prob[:, tgt_ids]
    bbox_iou = box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
    return (-1) * (class_score * torch.pow(bbox_iou, iou_order_alpha))


def _problem(seed: int, num_classes: int = 7, queries: int = 30):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat([torch.rand(2, queries, 2, generator=g) * 0.6 + 0.2,
                       torch.rand(2, queries, 2, generator=g) * 0.3 + 0.05], -1).double()
    outputs = {"pred_logits": torch.randn(2, queries, num_classes, generator=g, dtype=torch.float64) * 2,
               "pred_boxes": boxes}
    targets = []
    for n in (4, 6):
        xy, wh = torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=g),
                        "boxes": torch.cat([xy, wh], 1).double()})
    perm = [torch.randperm(queries, generator=g)[:len(t["labels"])] for t in targets]
    indices = [(p, torch.arange(len(p))) for p in perm]
    return outputs, targets, indices


@pytest.mark.parametrize("gamma, mal_alpha", [(1.5, None), (2.0, None), (1.5, 0.75)])
def test_mal_equals_the_official_formula(gamma, mal_alpha):
    outputs, targets, indices = _problem(0)
    criterion = DFINECriterion(7, cls_loss="mal", gamma=gamma, mal_alpha=mal_alpha)
    ours = criterion._terms(outputs, targets, indices, indices, 9.0, 9.0, None, None, local=False)["loss_mal"]
    ref = official_loss_labels_mal(SimpleNamespace(num_classes=7, gamma=gamma, mal_alpha=mal_alpha),
                                   outputs, targets, indices, 9.0)["loss_mal"]
    assert ours.dtype == torch.float64
    assert abs(ours.item() - ref.item()) <= 1e-12 * abs(ref.item()), (ours.item(), ref.item())
    # MAL is not VFL: the same inputs give another value
    vfl = DFINECriterion(7, gamma=gamma)._terms(outputs, targets, indices, indices, 9.0, 9.0, None, None,
                                                local=False)["loss_vfl"]
    assert abs(vfl.item() - ref.item()) > 1e-3


def test_mal_gradient_equals_the_official_formula():
    outputs, targets, indices = _problem(1)
    ours_in = {k: v.clone().requires_grad_(k == "pred_logits") for k, v in outputs.items()}
    ref_in = {k: v.clone().requires_grad_(k == "pred_logits") for k, v in outputs.items()}
    DFINECriterion(7, cls_loss="mal", gamma=1.5)._terms(ours_in, targets, indices, indices, 9.0, 9.0, None, None,
                                                        local=False)["loss_mal"].backward()
    official_loss_labels_mal(SimpleNamespace(num_classes=7, gamma=1.5, mal_alpha=None), ref_in, targets, indices,
                             9.0)["loss_mal"].backward()
    assert torch.allclose(ours_in["pred_logits"].grad, ref_in["pred_logits"].grad, rtol=0, atol=1e-12)


def test_deimv2_late_matcher_equals_the_official_cost():
    from scipy.optimize import linear_sum_assignment

    outputs, targets, _ = _problem(2)
    cost = official_change_matcher_cost(outputs, targets, 4.0).view(2, 30, -1)
    expected = [linear_sum_assignment(c[i]) for i, c in enumerate(cost.split([4, 6], -1))]
    ours = HungarianMatcher(iou_order=4.0)(outputs, targets)
    for (rows, cols), (q, t) in zip(expected, ours):
        assert q.tolist() == rows.tolist() and t.tolist() == cols.tolist()
    # and it differs from the focal / L1 / GIoU cost of the early epochs on this problem
    early = HungarianMatcher(2.0, 5.0, 2.0, use_focal=True)(outputs, targets)
    assert any(a[0].tolist() != b[0].tolist() for a, b in zip(early, ours))


def test_criterion_switches_matcher_at_the_change_epoch():
    outputs, targets, _ = _problem(3)
    criterion = DFINECriterion(7, **DEIMV2_LOSS, matcher_change_epoch=2)
    assert (criterion.cls_loss, criterion.gamma, criterion.mal_alpha) == ("mal", 1.5, None)
    late = HungarianMatcher(iou_order=4.0)(outputs, targets)
    early = criterion.matcher(outputs, targets)
    for epoch, expected in ((0, early), (1, early), (2, late), (5, late)):
        criterion.set_epoch(epoch)
        got = criterion._match(outputs, targets)
        assert [q.tolist() for q, _ in got] == [q.tolist() for q, _ in expected], epoch
