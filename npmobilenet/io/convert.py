"""torchvision/timm weights to an npmobilenet checkpoint, once, so later loads need nothing but NumPy
(and no transposes or name maps): the `npmobilenet convert` command.

The model is built to follow the file (arch, width, classes, the library's variant; see
`keymaps`), loaded, and saved with `npmobilenet.io.checkpoint.save`: its config rebuilds it
with `npmobilenet.build(**config)`. An npmobilenet .npz given as the source keeps its metadata
(the normalisation, resolution, classes and data split `eval` and `predict` need, the history).
The destination is never the source (checked before any work).
"""
import os

import numpy as np

from npmobilenet.io.files import check_output


def convert(src, dst, arch=None, width=None, variant=None):
    """Convert `src` (.safetensors/.pth/.npz) to the npmobilenet checkpoint `dst`; returns the model.
    `variant="tf"` for timm's tf_mobilenetv3_* files (see `from_weights`)."""
    from npmobilenet.io.weights import from_weights, inspect_weights
    from npmobilenet.io import checkpoint

    dst = os.fspath(dst)
    if not dst.endswith(".npz"):
        raise ValueError(f"DST must be an .npz file name, got {dst}")
    check_output(dst, [src], "DST")
    info = inspect_weights(src)
    model = from_weights(src, arch=arch, width=width, variant=variant)
    meta, epoch = dict(source=os.path.basename(os.fspath(src)), source_naming=info.naming), None
    if info.format == "npz":
        if not hasattr(model, "modules"):
            raise ValueError(f"{src} is an int8 quantized checkpoint: it is already an npmobilenet file")
        kept = checkpoint.load_checkpoint(src, model)
        meta.update(kept.meta)
        epoch = kept.epoch
    checkpoint.save(model, dst, epoch=epoch, **meta)
    # read it back: the file must rebuild the same model with the same numbers
    reloaded = checkpoint.load(dst)
    original, again = model.state_dict(), reloaded.state_dict()
    if set(original) != set(again) or any(not np.array_equal(original[k], again[k]) for k in original):
        raise RuntimeError(f"{dst} does not read back as the converted model")
    return model
