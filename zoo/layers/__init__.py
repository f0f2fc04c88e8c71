"""Small reusable building blocks (timm's ``layers/``)."""
from zoo.layers.akconv import AKConv, Bottleneck_AKConv, C3_AKConv
from zoo.layers.conv import ConvNormLayer, CSPRepLayer, RepVggBlock, create_act
from zoo.layers.mlp import MLP
from zoo.layers.ms_deform_attn import MSDeformableAttention, ms_deform_attn_core
from zoo.layers.position import sincos_2d_position_embedding

__all__ = ["AKConv", "Bottleneck_AKConv", "C3_AKConv", "ConvNormLayer", "CSPRepLayer", "RepVggBlock", "create_act", "MLP", "MSDeformableAttention",
           "ms_deform_attn_core", "sincos_2d_position_embedding"]
