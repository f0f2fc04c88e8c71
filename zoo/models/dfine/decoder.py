"""D-FINE decoder: RT-DETR's query selection, then deformable layers with a gated cross-attention whose boxes are
refined as distributions (Fine-grained Distribution Refinement): each layer predicts, for each of the four box
edges, logits over ``reg_max + 1`` bins, adds them to the previous layer's, and the integral of their softmax over
the non-uniform weighting function W(n) gives the edge distances from the first layer's box. An LQE head adds a
localisation-quality score (from the top-4 bin probabilities) to the class logits.

Parameter names follow the official ``DFINETransformer`` (Peterande/D-FINE ``src/zoo/dfine/dfine_decoder.py``),
so official checkpoints load by name; ``up`` and ``reg_scale`` are buffers (fixed hyper-parameters stored in the
checkpoints), the official anchors / valid mask for one input size are not kept (computed per input size).
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert

from zoo.layers.conv import create_act
from zoo.layers.denoising import DenoisingQueries
from zoo.layers.init import prior_prob_bias
from zoo.layers.mlp import MLP
from zoo.layers.ms_deform_attn import MSDeformableAttention
from zoo.layers.query_selection import inverse_sigmoid, select_queries
from zoo.registry import register_component

__all__ = ["DFINEDecoder", "weighting_function", "distance_to_box", "LQE", "Gate"]


def weighting_function(reg_max: int, up: torch.Tensor, reg_scale: torch.Tensor) -> torch.Tensor:
    """The non-uniform W(n), ``reg_max + 1`` values from ``-2 up c`` to ``2 up c`` (c = |reg_scale|), dense near 0."""
    upper1, upper2 = up.abs() * reg_scale.abs(), up.abs() * reg_scale.abs() * 2
    step = (upper1 + 1) ** (2 / (reg_max - 2))
    left = [-(step ** i) + 1 for i in range(reg_max // 2 - 1, 0, -1)]
    right = [step ** i - 1 for i in range(1, reg_max // 2)]
    return torch.cat([-upper2, *left, torch.zeros_like(up), *right, upper2])


def distance_to_box(points: torch.Tensor, distance: torch.Tensor, reg_scale: torch.Tensor) -> torch.Tensor:
    """Reference boxes (cxcywh) and edge distances (left, top, right, bottom, in units of box size / reg_scale,
    offset by reg_scale / 2) -> boxes (cxcywh)."""
    reg_scale = reg_scale.abs()
    x1 = points[..., 0] - (0.5 * reg_scale + distance[..., 0]) * (points[..., 2] / reg_scale)
    y1 = points[..., 1] - (0.5 * reg_scale + distance[..., 1]) * (points[..., 3] / reg_scale)
    x2 = points[..., 0] + (0.5 * reg_scale + distance[..., 2]) * (points[..., 2] / reg_scale)
    y2 = points[..., 1] + (0.5 * reg_scale + distance[..., 3]) * (points[..., 3] / reg_scale)
    return box_convert(torch.stack([x1, y1, x2, y2], -1), "xyxy", "cxcywh")


def integral(corners: torch.Tensor, project: torch.Tensor, reg_max: int) -> torch.Tensor:
    """``[..., 4 * (reg_max + 1)]`` bin logits -> ``[..., 4]`` expected distances ``sum_n softmax(x)_n W(n)``."""
    prob = F.softmax(corners.reshape(*corners.shape[:-1], 4, reg_max + 1), dim=-1)
    return prob @ project.to(prob.dtype)


def _full_precision(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``head(x)`` outside autocast in float32 (Peterande/D-FINE#3: the box heads' bin logits and their residual sum
    lose the fine bins in half precision); unchanged without autocast (float64 stays float64)."""
    device = x.device.type  # the meta device (zoo's FLOP counting) has no autocast
    if not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):
        return head(x)
    with torch.autocast(device, enabled=False):
        return head(x.float())


class Gate(nn.Module):
    """Gated residual: ``norm(g1 * x1 + g2 * x2)`` with sigmoid gates from ``[x1, x2]`` (starts at 0.5/0.5)."""

    def __init__(self, d_model: int, norm: nn.Module | None = None):
        super().__init__()
        self.gate = nn.Linear(2 * d_model, 2 * d_model)
        self.norm = nn.LayerNorm(d_model) if norm is None else norm  # DEIMv2: an RMSNorm
        nn.init.constant_(self.gate.bias, prior_prob_bias(0.5))
        nn.init.zeros_(self.gate.weight)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        gate1, gate2 = torch.sigmoid(self.gate(torch.cat([x1, x2], -1))).chunk(2, -1)
        return self.norm(gate1 * x1 + gate2 * x2)


