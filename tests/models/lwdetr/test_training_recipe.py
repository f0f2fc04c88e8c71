"""LW-DETR / RF-DETR optimiser groups against the official rules: every parameter's learning rate and weight decay
from zoo.models.lwdetr.recipe.param_groups equal those of the official ``get_param_dict`` (Atten4Vis/LW-DETR,
roboflow/rf-detr), its functions copied below and applied to the official name of each parameter.

Official names: rf-detr's from zoo's official-checkpoint key map (zoo.models.lwdetr.convert.RF_KEYS; LW-DETR has the
same names outside its ViT), LW-DETR's CAE ViT names from the table below."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import zoo
from zoo.engine.trainer import RECIPE, TrainConfig, _param_groups, _with_recipe, learning_rates
from zoo.models.lwdetr.convert import RF_KEYS
from zoo.models.lwdetr.recipe import RECIPES, param_groups, recipe_for

LR, LR_ENCODER, WD = 1e-4, 1.5e-4, 1e-4


# ---------------------------------------------------------------- the official functions (verbatim, prints removed)
def get_vit_lr_decay_rate(name, lr_decay_rate=1.0, num_layers=12):  # Atten4Vis/LW-DETR util/get_param_dicts.py
    layer_id = num_layers + 1
    if name.startswith("backbone"):
        if ".pos_embed" in name or ".patch_embed" in name:
            layer_id = 0
        elif ".blocks." in name and ".residual." not in name:
            layer_id = int(name[name.find(".blocks."):].split(".")[2]) + 1
    return lr_decay_rate ** (num_layers + 1 - layer_id)


def get_vit_weight_decay_rate(name, weight_decay_rate=1.0):  # Atten4Vis/LW-DETR util/get_param_dicts.py
    if ('gamma' in name) or ('pos_embed' in name) or ('rel_pos' in name) or ('bias' in name) or ('norm' in name):
        weight_decay_rate = 0.
    return weight_decay_rate


def get_dinov2_lr_decay_rate(name, lr_decay_rate=1.0, num_layers=12):  # rf-detr rfdetr/models/backbone/backbone.py
    layer_id = num_layers + 1
    if name.startswith("backbone"):
        if "embeddings" in name:
            layer_id = 0
        elif ".layer." in name and ".residual." not in name:
            layer_id = int(name[name.find(".layer."):].split(".")[2]) + 1
    return lr_decay_rate ** (num_layers + 1 - layer_id)


def get_dinov2_weight_decay_rate(name, weight_decay_rate=1.0):  # rf-detr rfdetr/models/backbone/backbone.py
    if (("gamma" in name) or ("pos_embed" in name) or ("rel_pos" in name) or ("bias" in name) or ("norm" in name)
            or ("embeddings" in name)):
        weight_decay_rate = 0.0
    return weight_decay_rate


def official_lr_wd(name: str, style: str, num_layers: int, layer_decay: float, component_decay: float):
    """``get_param_dict`` + ``Backbone.get_named_param_lr_pairs`` for one official parameter name."""
    if "backbone.0.encoder" in name:
        rate, decay = ((get_dinov2_lr_decay_rate, get_dinov2_weight_decay_rate) if style == "dinov2"
                       else (get_vit_lr_decay_rate, get_vit_weight_decay_rate))
        return (LR_ENCODER * rate(name, lr_decay_rate=layer_decay, num_layers=num_layers) * component_decay ** 2,
                WD * decay(name))
    if "transformer.decoder" in name:
        return LR * component_decay, WD
    return LR, WD  # the optimizer's default weight decay


# ---------------------------------------------------------------- the official names of zoo's parameters
#: LW-DETR's CAE ViT (Atten4Vis/LW-DETR models/backbone/vit.py) from zoo's (transformers DINOv2) names; q/k/v weights
#: are one ``qkv`` there, and the key has no bias
CAE = {r"^embeddings\.position_embeddings$": "pos_embed",
       r"^embeddings\.patch_embeddings\.projection\.": "patch_embed.proj.",
       r"^encoder\.layer\.(\d+)\.": r"blocks.\1.",
       r"attention\.attention\.(query|key|value)\.weight$": "attn.qkv.weight",
       r"attention\.attention\.query\.bias$": "attn.q_bias", r"attention\.attention\.value\.bias$": "attn.v_bias",
       r"attention\.output\.dense\.": "attn.proj.", r"layer_scale(\d)\.lambda1$": r"gamma_\1"}


def official_name(name: str, style: str) -> str:
    """The official name of a zoo parameter: rf-detr's (zoo's official-checkpoint key map, which LW-DETR shares
    outside the ViT), with LW-DETR's CAE ViT names in its backbone."""
    if style == "cae" and name.startswith("backbone."):
        inner = name[len("backbone."):]
        for pattern, repl in CAE.items():
            inner = re.sub(pattern, repl, inner)
        return "backbone.0.encoder." + inner
    official = RF_KEYS.to_theirs(name)
    assert official is not None, name
    return official


