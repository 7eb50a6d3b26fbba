"""Checkpoints: a model's parameters, running statistics and config in one `.npz`, written atomically;
and the one `load` / `save` for every npmobilenet file, float or int8, dispatching on the format.

Format (version 1), all plain arrays so `np.load(..., allow_pickle=False)` reads it:

    __format__       str array "npmobilenet.checkpoint"
    __version__      int64 array, 1
    __config__       uint8 array: UTF-8 JSON of `model.config` (`npmobilenet.build(**config)` rebuilds it)
    __meta__         uint8 array: UTF-8 JSON {"epoch": completed epochs or null, "optimizer": kind or
                     null, "rng_states": {layer name: its generator's state} (dropout), plus what
                     the training loop adds: "seed", "history", ...}
    model/<name>     every parameter and buffer (BN running mean/var) by dotted name
    optimizer/<key>  the optimizer's `state_dict()` (slot arrays; "kind", "steps", "lr" as 0-d arrays)

An int8 model's checkpoint has its own format (`npmobilenet.compression.qmodel`): `load` reads
either kind (a float MobileNet, pruned or factorised ones included, or a `QuantizedModel`) by its
`__format__`, and `save` writes either. `load_checkpoint` reads a float checkpoint whole (with the
optimizer state and metadata a resumed run needs).

`save` writes a temporary file in the destination's directory, fsyncs it and `os.replace`s it
over the destination, so a crash mid-write leaves the previous checkpoint as it was. `load` and
`load_checkpoint` turn every way a file can be wrong (not a zip, truncated, bad CRC, not a
checkpoint, newer version, config and arrays that disagree) into a `ValueError` that names the
file and the problem. Nothing is allocated or built on the file's word alone: array headers are
checked against the file's byte budget before reading (`files.read_arrays`), the stored config
against `limits.CONFIG_BOUNDS` and against the arrays actually stored before the model is built,
and the metadata's resolution, mean, std and classes before a command uses them. Weights holding
NaN or infinity load with a RuntimeWarning naming them.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from npmobilenet.compression import structure
from npmobilenet.compression.qmodel import FORMAT as INT8_FORMAT
from npmobilenet.compression.qmodel import QuantizedModel
from npmobilenet.io.files import atomic_savez, from_json_array, json_array, read_arrays
from npmobilenet.io.limits import MAX_RESOLUTION, check_config, warn_non_finite

FORMAT = "npmobilenet.checkpoint"
VERSION = 1


# -- random generators held by layers (dropout): part of the state for an exact resume --------
def rng_states(model):
    """`{layer name: bit generator state}` of every layer holding a `numpy.random.Generator` `.rng`."""
    return {
        name: layer.rng.bit_generator.state
        for name, layer in model.modules()
        if isinstance(getattr(layer, "rng", None), np.random.Generator)
    }


def set_rng_states(model, states):
    """Restore what `rng_states` returned (each layer gets a fresh generator in that state)."""
    layers = dict(model.modules())
    for name, state in states.items():
        if name not in layers:
            raise ValueError(f"random state for layer {name!r}, which the model does not have")
        bit_generator = getattr(np.random, state["bit_generator"], None)
        if bit_generator is None:
            raise ValueError(f"unknown bit generator {state['bit_generator']!r} for layer {name!r}")
        generator = np.random.Generator(bit_generator())
        generator.bit_generator.state = state
        layers[name].rng = generator


# -- saving --------------------------------------------------------------------------------------
def checkpoint_arrays(model, optimizer=None, epoch=None, **meta):
    """The `{key: array}` a checkpoint file holds (see the module docstring)."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"model must have a .config dict to be saved, got {type(config).__name__}")
    meta = dict(meta, epoch=None if epoch is None else int(epoch))
    meta["optimizer"] = None if optimizer is None else type(optimizer).__name__
    meta["rng_states"] = rng_states(model)
    arrays = {
        "__format__": np.array(FORMAT),
        "__version__": np.array(VERSION, dtype=np.int64),
        "__config__": json_array(config),
        "__meta__": json_array(meta),
    }
    for name, array in model.state_dict().items():
        arrays[f"model/{name}"] = np.ascontiguousarray(array)
    if optimizer is not None:
        for key, value in optimizer.state_dict().items():
            arrays[f"optimizer/{key}"] = np.asarray(value)
    return arrays


def save(model, path, optimizer=None, epoch=None, **meta):
    """Write `model` (and optionally `optimizer` state and the completed `epoch`) to `path` atomically.

    Extra keyword arguments must be JSON-serialisable; they are stored in the metadata and come
    back as `load_checkpoint(path).meta`. An int8 `QuantizedModel` is written in its own format
    (`qmodel.save(path)`; it has no optimizer or epoch). Returns `path`.
    """
    if isinstance(model, QuantizedModel):
        if optimizer is not None or epoch is not None or meta:
            raise ValueError("an int8 model is saved without optimizer state, epoch or metadata "
                             "(put metadata in qmodel.info)")
        return model.save(path)
    atomic_savez(path, checkpoint_arrays(model, optimizer, epoch, **meta))
    return path


