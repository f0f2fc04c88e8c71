"""LW-DETR's two-stage decoder (also RF-DETR's): query selection from the projector's maps with one set of encoder
heads per group, then deformable layers around reference boxes that stay fixed through the layers ("lite
refpoint refine") and boxes predicted as deltas of them ("bbox reparam": centre + delta * size, size * exp(delta)).

Group DETR: at training time ``group_detr`` groups of ``num_queries`` queries (each with its own learned queries,
reference boxes and encoder heads) run side by side, attending only within their group (one-to-many supervision);
at inference only the first group runs. Parameter names are the official ones below the ``decoder.`` prefix
(``transformer.decoder.layers.{i}`` -> ``layers.{i}``, ``transformer.enc_output`` -> ``enc_output``, ...)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers.init import prior_prob_bias
from zoo.layers.mlp import MLP
from zoo.layers.ms_deform_attn import MSDeformableAttention
from zoo.layers.topk import topk_lowest_index
from zoo.registry import register_component

__all__ = ["LWDETRDecoder", "refine_boxes", "sine_embedding", "proposals"]


def refine_boxes(reference: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Boxes (cxcywh) from reference boxes and deltas: ``centre + delta_xy * size``, ``size * exp(delta_wh)``."""
    return torch.cat([delta[..., :2] * reference[..., 2:] + reference[..., :2],
                      delta[..., 2:].exp() * reference[..., 2:]], -1)


