"""DEIMv2 decoder (Intellindust-AI-Lab/DEIMv2 ``engine/deim/deim_decoder.py``, ``DEIMTransformer``): D-FINE's FDR
decoder with RMSNorm instead of LayerNorm, a SwiGLU FFN, an optional gateway (Atto/Femto/Pico: a residual + RMSNorm
instead), SiLU box heads and LQE, a 3-layer query position head applied once to the initial boxes, no ``enc_output``
projection before query selection, and for the smallest models one box head shared by every layer.

The D-FINE parts (deformable attention, LQE, integral, query selection, denoising, training outputs) are reused
through :class:`zoo.models.dfine.decoder.DFINEDecoder`'s options and seams; parameter names are the official ones.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers.mlp import MLP
from zoo.layers.ms_deform_attn import MSDeformableAttention
from zoo.layers.norm import RMSNorm
from zoo.models.dfine.decoder import DFINEDecoder, Gate
from zoo.registry import register_component

__all__ = ["DEIMv2Decoder", "DEIMv2DecoderLayer", "SwiGLUFFN"]


class SwiGLUFFN(nn.Module):
    """``w3(silu(a) * b)`` with ``[a, b] = w12(x)`` (hidden width ``dim_feedforward // 2``)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(d_model, 2 * hidden)
        self.w3 = nn.Linear(hidden, d_model)
        for lin in (self.w12, self.w3):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class DEIMv2DecoderLayer(nn.Module):
    """Self-attention -> RMSNorm -> deformable cross-attention merged by the RMSNorm :class:`Gate` (or, without
    ``use_gateway``, residual + RMSNorm ``norm2``) -> SwiGLU FFN -> RMSNorm (input clamped to the float16 range)."""

    def __init__(self, d_model: int = 256, num_heads: int = 8, dim_feedforward: int = 1024, dropout: float = 0.0,
                 num_levels: int = 3, num_points: int | Sequence[int] = 4, cross_attn_method: str = "default",
                 use_gateway: bool = True):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = RMSNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, num_heads, num_levels, num_points, method=cross_attn_method,
                                                persistent_points_scale=True, projections=False)
        self.dropout2 = nn.Dropout(dropout)
        if use_gateway:
            self.gateway = Gate(d_model, norm=RMSNorm(d_model))
        else:
            self.norm2 = RMSNorm(d_model)
        self.swish_ffn = SwiGLUFFN(d_model, dim_feedforward // 2)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = RMSNorm(d_model)

    def forward(self, tgt: torch.Tensor, reference_boxes: torch.Tensor, memory: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]], attn_mask: torch.Tensor | None,
                query_pos: torch.Tensor) -> torch.Tensor:
        q = k = tgt + query_pos
        attn, _ = self.self_attn(q, k, value=tgt, attn_mask=attn_mask, need_weights=False)
        tgt = self.norm1(tgt + self.dropout1(attn))
        cross = self.dropout2(self.cross_attn(tgt + query_pos, reference_boxes, memory, spatial_shapes))
        tgt = self.gateway(tgt, cross) if hasattr(self, "gateway") else self.norm2(tgt + cross)
        tgt = tgt + self.dropout4(self.swish_ffn(tgt))
        return self.norm3(tgt.clamp(min=-65504, max=65504))


@register_component("decoder", "deimv2")
class DEIMv2Decoder(DFINEDecoder):
    """DEIMv2's ``DEIMTransformer`` (see the module docstring); outputs as :class:`DFINEDecoder`'s.

    ``use_gateway``: the gated cross-attention residual (N..X) or a plain one (Atto/Femto/Pico);
    ``share_bbox_head``: one distribution head for every layer (Atto/Femto/Pico); ``mlp_act``: the query position
    head's activation. The defaults of ``head_act``, ``lqe_act`` (SiLU), ``enc_projection`` (False) and
    ``query_pos_per_layer`` (False) are the official model's; transformers 5.x's ``Deimv2ForObjectDetection``
    differs on all four (ReLU heads and LQE, an ``enc_output`` Linear+LayerNorm, the position embedding of each
    layer's boxes), so its checkpoints are read into this decoder with those options (zoo.models.deimv2.convert).
    ``activation`` is accepted for D-FINE's interface; the FFN is SwiGLU (SiLU) whatever it says.
    """

    def __init__(self, in_channels: Sequence[int] = (256, 256, 256), num_classes: int = 80, hidden_dim: int = 256,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, use_gateway: bool = True,
                 share_bbox_head: bool = False, mlp_act: str = "silu", head_act: str = "silu", lqe_act: str = "silu",
                 enc_projection: bool = False, query_pos_per_layer: bool = False, **kwargs: Any):
        # read by the seams during DFINEDecoder.__init__ (plain attributes may be set before Module.__init__)
        self.use_gateway, self.mlp_act = use_gateway, mlp_act
        super().__init__(in_channels, num_classes, hidden_dim, num_decoder_layers=num_decoder_layers,
                         dim_feedforward=dim_feedforward, head_act=head_act, lqe_act=lqe_act,
                         enc_projection=enc_projection, query_pos_per_layer=query_pos_per_layer, **kwargs)
        self.share_bbox_head = share_bbox_head
        if share_bbox_head:
            self.dec_bbox_head = nn.ModuleList([self.dec_bbox_head[0]] * num_decoder_layers)

    def _build_layer(self, hidden_dim: int, num_heads: int, dim_feedforward: int, dropout: float, activation: str,
                     num_levels: int, num_points: int | Sequence[int], cross_attn_method: str) -> nn.Module:
        return DEIMv2DecoderLayer(hidden_dim, num_heads, dim_feedforward, dropout, num_levels, num_points,
                                  cross_attn_method, self.use_gateway)

    def _build_query_pos_head(self, hidden_dim: int) -> nn.Module:
        return MLP(4, hidden_dim, hidden_dim, num_layers=3, act=self.mlp_act)