# -- loading -------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """What `load_checkpoint` returns.

    model: the rebuilt model with the saved weights, in eval mode
    config: the architecture config it was built from
    epoch: number of completed epochs when saved (None if not given)
    optimizer_state: the optimizer's `state_dict()` (or None); pass it to `opt.load_state_dict`
    meta: the rest of the metadata (e.g. "seed", "history" from the training loop)
    """

    model: object
    config: dict
    epoch: object = None
    optimizer_state: dict = None
    meta: dict = field(default_factory=dict)


def _build(config):
    # pruned widths are build options; low-rank factorised layers a compression-time change of structure
    return structure.build(config)


def load_checkpoint(path, model=None):
    """Read a checkpoint: a `Checkpoint(model, config, epoch, optimizer_state, meta)`.

    The model is rebuilt with `npmobilenet.build(**config)`, or, if `model` is given, the weights
    are loaded into it (its `.config` must equal the saved one). Raises ValueError naming the
    file and the problem when the file is truncated, corrupted, not a checkpoint, of a newer
    format version, or holds arrays that do not match its config.
    """
    path = os.fspath(path)
    return _from_arrays(read_arrays(path), path, model)


def _from_arrays(arrays, path, model=None):
    if "__format__" in arrays and str(arrays["__format__"]) == INT8_FORMAT:
        raise ValueError(
            f"{path} is an int8 quantized checkpoint, not a float one: load it with npmobilenet.load "
            "(it has no optimizer state or training metadata)"
        )
    if "__format__" not in arrays or str(arrays["__format__"]) != FORMAT:
        raise ValueError(
            f"{path} is not an npmobilenet checkpoint (no {FORMAT!r} __format__ key); "
            "weights from other programs need `npmobilenet convert`"
        )
    try:
        version = int(arrays["__version__"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"checkpoint {path} has no valid __version__") from None
    if version > VERSION:
        raise ValueError(f"checkpoint {path} has format version {version}; this npmobilenet reads up to {VERSION}")
    for key in ("__config__", "__meta__"):
        if key not in arrays:
            raise ValueError(f"checkpoint {path} has no {key} entry")
    config = from_json_array(arrays["__config__"], "__config__", path)
    meta = from_json_array(arrays["__meta__"], "__meta__", path)
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {path}: __config__ must be a JSON object, got {type(config).__name__}")
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint {path}: __meta__ must be a JSON object, got {type(meta).__name__}")
    check_meta(meta, path)

    state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    if model is None:
        check_config(config, sum(int(v.size) for v in state.values()), f"checkpoint {path}")
        try:
            model = _build(config)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"checkpoint {path}: cannot build a model from its config {config}: {exc}") from exc
    elif getattr(model, "config", None) != config:
        raise ValueError(f"checkpoint {path} holds config {config}, but the given model has {model.config}")
    try:
        model.load_state_dict(state)
    except ValueError as exc:
        raise ValueError(f"checkpoint {path} does not match its config {config}: {exc}") from exc
    warn_non_finite(state, path)
    try:
        set_rng_states(model, meta.pop("rng_states", {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"checkpoint {path}: bad random generator state: {exc}") from exc
    model.eval()

    optimizer_state = None
    if any(k.startswith("optimizer/") for k in arrays):
        optimizer_state = {}
        for k, v in arrays.items():
            if k.startswith("optimizer/"):
                optimizer_state[k[len("optimizer/"):]] = v.item() if v.ndim == 0 else v
    epoch = meta.pop("epoch", None)
    meta.pop("optimizer", None)
    return Checkpoint(model=model, config=config, epoch=epoch, optimizer_state=optimizer_state, meta=meta)


def check_meta(meta, path):
    """Refuse training metadata a command would act on wrongly: a resolution that is not an int in
    [1, MAX_RESOLUTION], a mean or std that is not a list of finite numbers (std > 0), classes that
    are not a list of names."""
    resolution = meta.get("resolution")
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int)
                                   or not 1 <= resolution <= MAX_RESOLUTION):
        raise ValueError(f"checkpoint {path}: its metadata has resolution {resolution!r:.40}; expected an int "
                         f"between 1 and {MAX_RESOLUTION}")
    for key in ("mean", "std"):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not 1 <= len(value) <= 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value) \
                or (key == "std" and min(value) <= 0):
            raise ValueError(f"checkpoint {path}: its metadata has {key} {value!r:.80}; expected a list of finite "
                             "numbers, one per channel" + (" (> 0)" if key == "std" else ""))
    classes = meta.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise ValueError(f"checkpoint {path}: its metadata has classes {classes!r:.80}; expected a list of names")


def load(path, model=None):
    """The model saved in `path`, in eval mode: a float MobileNet rebuilt from its config (or the
    weights loaded into `model`; see `load_checkpoint`), or an int8 `QuantizedModel`, as the
    file's format says."""
    path = os.fspath(path)
    arrays = read_arrays(path)
    if "__format__" in arrays and str(arrays["__format__"]) == INT8_FORMAT:
        if model is not None:
            raise ValueError(f"{path} is an int8 quantized checkpoint: it cannot be loaded into a float model")
        return QuantizedModel.from_arrays(arrays, path)
    return _from_arrays(arrays, path, model).model


def load_with_meta(path):
    """(model, metadata) of any npmobilenet checkpoint: a float one's training metadata
    (resolution, normalisation, data split), or the metadata an int8 model kept from it."""
    path = os.fspath(path)
    arrays = read_arrays(path)
    if "__format__" in arrays and str(arrays["__format__"]) == INT8_FORMAT:
        model = QuantizedModel.from_arrays(arrays, path)
        meta = model.info.get("meta", {})
        if not isinstance(meta, dict):
            raise ValueError(f"quantized checkpoint {path}: its metadata is not a JSON object")
        check_meta(meta, path)
        return model, dict(meta)
    checkpoint = _from_arrays(arrays, path)
    return checkpoint.model, checkpoint.meta
