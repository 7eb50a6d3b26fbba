"""Pretrained weights by name, as torchvision's weights enums and timm's pretrained configs name them:
one row of data per published file (`npmobilenet.pretrained(name)` loads it, `npmobilenet download
NAME` fetches it; `npmobilenet.io.hub` does both).

Each entry holds what torchvision publishes beside the file: its URL, the sha256 prefix in its
file name (torchvision's `check_hash` convention: the part after the last '-'), the evaluation
preprocessing its accuracy was measured with, its categories, its parameter count, and the
accuracy torchvision reports on ImageNet-1k's validation set. Those accuracies are torchvision's
figures, quoted, not measured here.

The applications' weights (`APPLICATION_WEIGHTS`, `task` "segmentation" or "detection") hold the
same, with the metrics torchvision reports for them (mIoU and pixel accuracy on COCO val2017 with
VOC's labels; box mAP on COCO val2017; quoted) and their own preprocessing: LR-ASPP's shorter
side resized to 520 (no crop, ImageNet mean and std); SSDLite's whole image resized to 320 x 320
after scaling to mean = std = 0.5 (torchvision's transform inside the model).
"""
from dataclasses import dataclass
from importlib import resources

from npmobilenet.io.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess

TORCHVISION_BASE_URL = "https://download.pytorch.org/models/"
IMAGENET_1K = "ImageNet-1k"


def imagenet_classes():
    """The 1000 ImageNet-1k category names, index order (as torchvision's weights metadata lists them)."""
    text = resources.files("npmobilenet").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    names = text.splitlines()
    if len(names) != 1000:
        raise RuntimeError(f"npmobilenet/data/imagenet_classes.txt has {len(names)} lines, expected 1000")
    return names


# torchvision's _VOC_CATEGORIES and _COCO_CATEGORIES (COCO's 91 ids, "N/A" for the unused ones)
VOC_CATEGORIES = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
COCO_CATEGORIES = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop",
    "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
COCO_VOC_LABELS = "COCO-val2017-VOC-labels"
COCO_2017 = "COCO-val2017"
CATEGORIES = {IMAGENET_1K: imagenet_classes, COCO_VOC_LABELS: lambda: list(VOC_CATEGORIES),
              COCO_2017: lambda: list(COCO_CATEGORIES)}


@dataclass(frozen=True)
class WeightsEntry:
    """One published weights file and how it was evaluated."""

    name: str             # "mobilenet_v2.IMAGENET1K_V1": torchvision's builder and enum member
    arch: str             # npmobilenet.build's architecture
    file_name: str        # "mobilenet_v2-b0353104.pth"
    num_params: int       # as torchvision reports (our model has the same count)
    reported_top1: float  # torchvision's reported accuracy (%), ImageNet-1k val, with the preprocessing below
    reported_top5: float
    resize: int           # shorter side before the centre crop
    crop: int = 224
    interpolation: str = "bilinear"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    dataset: str = IMAGENET_1K
    recipe: str = ""      # where torchvision documents how they were trained
    width: float = 1.0    # width multiplier
    task: str = "classification"

    @property
    def url(self):
        return TORCHVISION_BASE_URL + self.file_name

    @property
    def sha256_prefix(self):
        """The hex digits after the last '-' of the file name: the start of the file's sha256."""
        return self.file_name.rsplit(".", 1)[0].rsplit("-", 1)[1]

    @property
    def preprocess(self):
        return Preprocess(self.resize, self.crop, tuple(self.mean), tuple(self.std), self.interpolation)

    def categories(self):
        return CATEGORIES[self.dataset]()

    def meta(self):
        """Everything known about these weights, as a plain dict (what `pretrained(name).meta` holds)."""
        if self.task != "classification":
            return self._application_meta()
        return {
            "name": self.name, "arch": self.arch, "width": self.width, "file_name": self.file_name, "url": self.url,
            "sha256_prefix": self.sha256_prefix, "num_params": self.num_params,
            "preprocess": {"resize": self.resize, "crop": self.crop, "interpolation": self.interpolation,
                           "mean": list(self.mean), "std": list(self.std)},
            "dataset": self.dataset, "categories": self.categories(),
            "reported_accuracy": {"source": "torchvision (quoted, not measured by npmobilenet)",
                                  "dataset": f"{self.dataset} validation", "top1": self.reported_top1,
                                  "top5": self.reported_top5},
            "recipe": self.recipe,
        }


_TV_RECIPES = "https://github.com/pytorch/vision/tree/main/references/classification"
_TV_V2_RECIPE = "https://github.com/pytorch/vision/issues/3995#new-recipe-with-reg-tuning"

