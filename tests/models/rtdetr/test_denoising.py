"""Contrastive denoising queries: parity with transformers' generator (same seed -> same queries), and edge cases."""
import pytest
import torch

from zoo import create_model
from zoo.layers.denoising import build_denoising_queries

pytest.importorskip("transformers")
from transformers.models.rt_detr.modeling_rt_detr import get_contrastive_denoising_training_group  # noqa: E402


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return create_model("rtdetr_mobilenetv3_small", num_classes=5, num_queries=20, encoder={"hidden_dim": 64},
                        decoder={"hidden_dim": 64, "num_heads": 4}).decoder


@pytest.mark.parametrize("counts", [[3, 1], [7, 0, 2], [40]])
def test_matches_transformers(decoder, counts, random_targets):
    targets = random_targets(counts)
    torch.manual_seed(123)
    ours = build_denoising_queries(targets, decoder)
    torch.manual_seed(123)
    hf_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    cls, boxes, mask, meta = get_contrastive_denoising_training_group(
        hf_targets, 5, decoder.num_queries, decoder.denoising_class_embed, decoder.num_denoising,
        decoder.label_noise_ratio, decoder.box_noise_scale)
    torch.testing.assert_close(ours.class_embed, cls, rtol=0, atol=0)
    torch.testing.assert_close(ours.boxes_unact, boxes, rtol=1e-6, atol=1e-6)
    assert torch.equal(ours.attn_mask, torch.isinf(mask))
    assert ours.meta["dn_num_group"] == meta["dn_num_group"]
    assert ours.meta["dn_num_split"] == meta["dn_num_split"]
    for a, b in zip(ours.meta["dn_positive_idx"], meta["dn_positive_idx"]):
        assert torch.equal(a, b)


def test_positive_noise_smaller_than_negative(decoder, random_targets):
    targets = random_targets([4, 4], seed=3)
    dn = build_denoising_queries(targets, decoder, label_noise_ratio=0.0)
    boxes = dn.boxes_unact.sigmoid()
    gt = targets[0]["boxes"]
    pos, neg = boxes[0, :4], boxes[0, 4:8]  # group 0: 4 positives then 4 negatives
    # positive corners move < half the box size, negative ones between one and two half sizes (before clipping)
    assert ((pos[:, :2] - gt[:, :2]).abs() <= gt[:, 2:] + 1e-5).all()
    assert (dn.class_embed[0, :4] == decoder.denoising_class_embed(targets[0]["labels"])).all()
    assert not torch.equal(pos, neg)


def test_no_boxes_and_denoising_off(decoder, random_targets):
    assert build_denoising_queries(random_targets([0, 0]), decoder) is None
    assert build_denoising_queries(random_targets([2]), decoder, num_denoising=0) is None


def test_more_boxes_than_budget(decoder, random_targets):
    targets = random_targets([150, 3], seed=1)
    dn = build_denoising_queries(targets, decoder)  # budget 100
    n_dn, q = dn.meta["dn_num_split"]
    assert dn.meta["dn_num_group"] == 1 and n_dn == 200 and q == decoder.num_queries
    assert dn.attn_mask.shape == (n_dn + q, n_dn + q)
    gt_idx = dn.meta["dn_gt_idx"]
    assert len(gt_idx[0]) == 100 and len(set(gt_idx[0].tolist())) == 100 and gt_idx[0].max() < 150
    assert torch.equal(gt_idx[1], torch.arange(3))
    # positives carry the labels of the selected boxes (no label noise)
    dn = build_denoising_queries(targets, decoder, label_noise_ratio=0.0)
    expected = decoder.denoising_class_embed(targets[0]["labels"][dn.meta["dn_gt_idx"][0]])
    torch.testing.assert_close(dn.class_embed[0, dn.meta["dn_positive_idx"][0]], expected)


def test_attn_mask_blocks_groups(decoder, random_targets):
    dn = build_denoising_queries(random_targets([25]), decoder)  # 4 groups of 50
    m, g = dn.attn_mask, 50
    assert dn.meta["dn_num_group"] == 4
    assert not m[:g, :g].any() and m[:g, g:200].all() and not m[:g, 200:].any()
    assert m[200:, :200].all() and not m[200:, 200:].any()
