"""D-FINE's criterion against transformers' DFineLoss, and with MAL + dense one-to-one (DEIM / DEIMv2) against
transformers' Deimv2Loss, term by term on the same outputs and targets.

transformers' FGL target code casts bin indices to float32 (``translate_gt``: ``.float()``), so its loss cannot run
in float64: both criteria run on the same float32 copies of float64 model outputs, compared to 1e-5 relative; the
terms without FGL targets (MAL, L1, GIoU) are also compared in float64 to 1e-12."""
from __future__ import annotations

import pytest
import torch

import zoo
from zoo.models.dfine.criterion import DEIM_LOSS, DFINECriterion, bbox_to_distance

transformers = pytest.importorskip("transformers")
from transformers.loss.loss_d_fine import DFineLoss, bbox2distance  # noqa: E402
from transformers.loss.loss_deimv2 import Deimv2Loss  # noqa: E402

from hf_dfine import hf_dfine_config  # noqa: E402

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def training_outputs():
    """dfine_n (60 queries) in training mode (float64, 160x160, random weights) with denoising queries, and its targets."""
    torch.manual_seed(0)
    model = zoo.create_model("dfine_n", num_classes=NUM_CLASSES, num_queries=60).double().train()
    with torch.no_grad():  # non-zero heads so that every term is non-trivial
        for name, p in model.named_parameters():
            if "bbox_head" in name or "score_head" in name or "reg_conf" in name:
                p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(1)
    targets = []
    for n in (3, 5):
        xy, wh = torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, NUM_CLASSES, (n,), generator=g),
                        "boxes": torch.cat([xy, wh], 1).double()})
    x = torch.rand(2, 3, 160, 160, dtype=torch.float64, generator=g)
    outputs = model(x, **model.training_inputs(x, targets))
    return model, outputs, targets


def _transformers_inputs(outputs, targets):
    """The same outputs in the dict DFineLoss reads (what DFineForObjectDetectionLoss assembles)."""
    def rename(out):
        return {("logits" if k == "pred_logits" else k): v for k, v in out.items()}
    return ({"logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"],
             "auxiliary_outputs": [rename(a) for a in outputs["aux_outputs"]] + [rename(outputs["enc_outputs"])],
             "dn_auxiliary_outputs": [rename(a) for a in outputs["dn_outputs"]],
             "denoising_meta_values": outputs["dn_meta"]},
            [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets])


def _float32(value):
    if isinstance(value, torch.Tensor):
        return value.detach().float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _float32(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_float32(v) for v in value]
    return value


def test_per_layer_matching_equals_transformers_term_by_term(training_outputs):
    _, outputs, targets = training_outputs
    outputs, targets = _float32(outputs), _float32(targets)
    ours = DFINECriterion(NUM_CLASSES, matching="per_layer")(outputs, targets)
    theirs = DFineLoss(hf_dfine_config("dfine_n", NUM_CLASSES))(*_transformers_inputs(outputs, targets))
    assert set(ours) == set(theirs), sorted(set(ours) ^ set(theirs))
    assert {"loss_fgl_aux_0", "loss_ddf_aux_1", "loss_fgl_dn_2", "loss_vfl_aux_2"} <= set(ours)  # enc = aux_{L-1}
    for key in sorted(theirs):
        assert abs(ours[key].item() - theirs[key].item()) <= 1e-5 * max(1.0, abs(theirs[key].item())), key
    assert all(v.item() > 0 for k, v in ours.items() if not k.startswith("loss_ddf_dn_2")), ours


def test_union_matching_adds_the_official_terms(training_outputs):
    """The official recipe: FGL on the last layer, the first layer's boxes (_pre, _dn_pre), every term finite and
    differentiable."""
    model, outputs, targets = training_outputs
    losses = DFINECriterion(NUM_CLASSES)(outputs, targets)
    per_layer = DFINECriterion(NUM_CLASSES, matching="per_layer")(outputs, targets)
    assert set(losses) - set(per_layer) == {"loss_fgl", "loss_vfl_pre", "loss_bbox_pre", "loss_giou_pre",
                                            "loss_vfl_dn_pre", "loss_bbox_dn_pre", "loss_giou_dn_pre"}
    assert losses["loss_vfl"] == per_layer["loss_vfl"]  # classification keeps each layer's own matches
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.decoder.dec_bbox_head[0].layers[-1].weight.grad.abs().sum() > 0


def test_fgl_targets_equal_transformers():
    g = torch.Generator().manual_seed(3)
    points = torch.cat([torch.rand(20, 2, generator=g) * 0.6 + 0.2, torch.rand(20, 2, generator=g) * 0.3 + 0.05], 1)
    boxes = torch.cat([points[:, :2] - torch.rand(20, 2, generator=g) * 0.4,
                       points[:, :2] + torch.rand(20, 2, generator=g) * 0.4], 1).double()
    points = points.double()
    up, scale = torch.tensor([0.5], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64)
    ours = bbox_to_distance(points.float(), boxes.float(), 32, scale.float(), up.float())
    theirs = bbox2distance(points.float(), boxes.float(), 32, 4.0, up.float())  # float32 only (see above)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=0, atol=1e-5)
    assert ours[1].gt(0).any() and ours[0].gt(1).any()  # non-trivial targets


