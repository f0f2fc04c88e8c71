"""LW-DETR / RF-DETR optimiser groups against the official rules: every parameter's learning rate and weight decay
from zoo.models.lwdetr.recipe.param_groups equal those of the official ``get_param_dict`` (Atten4Vis/LW-DETR,
roboflow/rf-detr), its functions copied below and applied to the official name of each parameter.

The models here are STAND-INS: tiny modules with the parameter names of zoo's LW-DETR (WindowedViT in both styles,
projector, decoder), so that the rules are checked on every kind of name without building a real model."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from zoo.engine.trainer import RECIPE, TrainConfig, _param_groups, _with_recipe, learning_rates
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


# ---------------------------------------------------------------- stand-ins with zoo's parameter names
class StandInBlock(nn.Module):
    def __init__(self, dim: int, key_bias: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.Module()
        self.attention.attention = nn.Module()
        for proj in ("query", "key", "value"):
            setattr(self.attention.attention, proj, nn.Linear(dim, dim, bias=key_bias or proj != "key"))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(dim, dim)
        self.layer_scale1, self.layer_scale2 = nn.Module(), nn.Module()
        self.layer_scale1.lambda1 = nn.Parameter(torch.ones(dim))
        self.layer_scale2.lambda1 = nn.Parameter(torch.ones(dim))
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)


class StandInViT(nn.Module):
    """zoo.models.lwdetr.backbone.WindowedViT's parameter names and the attributes the recipe reads."""

    def __init__(self, style: str, depth: int, out_indices: tuple[int, ...], dim: int = 8):
        super().__init__()
        self.style, self.out_indices = style, list(out_indices)
        self.embeddings = nn.Module()
        if style == "dinov2":
            self.embeddings.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.embeddings.patch_embeddings = nn.Module()
        self.embeddings.patch_embeddings.projection = nn.Conv2d(3, dim, 4, 4)
        self.embeddings.position_embeddings = nn.Parameter(torch.zeros(1, 5, dim))
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(StandInBlock(dim, key_bias=style == "dinov2") for _ in range(depth))
        self.layernorm = nn.LayerNorm(dim) if style == "dinov2" else None


class StandInLWDETR(nn.Module):
    """A backbone, a projector (``encoder``) and a decoder named as zoo's LWDETR names them."""

    def __init__(self, style: str, depth: int, out_indices: tuple[int, ...], dim: int = 8, layers: int = 2):
        super().__init__()
        self.backbone = StandInViT(style, depth, out_indices, dim)
        self.encoder = nn.Module()
        self.encoder.stages = nn.ModuleList([nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim))])
        d = self.decoder = nn.Module()
        d.layers = nn.ModuleList(nn.ModuleDict({"self_attn": nn.MultiheadAttention(dim, 2), "norm1": nn.LayerNorm(dim),
                                                "linear1": nn.Linear(dim, dim)}) for _ in range(layers))
        d.norm, d.ref_point_head = nn.LayerNorm(dim), nn.Sequential(nn.Linear(2 * dim, dim), nn.Linear(dim, dim))
        d.enc_output, d.enc_output_norm = nn.ModuleList([nn.Linear(dim, dim)]), nn.ModuleList([nn.LayerNorm(dim)])
        d.enc_out_class_embed, d.enc_out_bbox_embed = nn.ModuleList([nn.Linear(dim, 3)]), nn.ModuleList([nn.Linear(dim, 4)])
        d.class_embed, d.bbox_embed = nn.Linear(dim, 3), nn.Linear(dim, 4)
        d.query_feat, d.refpoint_embed = nn.Embedding(6, dim), nn.Embedding(6, 4)


CAE = {r"^embeddings\.position_embeddings$": "pos_embed", r"^embeddings\.patch_embeddings\.projection\.": "patch_embed.proj.",
       r"^encoder\.layer\.(\d+)\.": r"blocks.\1.", r"attention\.attention\.(query|key|value)\.weight$": "attn.qkv.weight",
       r"attention\.attention\.query\.bias$": "attn.q_bias", r"attention\.attention\.value\.bias$": "attn.v_bias",
       r"attention\.output\.dense\.": "attn.proj.", r"layer_scale(\d)\.lambda1$": r"gamma_\1"}


def official_name(name: str, style: str) -> str:
    """The official name of a zoo parameter (LW-DETR's CAE ViT / rf-detr's transformers DINOv2 inside its wrapper)."""
    if name.startswith("backbone."):
        inner = name[len("backbone."):]
        if style == "dinov2":
            return "backbone.0.encoder.encoder." + inner
        for pattern, repl in CAE.items():
            inner = re.sub(pattern, repl, inner)
        return "backbone.0.encoder." + inner
    if name.startswith("encoder."):
        return "backbone.0.projector." + name[len("encoder."):]
    inner = name[len("decoder."):]
    if inner.startswith(("layers.", "norm.", "ref_point_head.")):
        return "transformer.decoder." + inner
    if inner.startswith("enc_"):
        return "transformer." + inner
    return inner


