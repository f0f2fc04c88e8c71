"""zoo.weights.keymap: one rule table renames keys both ways; the family tables round-trip every model key."""
from __future__ import annotations

import pytest
import torch

import zoo
from zoo.models.detr import convert as detr
from zoo.models.rtdetr import convert as rtdetr
from zoo.weights.keymap import KeyMap, KeyRule

RULES = KeyMap([
    KeyRule("stem.{k}.conv.", "conv1_{k}.", {"k": {"0": "1", "1": "2"}}),
    KeyRule("layers.{i}.fc1.", "blocks.{i}.linear1.", read_also=("layers.{i}.mlp.fc1.",)),
    KeyRule("layers.{i}.", "blocks.{i}."),
])


def test_rules_rename_both_ways():
    assert RULES.to_ours("stem.1.conv.weight") == "conv1_2.weight"
    assert RULES.to_theirs("conv1_2.weight") == "stem.1.conv.weight"
    assert RULES.to_ours("layers.3.mlp.fc1.bias") == "blocks.3.linear1.bias"  # another spelling, read only
    assert RULES.to_theirs("blocks.3.linear1.bias") == "layers.3.fc1.bias"  # written in the canonical one
    assert RULES.to_ours("layers.3.norm.weight") == "blocks.3.norm.weight"
    assert RULES.to_ours("stem.2.conv.weight") is None  # not a value of the table
    assert RULES.to_theirs("head.weight") is None


def test_save_names_keys_without_a_rule():
    with pytest.raises(KeyError, match="head.weight"):
        RULES.save({"head.weight": torch.zeros(1), "blocks.0.x": torch.zeros(1)})


def test_attention_projections_split_and_pack():
    packed = {"blocks.0.self_attn.in_proj_weight": torch.arange(12.0).reshape(6, 2)}
    theirs = RULES.save(packed)
    assert sorted(theirs) == [f"layers.0.self_attn.{n}_proj.weight" for n in "kqv"]
    torch.testing.assert_close(RULES.load(theirs), packed, rtol=0, atol=0)
    del theirs["layers.0.self_attn.k_proj.weight"]
    with pytest.raises(KeyError, match="no k_proj"):
        RULES.load(theirs)


@pytest.mark.parametrize("architecture, table", [("rtdetr_r50vd", rtdetr), ("rtdetrv2_r18vd", rtdetr),
                                                 ("rtdetr_mobilenetv3_small", rtdetr), ("detr_resnet50", detr)])
def test_family_tables_round_trip(architecture, table):
    with torch.device("meta"):
        state = zoo.create_model(architecture).state_dict()
    theirs = table.zoo_to_transformers(state)
    assert len(set(theirs)) == len(theirs) and not any(k.startswith(("backbone.", "encoder.", "decoder.", "transformer."))
                                                       for k in theirs)
    back = table.transformers_to_zoo(theirs)
    assert set(back) == {k for k in state if not (table is detr and k.endswith("num_batches_tracked"))}
