"""Small reusable building blocks (timm's ``layers/``), shared by the model families."""
from zoo.layers.akconv import AKConv, Bottleneck_AKConv, C3_AKConv
from zoo.layers.conv import ConvNormLayer, CSPRepLayer, RepVggBlock, conv_bn_act, create_act
from zoo.layers.init import prior_prob_bias
from zoo.layers.mlp import MLP
from zoo.layers.ms_deform_attn import MSDeformableAttention, ms_deform_attn_core
from zoo.layers.norm import freeze_batch_norm
from zoo.layers.position import PositionEmbeddingSine, sincos_2d_position_embedding
from zoo.layers.transformer import TransformerEncoder, TransformerEncoderLayer

__all__ = ["AKConv", "Bottleneck_AKConv", "C3_AKConv", "ConvNormLayer", "CSPRepLayer", "RepVggBlock", "conv_bn_act",
           "create_act", "prior_prob_bias", "MLP", "MSDeformableAttention", "ms_deform_attn_core",
           "freeze_batch_norm", "PositionEmbeddingSine", "sincos_2d_position_embedding", "TransformerEncoder",
           "TransformerEncoderLayer"]
