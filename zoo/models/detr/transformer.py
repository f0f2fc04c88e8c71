"""The DETR transformer: post-norm encoder over the backbone map and decoder over learned object queries.

Semantics of the reference (facebookresearch/detr ``models/transformer.py``, ``normalize_before=False``):
positions are added to queries and keys, never to values; padded pixels are masked as attention keys;
the encoder has no final norm; the decoder starts from zero targets, adds the query embedding as the query
position at every layer, and applies its final LayerNorm to the output of every layer (auxiliary heads), while
the un-normalised output feeds the next layer. Parameter names follow the official checkpoints
(``self_attn``/``multihead_attn`` as ``nn.MultiheadAttention``, ``linear1/2``, ``norm1..3``, ``decoder.norm``).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from zoo.layers.transformer import PostNormLayer, TransformerEncoderLayer
from zoo.registry import register_component

__all__ = ["DetrDecoderLayer", "DetrTransformerEncoder", "DetrTransformerDecoder",
           "DetrTransformer"]


class DetrDecoderLayer(PostNormLayer):
    """Post-norm decoder layer: query self-attention, cross-attention to the encoder memory, FFN."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1,
                 activation: str = "relu"):
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, cross_name="multihead_attn",
                         cross_attention=lambda: nn.MultiheadAttention(d_model, nhead, dropout=dropout,
                                                                       batch_first=True))

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor,
                memory_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        tgt = self.self_attention(tgt, query_pos)
        attn, _ = self.multihead_attn(tgt + query_pos, memory + pos, value=memory,
                                      key_padding_mask=memory_key_padding_mask, need_weights=False)
        return self.feed_forward(self.add_norm(2, tgt, attn))


@register_component("encoder", "detr")
class DetrTransformerEncoder(nn.Module):
    """``num_encoder_layers`` DETR encoder layers (no final norm). Keys ``layers.{i}.*``."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_encoder_layers))

    def forward(self, src: torch.Tensor, pos: torch.Tensor, key_padding_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """src, pos: ``[B, N, D]``; key_padding_mask: ``[B, N]`` True on padding. Returns the memory ``[B, N, D]``."""
        for layer in self.layers:
            src = layer(src, pos, key_padding_mask)
        return src


@register_component("decoder", "detr")
class DetrTransformerDecoder(nn.Module):
    """``num_decoder_layers`` DETR decoder layers and the shared final LayerNorm. Keys ``layers.{i}.*``, ``norm.*``."""

    def __init__(self, d_model: int = 256, nhead: int = 8, num_decoder_layers: int = 6, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation: str = "relu"):
        super().__init__()
        layer = DetrDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_decoder_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor,
                memory_key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Returns ``norm(output)`` of every layer stacked: ``[num_layers, B, Q, D]`` (the last is the prediction)."""
        intermediate = []
        for layer in self.layers:
            tgt = layer(tgt, memory, pos, query_pos, memory_key_padding_mask)
            intermediate.append(self.norm(tgt))
        return torch.stack(intermediate)


class DetrTransformer(nn.Module):
    """Encoder + decoder over a single feature map, as DETR's ``Transformer`` (keys ``encoder.*``, ``decoder.*``).

    Every weight matrix is Xavier-uniform initialised, as in the reference ``_reset_parameters``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)

    def forward(self, src: torch.Tensor, mask: torch.Tensor, query_pos: torch.Tensor, pos: torch.Tensor
                ) -> torch.Tensor:
        """src, pos: ``[B, D, H, W]``; mask: ``[B, H, W]`` True on padding; query_pos: ``[B, Q, D]``.

        Returns the decoder states of every layer, ``[num_layers, B, Q, D]``.
        """
        src, pos, mask = src.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2), mask.flatten(1)
        memory = self.encoder(src, pos, mask)
        return self.decoder(torch.zeros_like(query_pos), memory, pos, query_pos, mask)
