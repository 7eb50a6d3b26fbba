"""Every name `npmobilenet.build` knows: the MobileNets (`models.build`) and the models that use
them as backbones, LR-ASPP segmentation (V3 paper, sec. 6.3) and SSDLite detection (V2 paper,
sec. 6.2), as torchvision builds them.

    build("mobilenet_v3_large")                              a classifier (models.build)
    build("lraspp_mobilenet_v3_large", num_classes=21)       npmobilenet.segmentation.lraspp
    build("ssdlite320_mobilenet_v3_large", num_classes=91)   npmobilenet.detection.ssdlite
"""
from npmobilenet.models import ARCHS
from npmobilenet.models import build as build_classifier

APPLICATIONS = ("lraspp_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large")
DEFAULT_CLASSES = {"lraspp_mobilenet_v3_large": 21, "ssdlite320_mobilenet_v3_large": 91}  # VOC's 21, COCO's 91
DEFAULT_RESOLUTION = {"lraspp_mobilenet_v3_large": 520, "ssdlite320_mobilenet_v3_large": 320}  # torchvision's inputs


def build(arch, width=1.0, num_classes=None, seed=0, **overrides):
    """A model with freshly initialised weights: any of `models.ARCHS` (num_classes default 1000)
    or `APPLICATIONS` (defaults: 21 classes for LR-ASPP, 91 for SSDLite); `overrides` as
    `models.build` takes them, passed to the backbone for an application."""
    if arch == "lraspp_mobilenet_v3_large":
        from npmobilenet.segmentation.lraspp import lraspp_mobilenet_v3_large
        return lraspp_mobilenet_v3_large(num_classes or DEFAULT_CLASSES[arch], width, seed, **overrides)
    if arch == "ssdlite320_mobilenet_v3_large":
        from npmobilenet.detection.ssdlite import ssdlite320_mobilenet_v3_large
        return ssdlite320_mobilenet_v3_large(num_classes or DEFAULT_CLASSES[arch], width, seed, **overrides)
    if isinstance(arch, str) and arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS + APPLICATIONS)}")
    return build_classifier(arch, width, 1000 if num_classes is None else num_classes, seed, **overrides)
