"""Training: loss, optimizers, schedules, data, augmentation, the loop, checkpoints, the demo.

    loss.py        softmax cross-entropy (label smoothing), forward and backward
    optim.py       SGD (Nesterov), RMSprop (TensorFlow's form), AdamW
    schedule.py    constant, step, exponential, cosine with warm-up
    data.py        ArrayDataset, ImageFolder, CIFAR-10, digits, seeded BatchLoader
    augment.py     crops, flips, resized crops, resizing, normalisation on NHWC arrays
    loop.py        train(): the loop, progress, NaN detection, per-epoch checkpoints, resume
    checkpoint.py  save()/load()/load_checkpoint(): atomic .npz checkpoints
    evaluation.py  evaluate(): loss, top-1/top-5, confusion matrix; the `eval` command
    cli.py         the `train` command;  demo.py  the `demo` command

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
    "save": "checkpoint", "load": "checkpoint", "load_checkpoint": "checkpoint", "Checkpoint": "checkpoint",
    "evaluate": "evaluation",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'npmobilenet.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"npmobilenet.training.{module}"), name)


__all__ = sorted(_LAZY)
