"""The papers' tables as data, one builder, and the model."""
from npmobilenet.models.builder import ARCHS, arch_spec, build, make_divisible, scale_channels
from npmobilenet.models.mobilenet import MobileNet

__all__ = ["ARCHS", "arch_spec", "build", "make_divisible", "scale_channels", "MobileNet"]