def test_model_criterion_is_the_official_recipe():
    criterion = zoo.create_model("dfine_n", num_classes=3).criterion()
    assert criterion.matching == "union" and criterion.reg_max == 32
    assert criterion.weight_dict == {"loss_vfl": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0, "loss_fgl": 0.15,
                                     "loss_ddf": 1.5}


def _deimv2_config(mal_alpha):
    from transformers import Deimv2Config

    # DEIMv2's own loss settings (configs/base/deimv2.yml): MAL with gamma 1.5
    return Deimv2Config(num_labels=NUM_CLASSES, focal_loss_gamma=1.5, mal_alpha=mal_alpha, use_dense_one_to_one=True)


@pytest.mark.parametrize("mal_alpha", [None, 0.75])
def test_dense_o2o_mal_equals_transformers_deimv2_loss_term_by_term(training_outputs, mal_alpha):
    _, outputs, targets = training_outputs
    outputs, targets = _float32(outputs), _float32(targets)
    ours = DFINECriterion(NUM_CLASSES, cls_loss="mal", gamma=1.5, mal_alpha=mal_alpha, style="transformers")(
        outputs, targets)
    theirs = Deimv2Loss(_deimv2_config(mal_alpha))(*_transformers_inputs(outputs, targets))
    assert set(ours) == set(theirs), sorted(set(ours) ^ set(theirs))
    assert {"loss_mal", "loss_mal_aux_2", "loss_fgl_aux_0", "loss_ddf_aux_1", "loss_mal_dn_2"} <= set(ours)
    for key in sorted(theirs):
        assert abs(ours[key].item() - theirs[key].item()) <= 1e-5 * max(1.0, abs(theirs[key].item())), key
    # the union is exercised: per-layer matching gives other box terms on some layer
    per_layer = DFINECriterion(NUM_CLASSES, cls_loss="mal", gamma=1.5, mal_alpha=mal_alpha, matching="per_layer")(
        outputs, targets)
    assert any(abs(ours[k].item() - per_layer[k].item()) > 1e-4 for k in ours if k.startswith("loss_bbox"))


def test_dense_o2o_mal_and_box_terms_equal_transformers_in_float64(training_outputs):
    """Without the FGL targets (float32 in transformers), Deimv2Loss runs in float64: MAL, L1 and GIoU of every
    layer (3), the encoder and the denoising groups (3) agree to 1e-12."""
    _, outputs, targets = training_outputs
    reference = Deimv2Loss(_deimv2_config(None))
    reference.losses = ["mal", "boxes"]
    theirs = reference(*_transformers_inputs(outputs, targets))
    ours = DFINECriterion(NUM_CLASSES, cls_loss="mal", gamma=1.5, style="transformers")(outputs, targets)
    assert len(theirs) == 3 * 7 and all(v.dtype == torch.float64 for v in theirs.values())
    for key in sorted(theirs):
        assert abs(ours[key].item() - theirs[key].item()) <= 1e-12 * max(1.0, abs(theirs[key].item())), key


def test_deim_official_union_names_mal_and_keeps_the_official_terms(training_outputs):
    _, outputs, targets = training_outputs
    deim = DFINECriterion(NUM_CLASSES, **DEIM_LOSS)(outputs, targets)
    dfine = DFINECriterion(NUM_CLASSES)(outputs, targets)
    assert {k.replace("_mal", "_vfl") for k in deim} == set(dfine)
    for key in dfine:  # the box and localisation terms are D-FINE's; only the classification term changes
        if "vfl" in key:
            assert deim[key.replace("_vfl", "_mal")].item() != dfine[key].item()
        else:
            assert deim[key].item() == dfine[key].item(), key


def test_criterion_refuses_unknown_settings():
    with pytest.raises(ValueError, match="cls_loss"):
        DFINECriterion(NUM_CLASSES, cls_loss="focal")
    with pytest.raises(ValueError, match="style"):
        DFINECriterion(NUM_CLASSES, style="mine")
    with pytest.raises(ValueError, match="matching"):
        DFINECriterion(NUM_CLASSES, matching="mine")
    with pytest.raises(ValueError, match="unknown terms"):
        DFINECriterion(NUM_CLASSES, cls_loss="mal", weight_dict={"loss_vfl": 1.0})
    with pytest.raises(ValueError, match="unknown terms.*loss_box'"):  # a typo is not a term silently left out
        DFINECriterion(NUM_CLASSES, weight_dict={"loss_vfl": 1.0, "loss_box": 5.0, "loss_giou": 2.0})
    with pytest.raises(ValueError, match="no weight for loss_mal"):
        DFINECriterion(NUM_CLASSES, cls_loss="mal", weight_dict={"loss_bbox": 5.0})