def sine_embedding(boxes: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine embedding of each coordinate of ``boxes [..., 4]`` (``num_feats`` each, sin/cos interleaved), in the
    order y, x, w, h (the frequencies in float32, as the official code computes them)."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    embeds = []
    for coord in boxes.unbind(-1):
        e = coord[..., None] * (2 * math.pi) / dim_t
        embeds.append(torch.stack((e[..., 0::2].sin(), e[..., 1::2].cos()), -1).flatten(-2))
    embeds[0], embeds[1] = embeds[1], embeds[0]
    return torch.cat(embeds, -1).to(boxes.dtype)


def proposals(memory: torch.Tensor, shapes: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One proposal box per cell (centre of the cell, size 0.05 * 2^level) and whether it is valid (inside
    (0.01, 0.99)): ``([B, S, 4], [B, S, 1])``."""
    boxes = []
    for level, (h, w) in enumerate(shapes):
        y, x = torch.meshgrid(torch.arange(h, dtype=memory.dtype, device=memory.device),
                              torch.arange(w, dtype=memory.dtype, device=memory.device), indexing="ij")
        xy = torch.stack([(x + 0.5) / w, (y + 0.5) / h], -1).reshape(-1, 2)
        boxes.append(torch.cat([xy, torch.full_like(xy, 0.05 * 2.0 ** level)], -1))
    boxes = torch.cat(boxes, 0)[None].expand(memory.shape[0], -1, -1)
    valid = ((boxes > 0.01) & (boxes < 0.99)).all(-1, keepdim=True)
    return boxes.masked_fill(~valid, 0.0), valid


class DecoderLayer(nn.Module):
    """Self-attention (within each group at training time) -> LN -> deformable cross-attention -> LN -> FFN -> LN."""

    def __init__(self, d_model: int, sa_heads: int, ca_heads: int, num_levels: int, num_points: int,
                 dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, sa_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, ca_heads, num_levels, num_points)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, memory: torch.Tensor,
                shapes: Sequence[tuple[int, int]], groups: int) -> torch.Tensor:
        b, n, d = tgt.shape
        q = tgt + pos
        if groups > 1:  # the groups side by side in the batch: attention stays within a group
            q, v = (torch.cat(t.split(n // groups, 1), 0) for t in (q, tgt))
        else:
            v = tgt
        out, _ = self.self_attn(q, q, v, need_weights=False)
        if groups > 1:
            out = torch.cat(out.split(b, 0), 1)
        tgt = self.norm1(tgt + self.dropout(out))
        tgt = self.norm2(tgt + self.dropout(self.cross_attn(tgt + pos, reference[:, :, None], memory, shapes)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout(ffn))


@register_component("decoder", "lwdetr")
class LWDETRDecoder(nn.Module):
    """Two-stage query selection (``group_detr`` sets of encoder heads) + ``num_decoder_layers`` deformable layers;
    returns the outputs described in zoo.models.lwdetr.model.LWDETR."""

    def __init__(self, in_channels: Sequence[int], num_classes: int = 91, hidden_dim: int = 256,
                 num_queries: int = 300, num_decoder_layers: int = 3, sa_heads: int = 8, ca_heads: int = 16,
                 num_points: int = 2, dim_feedforward: int = 2048, dropout: float = 0.0, group_detr: int = 13):
        super().__init__()
        if any(c != hidden_dim for c in in_channels):
            raise ValueError(f"the decoder reads maps of hidden_dim={hidden_dim} channels, got {list(in_channels)}")
        if group_detr < 1 or num_queries < 1:
            raise ValueError(f"group_detr and num_queries must be >= 1, got {group_detr} and {num_queries}")
        self.hidden_dim, self.num_queries, self.group_detr = hidden_dim, num_queries, group_detr
        self.num_levels = len(in_channels)
        self.layers = nn.ModuleList(DecoderLayer(hidden_dim, sa_heads, ca_heads, self.num_levels, num_points,
                                                 dim_feedforward, dropout) for _ in range(num_decoder_layers))
        self.norm = nn.LayerNorm(hidden_dim)
        self.ref_point_head = MLP(2 * hidden_dim, hidden_dim, hidden_dim, 2)
        self.enc_output = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(group_detr))
        self.enc_output_norm = nn.ModuleList(nn.LayerNorm(hidden_dim) for _ in range(group_detr))
        self.enc_out_class_embed = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(group_detr))
        self.enc_out_bbox_embed = nn.ModuleList(MLP(hidden_dim, hidden_dim, 4, 3) for _ in range(group_detr))
        self.class_embed = nn.Linear(hidden_dim, num_classes)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_feat = nn.Embedding(num_queries * group_detr, hidden_dim)
        self.refpoint_embed = nn.Embedding(num_queries * group_detr, 4)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation of the heads: class bias at prior 0.01, zero box deltas, zero references."""
        for head in (self.class_embed, *self.enc_out_class_embed):
            nn.init.constant_(head.bias, prior_prob_bias(0.01))
        for mlp in (self.bbox_embed, *self.enc_out_bbox_embed):
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)
        nn.init.zeros_(self.refpoint_embed.weight)

    def forward(self, features: list[torch.Tensor]) -> dict[str, Any]:
        shapes = [(f.shape[2], f.shape[3]) for f in features]
        memory = torch.cat([f.flatten(2).transpose(1, 2) for f in features], 1)
        boxes, valid = proposals(memory, shapes)
        memory_masked = memory.masked_fill(~valid, 0.0)
        groups = self.group_detr if self.training else 1
        q = self.num_queries
        enc_queries, enc_boxes = [], []
        for g in range(groups):
            query = self.enc_output_norm[g](self.enc_output[g](memory_masked))
            scores = self.enc_out_class_embed[g](query).masked_fill(~valid, float("-inf")).amax(-1)
            coords = refine_boxes(boxes, self.enc_out_bbox_embed[g](query))
            index = topk_lowest_index(scores, q)[1]
            enc_boxes.append(coords.gather(1, index[..., None].expand(-1, -1, 4)))
            enc_queries.append(query.gather(1, index[..., None].expand(-1, -1, self.hidden_dim)))
        enc_boxes_all = torch.cat(enc_boxes, 1)
        b = memory.shape[0]
        reference = refine_boxes(enc_boxes_all.detach(), self.refpoint_embed.weight[:q * groups][None])
        tgt = self.query_feat.weight[:q * groups][None].repeat(b, 1, 1)  # (a view would be a leaf under no_grad)
        pos = self.ref_point_head(sine_embedding(reference, self.hidden_dim // 2))
        hidden = []
        for layer in self.layers:
            tgt = layer(tgt, pos, reference, memory, shapes, groups)
            hidden.append(self.norm(tgt))
        out_layers = hidden if self.training else hidden[-1:]
        logits = [self.class_embed(h) for h in out_layers]
        pred_boxes = [refine_boxes(reference, self.bbox_embed(h)) for h in out_layers]
        out: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": pred_boxes[-1]}
        if self.training:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": c} for a, c in zip(logits[:-1], pred_boxes[:-1])]
            enc_logits = torch.cat([self.enc_out_class_embed[g](enc_queries[g]) for g in range(groups)], 1)
            out["enc_outputs"] = {"pred_logits": enc_logits, "pred_boxes": enc_boxes_all}
        return out
