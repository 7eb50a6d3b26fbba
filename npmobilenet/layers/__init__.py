"""Stateful layers: parameters, gradients, train/eval; and MobileNet's blocks."""
from npmobilenet.layers.activation import HardSigmoid, HardSwish, ReLU, ReLU6, make_activation
from npmobilenet.layers.base import Layer, Parameter
from npmobilenet.layers.blocks import (
    ConvBNAct, DepthwiseSeparable, FusedInvertedBottleneck, InvertedResidual, UniversalInvertedBottleneck,
)
from npmobilenet.layers.container import Sequential
from npmobilenet.layers.conv import Conv2d, DepthwiseConv2d, PointwiseConv2d
from npmobilenet.layers.linear import Dropout, Linear
from npmobilenet.layers.norm import BatchNorm
from npmobilenet.layers.pooling import GlobalAvgPool
from npmobilenet.layers.se import SqueezeExcite

__all__ = [
    "Layer", "Parameter", "Conv2d", "DepthwiseConv2d", "PointwiseConv2d", "BatchNorm", "ReLU", "ReLU6",
    "HardSigmoid", "HardSwish", "make_activation", "GlobalAvgPool", "Linear", "Dropout", "SqueezeExcite",
    "Sequential", "ConvBNAct", "DepthwiseSeparable", "InvertedResidual", "UniversalInvertedBottleneck",
    "FusedInvertedBottleneck",
]