CASES = {  # style, depth, out_indices, official num_layers, layer decay, component decay
    "lwdetr_tiny": ("cae", 6, (1, 3, 5), 6, 0.8, 0.7),
    "lwdetr_large": ("cae", 10, (2, 4, 5, 9), 10, 0.7, 0.5),
    "rfdetr": ("dinov2", 12, (3, 6, 9, 12), 13, 0.8, 0.7),
}


@pytest.mark.parametrize("case", CASES)
def test_every_parameter_has_the_official_rate_and_decay(case):
    style, depth, out_indices, num_layers, layer_decay, component_decay = CASES[case]
    model = StandInLWDETR(style, depth, out_indices)
    groups = param_groups(model, LR, LR_ENCODER, WD, layer_decay, component_decay)
    where = {id(p): g for g in groups for p in g["params"]}
    assert len(where) == sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len({g["name"] for g in groups}) == len(groups)
    for name, p in model.named_parameters():
        official = official_name(name, style)
        lr, wd = official_lr_wd(official, style, num_layers, layer_decay, component_decay)
        g = where[id(p)]
        assert g["lr"] == pytest.approx(lr, rel=1e-12), (name, official)
        assert g["weight_decay"] == pytest.approx(wd, abs=0), (name, official)
    rates = {g["lr"] for g in groups if g["name"].startswith("backbone")}
    assert len(rates) == depth + 1 + (style == "dinov2")  # the embeddings, every block, RF-DETR's final norm
    top = num_layers + 1 if style == "dinov2" else depth  # RF-DETR's final norm at exponent 0, its blocks 13..2
    assert max(rates) / min(rates) == pytest.approx(layer_decay ** -top)


def test_the_rules_differ_where_the_official_lineages_do():
    """LW-DETR keeps its layer scales and patch projection weights out of / in weight decay; RF-DETR the reverse."""
    def decay(style, name):
        model = StandInLWDETR(style, 2, (1,) if style == "cae" else (2,))
        p = dict(model.named_parameters())[name]
        return next(g["weight_decay"] for g in param_groups(model, LR, LR_ENCODER, WD, 0.8, 0.7)
                    if any(q is p for q in g["params"]))
    assert decay("cae", "backbone.encoder.layer.0.layer_scale1.lambda1") == 0
    assert decay("dinov2", "backbone.encoder.layer.0.layer_scale1.lambda1") == WD
    assert decay("cae", "backbone.embeddings.patch_embeddings.projection.weight") == WD
    assert decay("dinov2", "backbone.embeddings.patch_embeddings.projection.weight") == 0
    assert decay("cae", "decoder.layers.0.norm1.weight") == WD  # official: no exclusion outside the backbone


def test_trainer_takes_the_models_groups_and_recipe():
    """The trainer's hooks: a model's ``param_groups`` replaces the generic groups, its ``train_defaults`` fill the
    settings left unset (epochs, warm-up, EMA included) and settings given explicitly win."""
    model = StandInLWDETR("dinov2", 12, (3, 6, 9, 12))
    recipe = RECIPES["rfdetr_small"]
    model.config = {"architecture": "rfdetr_small"}
    assert recipe_for(model) is recipe
    model.param_groups = lambda lr, mult, wd: param_groups(model, lr, lr * mult, wd, recipe.layer_decay,
                                                           recipe.component_decay)
    model.train_defaults = recipe.train_defaults()
    config = _with_recipe(TrainConfig(epochs=3), model)
    assert (config.epochs, config.warmup_steps, config.ema_decay) == (3, 0, 0.993)
    assert config.lr * config.backbone_lr_mult == pytest.approx(1.5e-4)
    groups = _param_groups(model, config.lr, config.backbone_lr_mult, config.weight_decay)
    rates = learning_rates(torch.optim.AdamW(groups, lr=config.lr))
    assert rates["lr"] == 1e-4 and rates["lr_decoder"] == pytest.approx(0.7e-4)
    assert rates["lr_backbone_layer14"] == pytest.approx(1.5e-4 * 0.7 ** 2)  # the final norm at the top rate
    assert rates["lr_backbone_layer0"] == pytest.approx(1.5e-4 * 0.7 ** 2 * 0.8 ** 14)
    plain = _with_recipe(TrainConfig(), nn.Linear(1, 1))
    assert (plain.epochs, plain.warmup_steps, plain.ema_decay) == (RECIPE["epochs"], RECIPE["warmup_steps"],
                                                                   RECIPE["ema_decay"])
