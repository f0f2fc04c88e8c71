"""Decoders / heads: turn encoder features into per-query class logits and boxes."""
from zoo.decoders.rtdetr_decoder import RTDETRDecoder

__all__ = ["RTDETRDecoder"]
