"""RT-DETR decoder: IoU-aware query selection from the encoder memory, then deformable-attention layers with
iterative box refinement. Key layout follows the official ``RTDETRTransformer``.

The same class is RT-DETRv2's decoder (``RTDETRTransformerv2``): per-level sampling points
(``num_points=[4, 4, 4]``), ``cross_attn_method="discrete"`` and ``persistent_points_scale=True`` (v2 checkpoints
store each cross-attention's ``num_points_scale``). v2's renamed ``enc_output.{proj,norm}`` and its fixed-size
``anchors`` / ``valid_mask`` buffers are handled by the checkpoint converter (anchors are computed per input).
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

from zoo.layers.denoising import DenoisingQueries
from zoo.layers.init import prior_prob_bias
from zoo.layers.mlp import MLP
from zoo.layers.ms_deform_attn import MSDeformableAttention
from zoo.layers.query_selection import inverse_sigmoid, select_queries
from zoo.layers.transformer import PostNormLayer
from zoo.registry import register_component

__all__ = ["RTDETRDecoder", "DecoderLayer", "DenoisingQueries", "inverse_sigmoid"]  # the last two from zoo.layers


class DecoderLayer(PostNormLayer):
    """Self-attention -> LN -> deformable cross-attention -> LN -> FFN -> LN (post-norm)."""

    def __init__(self, d_model: int = 256, num_heads: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0,
                 activation: str = "relu", num_levels: int = 3, num_points: int | Sequence[int] = 4,
                 cross_attn_method: str = "default", persistent_points_scale: bool = False):
        super().__init__(d_model, num_heads, dim_feedforward, dropout, activation, cross_attention=lambda: (
            MSDeformableAttention(d_model, num_heads, num_levels, num_points, method=cross_attn_method,
                                  persistent_points_scale=persistent_points_scale)))

    def forward(self, tgt: torch.Tensor, reference_boxes: torch.Tensor, memory: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]], attn_mask: torch.Tensor | None,
                query_pos: torch.Tensor) -> torch.Tensor:
        tgt = self.self_attention(tgt, query_pos, attn_mask=attn_mask)
        tgt = self.add_norm(2, tgt, self.cross_attn(tgt + query_pos, reference_boxes, memory, spatial_shapes))
        return self.feed_forward(tgt)


class TransformerDecoder(nn.Module):
    def __init__(self, layer: nn.Module, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))


@register_component("decoder", "rtdetr")
class RTDETRDecoder(nn.Module):
    """Query selection + deformable decoder + per-layer class/box heads.

    Eval: returns the ``eval_idx`` layer's ``pred_logits`` / ``pred_boxes`` and stops there.
    ``num_points`` (an int or one per level), ``cross_attn_method`` ("default" bilinear or "discrete" gather) and
    ``persistent_points_scale`` are RT-DETRv2's options; their defaults are RT-DETR's.
    Train: also returns ``aux_outputs`` (every other layer), ``enc_outputs`` (encoder top-k) and, when
    denoising queries are given, ``dn_outputs`` (per layer) and ``dn_meta``.
    """

    def __init__(self, in_channels: Sequence[int] = (256, 256, 256), num_classes: int = 80, hidden_dim: int = 256,
                 num_queries: int = 300, num_levels: int = 3, num_points: int | Sequence[int] = 4,
                 num_heads: int = 8, num_decoder_layers: int = 6, dim_feedforward: int = 1024, dropout: float = 0.0,
                 activation: str = "relu", num_denoising: int = 100, label_noise_ratio: float = 0.5,
                 box_noise_scale: float = 1.0, eval_idx: int = -1, anchor_eps: float = 1e-2,
                 cross_attn_method: str = "default", persistent_points_scale: bool = False):
        super().__init__()
        if not -num_decoder_layers <= eval_idx < num_decoder_layers:
            raise ValueError(f"eval_idx {eval_idx} out of range for {num_decoder_layers} decoder layers")
        if len(in_channels) > num_levels:
            raise ValueError(f"{len(in_channels)} input levels but num_levels={num_levels}")
        self.num_classes, self.hidden_dim, self.num_queries = num_classes, hidden_dim, num_queries
        self.num_levels, self.num_denoising = num_levels, num_denoising
        self.label_noise_ratio, self.box_noise_scale = label_noise_ratio, box_noise_scale
        self.eval_idx = eval_idx % num_decoder_layers
        self.anchor_eps = anchor_eps

        self.input_proj = nn.ModuleList()
        for c in in_channels:
            self.input_proj.append(nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(c, hidden_dim, 1, bias=False)), ("norm", nn.BatchNorm2d(hidden_dim))])))
        c = in_channels[-1]
        for _ in range(num_levels - len(in_channels)):  # extra levels by stride-2 convs
            self.input_proj.append(nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(c, hidden_dim, 3, 2, padding=1, bias=False)), ("norm", nn.BatchNorm2d(hidden_dim))])))
            c = hidden_dim

        layer = DecoderLayer(hidden_dim, num_heads, dim_feedforward, dropout, activation, num_levels, num_points,
                             cross_attn_method, persistent_points_scale)
        self.decoder = TransformerDecoder(layer, num_decoder_layers)
        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, num_layers=2)
        self.enc_output = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, num_layers=3)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(num_decoder_layers))
        self.dec_bbox_head = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4, num_layers=3) for _ in range(num_decoder_layers))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bias = prior_prob_bias(0.01)
        nn.init.constant_(self.enc_score_head.bias, bias)
        for head in [self.enc_bbox_head, *self.dec_bbox_head]:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        for head in self.dec_score_head:
            nn.init.constant_(head.bias, bias)
        nn.init.xavier_uniform_(self.enc_output[0].weight)
        for lin in self.query_pos_head.layers:
            nn.init.xavier_uniform_(lin.weight)

    def _flatten_levels(self, feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        proj = [p(f) for p, f in zip(self.input_proj, feats)]
        for p in self.input_proj[len(feats):]:
            proj.append(p(proj[-1]))
        shapes = [(f.shape[2], f.shape[3]) for f in proj]  # ints; traced sizes while exporting
        return torch.cat([f.flatten(2).transpose(1, 2) for f in proj], 1), shapes

    def forward(self, feats: Sequence[torch.Tensor], denoising: DenoisingQueries | None = None) -> dict[str, Any]:
        memory, shapes = self._flatten_levels(feats)
        selected = select_queries(memory, shapes, self.enc_output, self.enc_score_head, self.enc_bbox_head,
                                  self.num_queries, self.anchor_eps)
        ref_unact, enc_topk_logits = selected.ref_unact, selected.logits
        enc_topk_boxes = ref_unact.sigmoid()
        target = selected.content.detach()
        attn_mask = None
        if denoising is not None:
            target = torch.cat([denoising.class_embed, target], 1)
            ref_unact = torch.cat([denoising.boxes_unact, ref_unact], 1)
            attn_mask = denoising.attn_mask

        logits, boxes = self._decode(target, ref_unact.detach(), memory, shapes, attn_mask)
        out: dict[str, Any] = {}
        if denoising is not None:
            split = denoising.meta["dn_num_split"]
            dn = [(lg.split(split, 1), bx.split(split, 1)) for lg, bx in zip(logits, boxes)]
            out["dn_outputs"] = [{"pred_logits": lg[0], "pred_boxes": bx[0]} for lg, bx in dn]
            out["dn_meta"] = denoising.meta
            logits, boxes = [lg[1] for lg, _ in dn], [bx[1] for _, bx in dn]
        out["pred_logits"], out["pred_boxes"] = logits[-1], boxes[-1]
        if self.training:
            out["aux_outputs"] = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
            out["enc_outputs"] = {"pred_logits": enc_topk_logits, "pred_boxes": enc_topk_boxes}
        return out

    def _decode(self, target: torch.Tensor, ref_unact: torch.Tensor, memory: torch.Tensor,
                shapes: list[tuple[int, int]], attn_mask: torch.Tensor | None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the layers; in training every layer's output, in eval only the ``eval_idx`` layer's."""
        logits, boxes = [], []
        ref = ref_unact.sigmoid()
        ref_for_grad = ref
        for i, layer in enumerate(self.decoder.layers):
            query_pos = self.query_pos_head(ref)
            target = layer(target, ref.unsqueeze(2), memory, shapes, attn_mask, query_pos)
            delta = self.dec_bbox_head[i](target)
            new_ref = torch.sigmoid(delta + inverse_sigmoid(ref))
            if self.training:
                logits.append(self.dec_score_head[i](target))
                # box gradients flow through the previous (undetached) prediction, as in the official code
                boxes.append(new_ref if i == 0 else torch.sigmoid(delta + inverse_sigmoid(ref_for_grad)))
            elif i == self.eval_idx:
                logits.append(self.dec_score_head[i](target))
                boxes.append(new_ref)
                break
            ref_for_grad = new_ref
            ref = new_ref.detach() if self.training else new_ref
        return logits, boxes
