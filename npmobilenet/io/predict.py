"""Classify image files with a model (`npmobilenet predict`, and the Dask batch prediction on top);
segment them or detect objects in them with LR-ASPP or SSDLite weights (`DensePredictor`).

    iter_image_paths(inputs)        files as given, directories walked (sorted, image files only),
                                    globs expanded: lazily, one directory listing at a time
    open_predictor(weights, ...)    -> Predictor: the weights (`sources.open_model`: a registry
                                    name, an npmobilenet checkpoint float or int8, a torchvision or
                                    timm file), fused, with the preprocessing and class names the
                                    weights come with (arguments override)
    Predictor.predict_files(paths)  -> rows {"path", "top": [{"rank", "index", "label",
                                    "probability"}], "error"}: an unreadable image gives a row with
                                    its error, never an exception
    DensePredictor.iter_predictions(paths, draw_dir)
                                    -> rows {"path", "size", "classes" (segmentation: share of the
                                    pixels) or "detections" ({"index", "label", "score", "xyxy"} in
                                    the image's pixels), "drawn", "error"}; the mask or boxes drawn
                                    over each image to draw_dir (PNG; detection also a JSON of boxes)

Preprocessing (`images.Preprocess`): a registry name uses its entry's (torchvision's evaluation
transform); an npmobilenet checkpoint the resolution, mean and std its training stored (whole
images resized to the training resolution, as training and `eval` see them); a foreign file
ImageNet's resize 256 / crop 224 / mean-std.
"""
import fnmatch
import glob
import json
import os
import time

import numpy as np

from npmobilenet.io.images import Preprocess, load_image, preprocess_image
from npmobilenet.io.registry import imagenet_classes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
DEFAULT_BATCH = 32

__all__ = ["iter_image_paths", "open_predictor", "Predictor", "imagenet_classes", "softmax", "top_k"]


