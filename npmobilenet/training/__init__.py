"""Training: loss, optimizers, schedules, data, augmentation, the loop, checkpoints, the demo.

    loss.py        softmax cross-entropy (label smoothing), forward and backward
    optim.py       SGD (Nesterov), RMSprop (TensorFlow's form), AdamW
    schedule.py    constant, step, exponential, cosine with warm-up
    data.py        ArrayDataset, ImageFolder, CIFAR-10, digits, seeded BatchLoader
    augment.py     crops, flips, resized crops, resizing, normalisation on NHWC arrays
    loop.py        train(): the loop, progress, NaN detection, per-epoch checkpoints, resume
    evaluation.py  evaluate(): loss, top-1/top-5, confusion matrix
    demo.py        run_demo(): the main job (the `demo` command)

save, load, load_checkpoint and Checkpoint are `npmobilenet.io.checkpoint`'s.

Names are loaded on first use, so importing this package costs nothing.
"""
import importlib

_LAZY = {
    "softmax_cross_entropy": "loss",
    "SGD": "optim", "RMSprop": "optim", "AdamW": "optim", "make_optimizer": "optim",
    "ConstantLR": "schedule", "StepLR": "schedule", "ExponentialLR": "schedule", "CosineLR": "schedule",
    "ArrayDataset": "data", "ImageFolder": "data", "load_cifar10": "data", "load_digits": "data",
    "BatchLoader": "data", "stratified_split": "data",
    "train": "loop", "NonFiniteLossError": "loop",
    "evaluate": "evaluation",
}
# checkpoints are read and written by npmobilenet.io.checkpoint (one load for every format)
_CHECKPOINT = ("save", "load", "load_checkpoint", "Checkpoint")


def __getattr__(name):
    if name in _CHECKPOINT:
        return getattr(importlib.import_module("npmobilenet.io.checkpoint"), name)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'npmobilenet.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"npmobilenet.training.{module}"), name)


__all__ = sorted(_LAZY) + sorted(_CHECKPOINT)
