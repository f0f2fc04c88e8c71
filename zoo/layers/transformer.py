"""Post-norm transformer layers: the sublayers every encoder and decoder layer of zoo is made of, and the encoder
layer shared by RT-DETR's AIFI and DETR's encoder.

Parameter names (``self_attn``, ``linear1/2``, ``norm1..3``) are those of the official checkpoints, so the
layouts load unchanged; modules are created in the official order, so seeded initialisations are the same.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from zoo.layers.conv import create_act

__all__ = ["PostNormLayer", "TransformerEncoderLayer", "TransformerEncoder"]


class PostNormLayer(nn.Module):
    """Self-attention, an optional cross-attention (built by ``cross_attention()`` and stored as ``cross_name``) and
    a feed-forward network, each followed by dropout, the residual and a LayerNorm (``norm1``, ``norm2``[, ``norm3``]).

    Subclasses write ``forward`` from :meth:`self_attention`, :meth:`add_norm` and :meth:`feed_forward`."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float, activation: str,
                 cross_attention: Callable[[], nn.Module] | None = None, cross_name: str = "cross_attn"):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        if cross_attention is not None:
            setattr(self, cross_name, cross_attention())
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.num_sublayers = 3 if cross_attention is not None else 2
        for i in range(1, self.num_sublayers + 1):
            setattr(self, f"norm{i}", nn.LayerNorm(d_model))
            setattr(self, f"dropout{i}", nn.Dropout(dropout))
        self.dropout = nn.Dropout(dropout)  # inside the feed-forward network
        self.activation = create_act(activation)

    def add_norm(self, index: int, x: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """``norm{index}(x + dropout{index}(update))``."""
        return getattr(self, f"norm{index}")(x + getattr(self, f"dropout{index}")(update))

    def self_attention(self, x: torch.Tensor, pos: torch.Tensor, attn_mask: torch.Tensor | None = None,
                       key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Positions are added to queries and keys, never to values."""
        q = k = x + pos
        attn, _ = self.self_attn(q, k, value=x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                 need_weights=False)
        return self.add_norm(1, x, attn)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        ffn = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.add_norm(self.num_sublayers, x, ffn)


class TransformerEncoderLayer(PostNormLayer):
    """Post-norm transformer encoder layer; positions are added to queries and keys only."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float = 0.0,
                 activation: str = "gelu"):
        super().__init__(d_model, num_heads, dim_feedforward, dropout, activation)

    def forward(self, src: torch.Tensor, pos_embed: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``key_padding_mask`` [B, L] is True on padded positions (DETR); RT-DETR inputs have none."""
        return self.feed_forward(self.self_attention(src, pos_embed, key_padding_mask=key_padding_mask))


class TransformerEncoder(nn.Module):
    def __init__(self, layer: nn.Module, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, src: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos_embed)
        return src