class LQE(nn.Module):
    """Location quality estimator: ``scores + MLP([top-k bin probabilities, their mean] per edge)``."""

    def __init__(self, k: int = 4, hidden_dim: int = 64, num_layers: int = 2, reg_max: int = 32, act: str = "relu"):
        super().__init__()
        self.k, self.reg_max = k, reg_max
        self.reg_conf = MLP(4 * (k + 1), hidden_dim, 1, num_layers, act=act)
        nn.init.zeros_(self.reg_conf.layers[-1].weight)
        nn.init.zeros_(self.reg_conf.layers[-1].bias)

    def forward(self, scores: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
        b, n, _ = corners.shape
        prob = F.softmax(corners.reshape(b, n, 4, self.reg_max + 1), dim=-1)
        top = prob.topk(self.k, dim=-1).values
        stat = torch.cat([top, top.mean(dim=-1, keepdim=True)], dim=-1)
        return scores + self.reg_conf(stat.reshape(b, n, -1))


class DFINEDecoderLayer(nn.Module):
    """Self-attention -> LN (``norm1``) -> deformable cross-attention (no value/output projections) merged by
    :class:`Gate` -> FFN -> LN (``norm3``, input clamped to the float16 range)."""

    def __init__(self, d_model: int = 256, num_heads: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0,
                 activation: str = "relu", num_levels: int = 3, num_points: int | Sequence[int] = 4,
                 cross_attn_method: str = "default"):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, num_heads, num_levels, num_points, method=cross_attn_method,
                                                persistent_points_scale=True, projections=False)
        self.dropout2 = nn.Dropout(dropout)
        self.gateway = Gate(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.activation = create_act(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(self, tgt: torch.Tensor, reference_boxes: torch.Tensor, memory: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]], attn_mask: torch.Tensor | None,
                query_pos: torch.Tensor) -> torch.Tensor:
        q = k = tgt + query_pos
        attn, _ = self.self_attn(q, k, value=tgt, attn_mask=attn_mask, need_weights=False)
        tgt = self.norm1(tgt + self.dropout1(attn))
        cross = self.cross_attn(tgt + query_pos, reference_boxes, memory, spatial_shapes)
        tgt = self.gateway(tgt, self.dropout2(cross))
        tgt = tgt + self.dropout4(self.linear2(self.dropout3(self.activation(self.linear1(tgt)))))
        return self.norm3(tgt.clamp(min=-65504, max=65504))


class _Layers(nn.Module):
    """The official ``decoder.decoder`` container: ``layers`` and ``lqe_layers``."""

    def __init__(self, layer: nn.Module, num_layers: int, reg_max: int, lqe_act: str = "relu"):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.lqe_layers = nn.ModuleList(LQE(4, 64, 2, reg_max, act=lqe_act) for _ in range(num_layers))