# name, arch, file, params, top-1, top-5 (torchvision's reports), resize (crop 224, bilinear, ImageNet mean/std)
_ROWS = (
    ("mobilenet_v2.IMAGENET1K_V1", "mobilenet_v2", "mobilenet_v2-b0353104.pth", 3504872, 71.878, 90.286, 256,
     _TV_RECIPES + "#mobilenetv2"),
    ("mobilenet_v2.IMAGENET1K_V2", "mobilenet_v2", "mobilenet_v2-7ebf99e0.pth", 3504872, 72.154, 90.822, 232,
     _TV_V2_RECIPE),
    ("mobilenet_v3_large.IMAGENET1K_V1", "mobilenet_v3_large", "mobilenet_v3_large-8738ca79.pth", 5483032,
     74.042, 91.340, 256, _TV_RECIPES + "#mobilenetv3-large--small"),
    ("mobilenet_v3_large.IMAGENET1K_V2", "mobilenet_v3_large", "mobilenet_v3_large-5c1a4163.pth", 5483032,
     75.274, 92.566, 232, _TV_V2_RECIPE),
    ("mobilenet_v3_small.IMAGENET1K_V1", "mobilenet_v3_small", "mobilenet_v3_small-047dcff4.pth", 2542856,
     67.668, 87.402, 256, _TV_RECIPES + "#mobilenetv3-large--small"),
)

WEIGHTS = {
    name: WeightsEntry(name, arch, file_name, params, top1, top5, resize, recipe=recipe)
    for name, arch, file_name, params, top1, top5, resize, recipe in _ROWS
}


@dataclass(frozen=True)
class ApplicationWeightsEntry(WeightsEntry):
    """Weights of a segmentation or detection model: `reported` holds torchvision's metrics
    ((name, value) pairs on `dataset`); `crop` None (no crop); `fixed_size` (height, width) the
    whole image is resized to (SSDLite), else the shorter side is resized to `resize`."""

    reported: tuple = ()
    fixed_size: tuple = None

    @property
    def preprocess(self):
        raise ValueError(f"{self.name} are {self.task} weights: their preprocessing is meta()['preprocess'], "
                         "not a classifier's resize and crop")

    def _application_meta(self):
        preprocess = {"interpolation": self.interpolation, "mean": list(self.mean), "std": list(self.std)}
        preprocess.update({"size": list(self.fixed_size)} if self.fixed_size else {"resize": self.resize, "crop": None})
        return {
            "name": self.name, "arch": self.arch, "task": self.task, "width": self.width, "file_name": self.file_name,
            "url": self.url, "sha256_prefix": self.sha256_prefix, "num_params": self.num_params,
            "preprocess": preprocess, "dataset": self.dataset, "categories": self.categories(),
            "reported_accuracy": {"source": "torchvision (quoted, not measured by npmobilenet)",
                                  "dataset": self.dataset, **dict(self.reported)},
            "recipe": self.recipe,
        }


_TV_REFERENCES = "https://github.com/pytorch/vision/tree/main/references/"
APPLICATION_WEIGHTS = {e.name: e for e in (
    # torchvision's LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1: trained on the COCO images
    # of VOC's 20 categories; SemanticSegmentation(resize_size=520)
    ApplicationWeightsEntry(
        "lraspp_mobilenet_v3_large.COCO_WITH_VOC_LABELS_V1", "lraspp_mobilenet_v3_large",
        "lraspp_mobilenet_v3_large-d234d4ea.pth", 3221538, None, None, 520, crop=None, dataset=COCO_VOC_LABELS,
        recipe=_TV_REFERENCES + "segmentation#lraspp_mobilenet_v3_large", task="segmentation",
        reported=(("miou", 57.9), ("pixel_acc", 91.2))),
    # torchvision's SSDLite320_MobileNet_V3_Large_Weights.COCO_V1: images scaled to [0, 1], then inside
    # the model normalised with mean = std = 0.5 and resized to 320 x 320 (bilinear, align_corners=False)
    ApplicationWeightsEntry(
        "ssdlite320_mobilenet_v3_large.COCO_V1", "ssdlite320_mobilenet_v3_large",
        "ssdlite320_mobilenet_v3_large_coco-a79551df.pth", 3440060, None, None, 320, crop=None,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), dataset=COCO_2017,
        recipe=_TV_REFERENCES + "detection#ssdlite320-mobilenetv3-large", task="detection",
        reported=(("box_map", 21.3),), fixed_size=(320, 320)),
)}
WEIGHTS.update(APPLICATION_WEIGHTS)


def names():
    """Every registered weights name, in table order."""
    return list(WEIGHTS)


def is_weights_name(text):
    return isinstance(text, str) and text in WEIGHTS


def get(name):
    """The entry of `name`, or a ValueError listing the known names."""
    if not isinstance(name, str):
        raise TypeError(f"weights name must be a str, got {type(name).__name__}")
    entry = WEIGHTS.get(name)
    if entry is None:
        close = [n for n in WEIGHTS if n.split(".")[0] == name.split(".")[0]]
        hint = f" (weights of {name.split('.')[0]}: {', '.join(close)})" if close else ""
        raise ValueError(f"unknown weights name {name!r}{hint}; known: {', '.join(WEIGHTS)}")
    return entry