# -- which files ---------------------------------------------------------------------------------------------
def is_image_name(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk(directory):
    """Image files under `directory`, sorted, depth first; hidden files and directories skipped."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _walk(entry.path)
        elif entry.is_file() and is_image_name(entry.name):
            yield entry.path


def _glob(pattern):
    """Paths matching `pattern` ('*', '?', '[...]', and '**' for any depth), in sorted order,
    listing one directory at a time (glob.glob would build the whole list first)."""
    parts = pattern.split(os.sep)
    root = os.sep if pattern.startswith(os.sep) else os.curdir
    if parts and parts[0] == "":
        parts = parts[1:]
    start = [] if root == os.curdir else [root]

    def join(prefix, name):
        return os.path.join(*prefix, name) if prefix else name

    def match(prefix, i):
        if i == len(parts):
            yield os.path.join(*prefix) if prefix else os.curdir
            return
        part = parts[i]
        here = os.path.join(*prefix) if prefix else os.curdir
        if part == "**":
            yield from match(prefix, i + 1)      # zero directories
            try:
                names = sorted(e.name for e in os.scandir(here) if e.is_dir() and not e.name.startswith("."))
            except OSError:
                return
            for name in names:
                yield from match(prefix + [name], i)
            return
        if not glob.has_magic(part):
            if os.path.lexists(join(prefix, part)) or part in ("", os.curdir, os.pardir):
                yield from match(prefix + [part], i + 1)
            return
        try:
            names = sorted(e.name for e in os.scandir(here))
        except OSError:
            return
        for name in names:
            if name.startswith(".") and not part.startswith("."):
                continue
            if fnmatch.fnmatchcase(name, part):
                yield from match(prefix + [name], i + 1)

    yield from match(start, 0)


def iter_image_paths(inputs):
    """Image file paths from `inputs` (a path or an iterable of paths), lazily:

    - a file: yielded as given (whatever its extension: a non-image then gives an error row);
    - a directory: its image files (by extension), recursively, sorted, hidden ones skipped;
    - a glob ('*.jpg', 'photos/**/*.png'): its matches in sorted order (directories walked);
      ValueError if it matches nothing;
    - a path that does not exist: yielded as given (its row says so).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    for item in inputs:
        path = os.fspath(item)
        if os.path.isdir(path):
            yield from _walk(path)
        elif not os.path.exists(path) and glob.has_magic(path):
            matched = False
            pattern = path
            while pattern.endswith(os.sep + "**") or pattern == "**":
                pattern = pattern[:-3] or os.curdir   # 'DIR/**': everything under DIR, each file once
            for match in _glob(pattern):
                matched = True
                if os.path.isdir(match):
                    yield from _walk(match)
                else:
                    yield match
            if not matched:
                raise ValueError(f"{path!r} matches no file")
        else:
            yield path


# -- scores ----------------------------------------------------------------------------------------------------
def softmax(logits):
    """Row-wise softmax, stable: (N, K) -> (N, K) float32."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z.astype(np.float64))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def top_k(scores, k):
    """Indices (N, k) of the k largest per row, largest first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _check_topk(topk):
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
        raise ValueError(f"topk must be a positive int, got {topk!r}")
    return int(topk)


# -- the predictor -------------------------------------------------------------------------------------------
class Predictor:
    """A model ready to classify images: preprocessing, class names, threads.

    model: a fused float model (`FusedMobileNet`) or an int8 `QuantizedModel` (anything mapping
    (N, H, W, 3) float32 to (N, K) logits); preprocess: `images.Preprocess`; labels: K names or
    None; meta: what `sources.open_model` said about the weights.
    """

    def __init__(self, model, preprocess=Preprocess(), labels=None, meta=None, threads=None, batch_size=DEFAULT_BATCH):
        num_classes = model.config["num_classes"]
        if labels is not None:
            labels = [str(label) for label in labels]
            if len(labels) != num_classes:
                raise ValueError(f"{len(labels)} labels given for a model with {num_classes} classes")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model = model
        self.preprocess = preprocess
        self.labels = labels
        self.meta = dict(meta or {})
        self.threads = threads
        self.batch_size = int(batch_size)
        self.num_classes = num_classes
        self.warmed = False

    def _logits(self, batch):
        from npmobilenet.inference.threads import numba_threads

        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[3] != 3:
            raise ValueError(f"batch must be (N, H, W, 3) NHWC float32, got shape {batch.shape}")
        # the fused model holds its own thread count; the int8 model runs on Numba's setting
        with numba_threads(self.threads):
            logits = np.asarray(self.model(batch), dtype=np.float32)
        bad = ~np.isfinite(logits).all(axis=1)
        if bad.any():
            raise ValueError(f"the model gave non-finite logits (NaN or inf) for {int(bad.sum())} of {len(logits)} "
                             "image(s): the weights are damaged or overflow float32")
        return logits

    def warm_up(self):
        """Run a batch of zeros once (compiles the kernels, or loads them from Numba's cache, and
        allocates the memory plan); returns the seconds it took."""
        size = self.preprocess.crop
        start = time.perf_counter()
        self._logits(np.zeros((1, size, size, 3), np.float32))
        self.warmed = True
        return time.perf_counter() - start

    def predict_arrays(self, batch):
        """Preprocessed images (N, H, W, 3) NHWC float32 -> class probabilities (N, K) float32.
        Non-finite logits raise ValueError (they are never turned into probabilities)."""
        return softmax(self._logits(batch))

    def label(self, index):
        return self.labels[index] if self.labels is not None else None

    def _rows(self, paths, images, topk):
        logits = self._logits(np.stack(images))
        probabilities = softmax(logits)
        # rank by logits: probabilities rounded to float32 can tie where the logits do not
        for path, p, best in zip(paths, probabilities, top_k(logits, topk)):
            yield {"path": path, "top": [{"rank": rank, "index": int(i), "label": self.label(int(i)),
                                          "probability": float(p[i])} for rank, i in enumerate(best, 1)],
                   "error": None}

    def iter_predictions(self, paths, topk=5, batch_size=None, notes=None):
        """Rows (see `predict_files`) as the images are read, `batch_size` images per forward pass,
        in the order of `paths` (any iterable, consumed lazily). `notes`, if a list, receives
        (path, note) for each image converted on reading (grayscale, alpha, palette, 16-bit)."""
        topk = _check_topk(topk)
        batch_size = self.batch_size if batch_size is None else batch_size
        pending = []          # rows in input order: error rows, or (path, image) awaiting the batch
        images = 0

        def flush():
            ready = [item for item in pending if isinstance(item, tuple)]
            rows = iter(self._rows([p for p, _ in ready], [x for _, x in ready], topk)) if ready else iter(())
            for item in pending:
                yield next(rows) if isinstance(item, tuple) else item
            pending.clear()

        for path in paths:
            path = os.fspath(path)
            try:
                image, note = load_image(path)
                x = preprocess_image(image, self.preprocess)
            except (ValueError, OSError) as exc:
                pending.append({"path": path, "top": [], "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__})
                continue
            if note is not None and notes is not None:
                notes.append((path, note))
            pending.append((path, x))
            images += 1
            if images == batch_size:
                yield from flush()
                images = 0
        yield from flush()

    def predict_files(self, paths, topk=5, batch_size=None, notes=None):
        """[{"path", "top": [{"rank", "index", "label", "probability"}], "error"}] for image files
        `paths`, in order: `topk` classes each, most probable first (label None where the model's
        classes have no names). An unreadable, missing or corrupt image gives a row with `top` empty
        and `error` a one-line message; every other row has `error` None."""
        return list(self.iter_predictions(paths, topk, batch_size, notes))

    def __repr__(self):
        c = self.model.config
        return (f"Predictor({c.get('arch')} width {c.get('width')}, {self.num_classes} classes, "
                f"{type(self.model).__name__}, {self.preprocess})")


def _labels_from(labels):
    """`labels`: a list of names, or a text file with one per line."""
    if labels is None or isinstance(labels, (list, tuple)):
        return labels
    with open(os.fspath(labels), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def open_predictor(weights, *, arch=None, width=None, tf=False, resize=None, crop=None, mean=None, std=None,
                   interpolation=None, labels=None, threads=None, batch_size=DEFAULT_BATCH, fuse=True, min_score=None):
    """A `Predictor` for `weights`: a registry name (e.g. "mobilenet_v2.IMAGENET1K_V1"), an
    npmobilenet checkpoint (float or int8) or a torchvision/timm .pth/.safetensors file.

    arch, width, tf: checked against the weights (see `sources.open_model`). resize, crop, mean,
    std, interpolation: override the weights' own preprocessing (a checkpoint's stored resolution,
    mean and std; a registry entry's; ImageNet's for a foreign file); `resize` alone sets `crop` to
    it when the weights' crop would not fit. labels: names (list or a file, one per line) in place
    of the weights' (a checkpoint's stored classes, the registry's categories, ImageNet's for a
    1000-class foreign file). threads: for the fused model (None: Numba's setting). A float model
    is fused (`model.fuse(threads)`); an int8 model runs as it is.

    LR-ASPP and SSDLite weights give a `DensePredictor` (its `task` says which) with their own
    preprocessing (resize: segmentation's shorter side; crop and interpolation refused) and
    `min_score` (detection: the lowest score reported, default 0.5).
    """
    from npmobilenet.applications import APPLICATIONS
    from npmobilenet.compression.qmodel import QuantizedModel
    from npmobilenet.inference.threads import check_threads
    from npmobilenet.io.sources import open_model

    threads = check_threads(threads)
    model, meta = open_model(weights, arch=arch, width=width, tf=tf)
    if model.config["arch"] in APPLICATIONS:
        if fuse:
            model = model.eval().fuse(threads)
        return _dense_predictor(model, meta, resize, crop, mean, std, interpolation, labels, threads, min_score)
    if min_score is not None:
        raise ValueError("min_score applies to detection weights (SSDLite), not to a classifier")
    base = meta.get("preprocess") or {}
    default = Preprocess()
    chosen_resize = resize if resize is not None else base.get("resize", default.resize)
    chosen_crop = crop if crop is not None else base.get("crop", default.crop)
    if crop is None and resize is not None and chosen_crop > chosen_resize:
        chosen_crop = chosen_resize
    preprocess = Preprocess(
        chosen_resize, chosen_crop,
        tuple(mean) if mean is not None else tuple(base.get("mean", default.mean)),
        tuple(std) if std is not None else tuple(base.get("std", default.std)),
        interpolation if interpolation is not None else base.get("interpolation", default.interpolation),
    )
    names = _labels_from(labels) if labels is not None else meta.get("classes")
    if names is not None and labels is None and len(names) != model.config["num_classes"]:
        names = None   # stored names that do not fit: show indices rather than wrong names
    if names is None and model.config["num_classes"] == 1000:
        names = imagenet_classes()   # 1000 classes without names of their own: ImageNet-1k's
    if fuse and not isinstance(model, QuantizedModel):
        model = model.fuse(threads)
    return Predictor(model, preprocess, names, meta, threads, batch_size)


# -- segmentation and detection ---------------------------------------------------------------------------------
def voc_palette(count):
    """(count, 3) uint8: Pascal VOC's colour map (class index bits spread over R, G, B, high bits
    first), so class c has the colour of VOC's annotations; 0, the background, is black."""
    palette = np.zeros((count, 3), np.uint8)
    for c in range(count):
        code, colour = c, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((code >> channel) & 1) << bit
            code >>= 3
        palette[c] = colour
    return palette


class DensePredictor:
    """LR-ASPP (task "segmentation") or SSDLite ("detection") on image files, as torchvision
    preprocesses for them; `model` fused (`model.fuse()`, what `open_predictor` gives) or an
    unfused one, put in eval mode.

    segmentation: the shorter side resized to `resize` (Pillow, bilinear), ImageNet's mean and
    std; the logits resized back to the image's size (bilinear) before the argmax, so the mask is
    the original image's. detection: pixels scaled to [0, 1], normalised, the whole image resized
    to `size` (bilinear, align_corners=False: torchvision's transform inside the model); boxes
    scaled back to the original image's pixels; `min_score` keeps the boxes reported and drawn.
    """

    def __init__(self, model, task, mean, std, resize=None, size=None, labels=None, meta=None, threads=None,
                 min_score=0.5):
        if task not in ("segmentation", "detection"):
            raise ValueError(f"task must be 'segmentation' or 'detection', got {task!r}")
        if labels is not None and len(labels) != model.num_classes:
            raise ValueError(f"{len(labels)} labels given for a model with {model.num_classes} classes")
        if not 0 <= min_score <= 1:
            raise ValueError(f"min_score must be in [0, 1], got {min_score!r}")
        self.model, self.task, self.mean, self.std = model.eval(), task, tuple(mean), tuple(std)
        self.resize, self.size, self.labels, self.meta = resize, size, labels, dict(meta or {})
        self.threads, self.min_score, self.num_classes = threads, float(min_score), model.num_classes
        self.palette = voc_palette(self.num_classes)

    def label(self, index):
        return self.labels[index] if self.labels is not None else None

    def _run(self, fn, *args):
        from npmobilenet.inference.threads import numba_threads

        with numba_threads(self.threads):
            return fn(*args)

    def warm_up(self):
        """One small forward pass (compiles the kernels or loads them from Numba's cache); seconds."""
        start = time.perf_counter()
        self._run(self.model, np.zeros((1, 64, 64, 3), np.float32))
        return time.perf_counter() - start

    def segment(self, image):
        """A PIL RGB image -> the class of each of its pixels (H, W) int64."""
        from npmobilenet.io.images import normalise, resize_shorter_side
        from npmobilenet.ops.resize import bilinear_resize

        width, height = image.size
        x = normalise(np.asarray(resize_shorter_side(image, self.resize), np.uint8), self.mean, self.std)[None]
        logits = self._run(self.model, np.ascontiguousarray(x))
        # class by class, so that memory stays at a few maps of the original image's size
        best = np.full((height, width), -np.inf, np.float32)
        mask = np.zeros((height, width), np.int64)
        for k in range(logits.shape[3]):
            up = self._run(bilinear_resize, np.ascontiguousarray(logits[..., k:k + 1]), (height, width))[0, :, :, 0]
            better = up > best
            best[better], mask[better] = up[better], k
        return mask

    def detect(self, image):
        """A PIL RGB image -> [{"index", "label", "score", "xyxy"}] with score >= min_score, boxes
        in the image's pixels, by decreasing score."""
        from npmobilenet.io.images import normalise
        from npmobilenet.ops.resize import bilinear_resize

        width, height = image.size
        x = normalise(np.asarray(image, np.uint8), self.mean, self.std)[None]
        x = self._run(bilinear_resize, np.ascontiguousarray(x), self.size)
        found = self._run(self.model.detect, x)[0]
        scale = np.array([width / self.size[1], height / self.size[0]] * 2, np.float64)
        return [{"index": int(label), "label": self.label(int(label)), "score": float(score),
                 "xyxy": [round(float(v), 2) for v in box * scale]}
                for box, score, label in zip(found["boxes"], found["scores"], found["labels"])
                if score >= self.min_score]

    def predict_image(self, image):
        """A PIL RGB image -> (result dict, the array to draw: mask or detections)."""
        if self.task == "segmentation":
            mask = self.segment(image)
            counts = np.bincount(mask.ravel(), minlength=self.num_classes)
            classes = [{"index": int(k), "label": self.label(int(k)), "fraction": round(float(counts[k]) / mask.size, 6)}
                       for k in np.argsort(-counts, kind="stable") if counts[k]]
            return {"classes": classes}, mask
        detections = self.detect(image)
        return {"detections": detections}, detections

    def draw(self, image, drawn):
        """The image with the mask blended over it (half opacity, background left as it is) or the
        boxes drawn (colour by class, label and score): a PIL RGB image."""
        from PIL import Image, ImageDraw

        if self.task == "segmentation":
            pixels = np.asarray(image, np.float32)
            blended = np.where((drawn > 0)[..., None], 0.5 * pixels + 0.5 * self.palette[drawn], pixels)
            return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
        out = image.copy()
        draw = ImageDraw.Draw(out)
        line = max(2, min(image.size) // 200)
        for d in drawn:
            colour = tuple(int(c) for c in self.palette[d["index"] % len(self.palette)])
            colour = colour if colour != (0, 0, 0) else (255, 255, 255)
            draw.rectangle(d["xyxy"], outline=colour, width=line)
            name = d["label"] if d["label"] is not None else f"class {d['index']}"
            draw.text((d["xyxy"][0] + line + 1, d["xyxy"][1] + line), f"{name} {d['score']:.2f}", fill=colour)
        return out

    def iter_predictions(self, paths, draw_dir=None, notes=None):
        """Rows {"path", "size": [W, H], "classes" or "detections", "drawn" (PNG written to
        `draw_dir`, or None), "boxes_json" (detection: the JSON of boxes beside it), "error"}, one
        per path in order; an unreadable image gives a row with its error."""
        from npmobilenet.io.files import atomic_write, check_output

        suffix = ".mask" if self.task == "segmentation" else ".boxes"
        taken = set()
        for path in paths:
            path = os.fspath(path)
            try:
                image, note = load_image(path)
            except (ValueError, OSError) as exc:
                yield {"path": path, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}
                continue
            if note is not None and notes is not None:
                notes.append((path, note))
            result, drawn = self.predict_image(image)
            row = {"path": path, "size": list(image.size), **result, "drawn": None, "error": None}
            if draw_dir is not None:
                stem = os.path.splitext(os.path.basename(path))[0]
                name, k = stem, 1
                while name in taken:                    # photos/a.jpg and shots/a.jpg: a, a_2
                    k += 1
                    name = f"{stem}_{k}"
                taken.add(name)
                picture = check_output(os.path.join(draw_dir, name + suffix + ".png"), [path], "--draw")
                atomic_write(picture, lambda f: self.draw(image, drawn).save(f, format="PNG"))
                row["drawn"] = picture
                if self.task == "detection":
                    boxes = check_output(os.path.join(draw_dir, name + ".boxes.json"), [path], "--draw")
                    text = json.dumps({"path": path, "size": row["size"], "detections": result["detections"]}, indent=1)
                    atomic_write(boxes, lambda f: f.write(text.encode("utf-8")))
                    row["boxes_json"] = boxes
            yield row

    def __repr__(self):
        c = self.model.config
        return f"DensePredictor({c.get('arch')} width {c.get('width')}, {self.num_classes} classes, {self.task})"


def _dense_predictor(model, meta, resize, crop, mean, std, interpolation, labels, threads, min_score):
    """open_predictor's case for LR-ASPP and SSDLite weights."""
    from npmobilenet.io.registry import APPLICATION_WEIGHTS

    task = "segmentation" if model.config["arch"] == "lraspp_mobilenet_v3_large" else "detection"
    for name, value in (("crop", crop), ("interpolation", interpolation)):
        if value is not None:
            raise ValueError(f"{name} applies to classifiers; {task} resizes the whole image, uncropped, bilinearly")
    if task == "detection" and resize is not None:
        raise ValueError("resize applies to classifiers and segmentation; SSDLite320 takes the image at 320x320")
    entry = next(e for e in APPLICATION_WEIGHTS.values() if e.arch == model.config["arch"])
    base = meta.get("preprocess") or entry.meta()["preprocess"]   # a foreign file: torchvision's own
    names = _labels_from(labels) if labels is not None else meta.get("classes")
    if names is None and model.num_classes == len(entry.categories()):
        names = entry.categories()              # VOC's 21 or COCO's 91 classes: torchvision's names
    if names is not None and labels is None and len(names) != model.num_classes:
        names = None
    return DensePredictor(model, task, mean if mean is not None else base["mean"],
                          std if std is not None else base["std"],
                          resize=resize if resize is not None else base.get("resize"),
                          size=tuple(base["size"]) if "size" in base else None, labels=names, meta=meta,
                          threads=threads, min_score=0.5 if min_score is None else min_score)