@register_component("decoder", "dfine")
class DFINEDecoder(nn.Module):
    """Query selection + FDR decoder + per-layer class / distribution heads.

    Eval: ``pred_logits`` / ``pred_boxes`` of the ``eval_idx`` layer (later layers are not run). Train: also
    ``pred_corners`` / ``ref_points`` (bin logits and the reference boxes they refine, for the FGL/DDF losses),
    ``aux_outputs`` (earlier layers, each with the last layer's corners and logits as GO-LSD teacher),
    ``pre_outputs`` (the first layer's box head), ``enc_outputs`` (encoder top-k) and, with denoising queries,
    ``dn_outputs``, ``dn_pre_outputs`` and ``dn_meta``. ``layer_scale`` (wider layers after ``eval_idx``) is
    not used by any released model and only 1 is supported.

    Options for the DEIM lineage (zoo.models.deimv2 subclasses this decoder; D-FINE keeps the defaults):
    ``head_act`` / ``lqe_act``, the activation of the box heads (encoder, first layer, per layer) / of the LQE MLPs;
    ``enc_projection=False`` scores and regresses the encoder cells without the ``enc_output`` Linear+LayerNorm;
    ``query_pos_per_layer=False`` embeds the initial reference boxes once instead of each layer's.
    ``_build_layer`` / ``_build_query_pos_head`` build the per-layer block and the query position head.
    """

    def __init__(self, in_channels: Sequence[int] = (256, 256, 256), num_classes: int = 80, hidden_dim: int = 256,
                 num_queries: int = 300, num_levels: int = 3, num_points: int | Sequence[int] = (3, 6, 3),
                 num_heads: int = 8, num_decoder_layers: int = 6, dim_feedforward: int = 1024, dropout: float = 0.0,
                 activation: str = "relu", num_denoising: int = 100, label_noise_ratio: float = 0.5,
                 box_noise_scale: float = 1.0, eval_idx: int = -1, anchor_eps: float = 1e-2,
                 cross_attn_method: str = "default", reg_max: int = 32, reg_scale: float = 4.0, up: float = 0.5,
                 layer_scale: float = 1.0, head_act: str = "relu", lqe_act: str = "relu", enc_projection: bool = True,
                 query_pos_per_layer: bool = True):
        super().__init__()
        self.query_pos_per_layer = query_pos_per_layer
        if not -num_decoder_layers <= eval_idx < num_decoder_layers:
            raise ValueError(f"eval_idx {eval_idx} out of range for {num_decoder_layers} decoder layers")
        if len(in_channels) > num_levels:
            raise ValueError(f"{len(in_channels)} input levels but num_levels={num_levels}")
        if layer_scale != 1:
            raise ValueError(f"layer_scale={layer_scale}: only 1 is supported (no released D-FINE model uses another)")
        self.num_classes, self.hidden_dim, self.num_queries = num_classes, hidden_dim, num_queries
        self.num_levels, self.num_denoising = num_levels, num_denoising
        self.label_noise_ratio, self.box_noise_scale = label_noise_ratio, box_noise_scale
        self.eval_idx = eval_idx % num_decoder_layers
        self.anchor_eps, self.reg_max = anchor_eps, reg_max

        # projections only where the encoder width differs from the decoder's (official: Identity otherwise)
        self.input_proj = nn.ModuleList()
        for c in in_channels:
            self.input_proj.append(nn.Identity() if c == hidden_dim else nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(c, hidden_dim, 1, bias=False)), ("norm", nn.BatchNorm2d(hidden_dim))])))
        c = in_channels[-1]
        for _ in range(num_levels - len(in_channels)):  # extra levels by stride-2 convs
            self.input_proj.append(nn.Identity() if c == hidden_dim else nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(c, hidden_dim, 3, 2, padding=1, bias=False)), ("norm", nn.BatchNorm2d(hidden_dim))])))
            c = hidden_dim

        self.register_buffer("up", torch.tensor([up]))
        self.register_buffer("reg_scale", torch.tensor([reg_scale]))
        layer = self._build_layer(hidden_dim, num_heads, dim_feedforward, dropout, activation, num_levels, num_points,
                                  cross_attn_method)
        self.decoder = _Layers(layer, num_decoder_layers, reg_max, lqe_act)
        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)
            nn.init.normal_(self.denoising_class_embed.weight[:-1])
        self.query_pos_head = self._build_query_pos_head(hidden_dim)
        self.enc_output = nn.Sequential(OrderedDict([("proj", nn.Linear(hidden_dim, hidden_dim)),
                                                     ("norm", nn.LayerNorm(hidden_dim))])) if enc_projection else None
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, num_layers=3, act=head_act)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(num_decoder_layers))
        self.pre_bbox_head = MLP(hidden_dim, hidden_dim, 4, num_layers=3, act=head_act)
        self.dec_bbox_head = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4 * (reg_max + 1), num_layers=3, act=head_act)
                                           for _ in range(num_decoder_layers))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bias = prior_prob_bias(0.01)
        nn.init.constant_(self.enc_score_head.bias, bias)
        for head in [self.enc_bbox_head, self.pre_bbox_head, *self.dec_bbox_head]:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        for head in self.dec_score_head:
            nn.init.constant_(head.bias, bias)
        if self.enc_output is not None:
            nn.init.xavier_uniform_(self.enc_output.proj.weight)
        for lin in self.query_pos_head.layers:
            nn.init.xavier_uniform_(lin.weight)
        for proj in self.input_proj:
            if isinstance(proj, nn.Sequential):
                nn.init.xavier_uniform_(proj.conv.weight)

    def _build_layer(self, *args: Any) -> nn.Module:
        """One decoder layer (copied ``num_decoder_layers`` times)."""
        return DFINEDecoderLayer(*args)

    def _build_query_pos_head(self, hidden_dim: int) -> nn.Module:
        """Reference box (cxcywh) -> query position embedding."""
        return MLP(4, 2 * hidden_dim, hidden_dim, num_layers=2)

    def _flatten_levels(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        proj = [p(f) for p, f in zip(self.input_proj, feats)]
        for i in range(len(feats), self.num_levels):  # the first extra level reads the last input map
            proj.append(self.input_proj[i](feats[-1] if i == len(feats) else proj[-1]))
        shapes = [(f.shape[2], f.shape[3]) for f in proj]  # ints; traced sizes while exporting
        return torch.cat([f.flatten(2).transpose(1, 2) for f in proj], 1), shapes

    def forward(self, feats: Sequence[torch.Tensor], denoising: DenoisingQueries | None = None) -> dict[str, Any]:
        memory, shapes = self._flatten_levels(feats)
        enc_output = self.enc_output if self.enc_output is not None else nn.Identity()
        selected = select_queries(memory, shapes, enc_output, self.enc_score_head, self.enc_bbox_head,
                                  self.num_queries, self.anchor_eps)
        target, ref_unact = selected.content.detach(), selected.ref_unact.detach()
        attn_mask = None
        if denoising is not None:
            target = torch.cat([denoising.class_embed, target], 1)
            ref_unact = torch.cat([denoising.boxes_unact, ref_unact], 1)
            attn_mask = denoising.attn_mask
        layers = self._decode(target, ref_unact, memory, shapes, attn_mask)
        if not self.training:
            logits, boxes = layers["logits"][-1], layers["boxes"][-1]
            return {"pred_logits": logits, "pred_boxes": boxes}

        split = denoising.meta["dn_num_split"] if denoising is not None else None

        def part(t: torch.Tensor, dn: bool) -> torch.Tensor:
            return t if split is None else t.split(split, 1)[0 if dn else 1]

        def outputs(dn: bool) -> list[dict[str, torch.Tensor]]:
            logits = [part(t, dn) for t in layers["logits"]]
            corners = [part(t, dn) for t in layers["corners"]]
            return [{"pred_logits": lg, "pred_boxes": part(bx, dn), "pred_corners": cr, "ref_points": part(rf, dn),
                     "teacher_corners": corners[-1], "teacher_logits": logits[-1]}
                    for lg, bx, cr, rf in zip(logits, layers["boxes"], corners, layers["refs"])]

        main = outputs(False)
        out: dict[str, Any] = {k: main[-1][k] for k in ("pred_logits", "pred_boxes", "pred_corners", "ref_points")}
        out["aux_outputs"] = main[:-1]
        out["pre_outputs"] = {"pred_logits": part(layers["pre_logits"], False),
                              "pred_boxes": part(layers["pre_boxes"], False)}
        out["enc_outputs"] = {"pred_logits": selected.logits, "pred_boxes": selected.boxes}
        out["up"], out["reg_scale"] = self.up, self.reg_scale
        if denoising is not None:
            out["dn_outputs"] = outputs(True)
            out["dn_pre_outputs"] = {"pred_logits": part(layers["pre_logits"], True),
                                     "pred_boxes": part(layers["pre_boxes"], True)}
            out["dn_meta"] = denoising.meta
        return out

    def _decode(self, target: torch.Tensor, ref_unact: torch.Tensor, memory: torch.Tensor,
                shapes: list[tuple[int, int]], attn_mask: torch.Tensor | None) -> dict[str, Any]:
        """Run the layers as the official ``TransformerDecoder``: in eval only up to ``eval_idx``."""
        logits, boxes, corners, refs = [], [], [], []
        project = weighting_function(self.reg_max, self.up, self.reg_scale)
        output_detach = corners_undetach = 0
        ref = ref_unact.sigmoid()
        pre_logits = pre_boxes = None
        query_pos = self.query_pos_head(ref).clamp(min=-10, max=10)
        for i, layer in enumerate(self.decoder.layers):
            if i > 0 and self.query_pos_per_layer:
                query_pos = self.query_pos_head(ref).clamp(min=-10, max=10)
            target = layer(target, ref.unsqueeze(2), memory, shapes, attn_mask, query_pos)
            if i == 0:
                pre_boxes = torch.sigmoid(_full_precision(self.pre_bbox_head, target) + inverse_sigmoid(ref))
                pre_logits = self.dec_score_head[0](target) if self.training else None
                ref_initial = pre_boxes.detach()
            pred_corners = _full_precision(self.dec_bbox_head[i], target + output_detach) + corners_undetach
            box = distance_to_box(ref_initial, integral(pred_corners, project, self.reg_max), self.reg_scale)
            if self.training or i == self.eval_idx:
                logits.append(self.decoder.lqe_layers[i](self.dec_score_head[i](target), pred_corners))
                boxes.append(box)
                corners.append(pred_corners)
                refs.append(ref_initial)
                if not self.training:
                    break
            corners_undetach = pred_corners
            ref = box.detach()
            output_detach = target.detach()
        return {"logits": logits, "boxes": boxes, "corners": corners, "refs": refs, "pre_logits": pre_logits,
                "pre_boxes": pre_boxes}