CASES = {  # model, official num_layers (vit_encoder_num_layers / out_feature_indexes[-1] + 1)
    "lwdetr_tiny": 6, "lwdetr_xlarge": 10, "rfdetr_nano": 13,
}


@pytest.mark.parametrize("name", CASES)
def test_every_parameter_has_the_official_rate_and_decay(name, single_thread):
    model = zoo.create_model(name, num_classes=3)
    style, num_layers, recipe = model.backbone.style, CASES[name], RECIPES[name]
    layer_decay, component_decay = recipe.layer_decay, recipe.component_decay
    groups = param_groups(model, LR, LR_ENCODER, WD, layer_decay, component_decay)
    where = {id(p): g for g in groups for p in g["params"]}
    assert len(where) == sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len({g["name"] for g in groups}) == len(groups)
    for pname, p in model.named_parameters():
        official = official_name(pname, style)
        lr, wd = official_lr_wd(official, style, num_layers, layer_decay, component_decay)
        g = where[id(p)]
        assert g["lr"] == pytest.approx(lr, rel=1e-12), (pname, official)
        assert g["weight_decay"] == wd, (pname, official)
    depth = len(model.backbone.encoder.layer)
    rates = {g["lr"] for g in groups if g["name"].startswith("backbone")}
    assert len(rates) == depth + 1 + (style == "dinov2")  # the embeddings, every block, RF-DETR's final norm
    top = num_layers + 1 if style == "dinov2" else depth  # RF-DETR's final norm at exponent 0, its blocks 13..2
    assert max(rates) / min(rates) == pytest.approx(layer_decay ** -top)


def test_the_rules_differ_where_the_official_lineages_do():
    """LW-DETR keeps its layer scales out of weight decay and its patch projection weights in; RF-DETR the
    reverse; outside the backbone everything decays (the official groups exclude nothing there)."""
    def decay(name, pname):
        model = zoo.create_model(name, num_classes=3)
        p = dict(model.named_parameters())[pname]
        return next(g["weight_decay"] for g in model.param_groups(LR, 1.5, WD) if any(q is p for q in g["params"]))
    assert decay("lwdetr_tiny", "backbone.encoder.layer.0.layer_scale1.lambda1") == 0
    assert decay("rfdetr_nano", "backbone.encoder.layer.0.layer_scale1.lambda1") == WD
    assert decay("lwdetr_tiny", "backbone.embeddings.patch_embeddings.projection.weight") == WD
    assert decay("rfdetr_nano", "backbone.embeddings.patch_embeddings.projection.weight") == 0
    assert decay("lwdetr_tiny", "decoder.layers.0.norm1.weight") == WD


def test_trainer_takes_the_models_groups_and_recipe():
    """The trainer's hooks: the model's ``param_groups`` replace the generic groups, its ``train_defaults`` fill the
    settings left unset (epochs, warm-up, EMA included) and settings given explicitly win."""
    model = zoo.create_model("rfdetr_small", num_classes=3)
    assert recipe_for(model) is RECIPES["rfdetr_small"]
    config = _with_recipe(TrainConfig(epochs=3), model)
    assert (config.epochs, config.warmup_steps, config.ema_decay, config.weight_decay) == (3, 0, 0.993, 1e-4)
    assert (config.lr, config.backbone_lr_mult) == (1e-4, 1.5)
    groups = _param_groups(model, config.lr, config.backbone_lr_mult, config.weight_decay)
    rates = learning_rates(torch.optim.AdamW(groups, lr=config.lr))
    assert rates["lr"] == 1e-4 and rates["lr_decoder"] == pytest.approx(0.7e-4)
    assert rates["lr_backbone_layer14"] == pytest.approx(1.5e-4 * 0.7 ** 2)  # the final norm at the top rate
    assert rates["lr_backbone_layer0"] == pytest.approx(1.5e-4 * 0.7 ** 2 * 0.8 ** 14)
    assert recipe_for(zoo.create_model("lwdetr_large", num_classes=3)).component_decay == 0.5
    plain = _with_recipe(TrainConfig(), nn.Linear(1, 1))
    assert (plain.epochs, plain.warmup_steps, plain.ema_decay) == (RECIPE["epochs"], RECIPE["warmup_steps"],
                                                                   RECIPE["ema_decay"])
