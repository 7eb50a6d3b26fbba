"""`npmobilenet demo --task segmentation|detection`: LR-ASPP and SSDLite trained from scratch on
the synthetic shapes (`training.synthetic`), with the hand-written backward passes, and scored on
a held-out split as Pascal VOC scores them.

Both train a width-reduced MobileNetV3-Large backbone on small images with AdamW (1 warm-up epoch
then cosine), batch 16, backbone batch-norm momentum 0.1 (V3's 0.01 lags behind a short run), on a training set made with seed 0 and a test set made with seed 1 (the
same test images every run), and report against a trivial baseline:

    segmentation  LR-ASPP, backbone width 0.35, 96x96; per-pixel cross-entropy; mIoU over the four
                  classes (background, disc, square, triangle). Baseline: every pixel background,
                  the majority class (IoU 0 for the shapes).
    detection     SSDLite, backbone width 0.35, extra blocks at width 0.25, 128x128 (522 default
                  boxes: the anchor scales are relative to the image); SSD's loss; mAP@0.5. Baseline:
                  in every test image, one box per class at the training set's mean box of that
                  class (the best box that knows nothing of the image).

Measured (README, "Applications"): segmentation mIoU 0.410 against 0.196, detection mAP@0.5 0.536
against 0.002. Both tasks learn from scratch here only with these settings: LR-ASPP stayed at
mIoU 0.30 with lr 3e-3, 8 epochs and V3's batch-norm momentum 0.01; SSDLite stayed at chance
(mAP 0.017) until its convolutions started from torchvision's N(0, 0.03) (`ssdlite.normal_init`).

Each writes a PNG of predictions over test images (Pillow): the image, the true mask and the
predicted one; or the predicted boxes (score >= 0.5, colour by class) with the true boxes thin.
"""
import time

import numpy as np

from npmobilenet.training.synthetic import CLASSES, make_dataset

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
COLOURS = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 80], [70, 110, 240]], np.uint8)
TASKS = ("segmentation", "detection")

DEFAULTS = {
    "segmentation": dict(width=0.35, resolution=96, train_images=1600, test_images=200, epochs=14, batch_size=16,
                         lr=6e-3, weight_decay=1e-4, bn_momentum=0.1, seed=0),
    "detection": dict(width=0.35, extra_width=0.25, resolution=128, train_images=1200, test_images=200, epochs=12,
                      batch_size=16, lr=3e-3, weight_decay=1e-4, bn_momentum=0.1, seed=0),
}
QUICK = dict(train_images=32, test_images=16, epochs=1)      # a smoke run (for a --quick flag)


def normalise(images, mean, std):
    """(N, H, W, 3) in [0, 1] -> (x - mean) / std, float32."""
    return ((images - mean) / std).astype(np.float32)


def _batches(count, batch_size, rng):
    order = rng.permutation(count)
    return [order[i:i + batch_size] for i in range(0, count - batch_size + 1, batch_size)]


def _optimizer_and_schedule(model, options, steps):
    from npmobilenet.training.optim import AdamW
    from npmobilenet.training.schedule import CosineLR

    optimizer = AdamW(model, lr=options["lr"], weight_decay=options["weight_decay"])
    warmup = min(steps - 1, max(1, steps // options["epochs"]))
    return optimizer, CosineLR(options["lr"], steps, warmup)


def _train(model, step_loss, count, options, log):
    """The loop both tasks share: `step_loss(indices)` runs forward, loss and backward on a batch."""
    rng = np.random.default_rng(options["seed"])
    steps_per_epoch = count // options["batch_size"]
    optimizer, schedule = _optimizer_and_schedule(model, options, options["epochs"] * steps_per_epoch)
    model.train()
    step, start = 0, time.perf_counter()
    for epoch in range(options["epochs"]):
        losses = []
        for indices in _batches(count, options["batch_size"], rng):
            optimizer.lr = schedule(step)
            loss = step_loss(indices)
            if not np.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss} at step {step}")
            optimizer.step()
            losses.append(loss)
            step += 1
        log(f"epoch {epoch + 1}/{options['epochs']}: loss {np.mean(losses):.4f} "
            f"({time.perf_counter() - start:.0f} s)")
    return time.perf_counter() - start


# -- segmentation ----------------------------------------------------------------------------------
def _predict_masks(model, x, batch_size=32):
    model.eval()
    return np.concatenate([model.predict(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def run_segmentation(options=None, log=print):
    """Train LR-ASPP on the synthetic set; returns a dict of the measured figures and the test
    set's images, true and predicted masks."""
    import npmobilenet
    from npmobilenet.segmentation import mean_iou, pixel_cross_entropy

    o = dict(DEFAULTS["segmentation"], **(options or {}))
    train = make_dataset(o["train_images"], o["resolution"], seed=0)
    test = make_dataset(o["test_images"], o["resolution"], seed=1)
    x_train = normalise(train["images"], IMAGENET_MEAN, IMAGENET_STD)
    x_test = normalise(test["images"], IMAGENET_MEAN, IMAGENET_STD)
    model = npmobilenet.build("lraspp_mobilenet_v3_large", width=o["width"], num_classes=len(CLASSES), seed=o["seed"],
                              bn_momentum=o["bn_momentum"])
    log(f"LR-ASPP, MobileNetV3-Large width {o['width']} backbone, {model.num_parameters():,} parameters; "
        f"{o['train_images']} training and {o['test_images']} test images of {o['resolution']}x{o['resolution']}")

    def step_loss(indices):
        logits = model(x_train[indices])
        loss, dlogits = pixel_cross_entropy(logits, train["masks"][indices])
        model.backward(dlogits)
        return loss

    seconds = _train(model, step_loss, len(x_train), o, log)
    predicted = _predict_masks(model, x_test)
    miou, per_class = mean_iou(predicted, test["masks"], len(CLASSES))
    baseline, _ = mean_iou(np.zeros_like(test["masks"]), test["masks"], len(CLASSES))
    log(f"test mIoU {miou:.3f} (per class: " + ", ".join(f"{c} {v:.3f}" for c, v in zip(CLASSES, per_class))
        + f"); all-background baseline {baseline:.3f}; trained in {seconds:.0f} s")
    return dict(task="segmentation", miou=miou, per_class=dict(zip(CLASSES, per_class.tolist())),
                baseline_miou=baseline, train_seconds=seconds, options=o, images=test["images"],
                truth=test["masks"], predicted=predicted)


def segmentation_picture(result, count=8):
    """(3 H, count W, 3) uint8: rows of test images, true masks, predicted masks."""
    images = (result["images"][:count] * 255).astype(np.uint8)
    rows = [images, COLOURS[result["truth"][:count]], COLOURS[result["predicted"][:count]]]
    return np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)


# -- detection -------------------------------------------------------------------------------------
def _mean_box_baseline(train, test, image_size):
    """Per test image, one box per class at the training set's mean box of that class, score 1."""
    boxes = np.concatenate(train["boxes"])
    labels = np.concatenate(train["labels"])
    classes = [c for c in range(1, len(CLASSES)) if np.any(labels == c)]
    mean = np.array([boxes[labels == c].mean(axis=0) for c in classes]).reshape(-1, 4)
    return [{"boxes": np.clip(mean, 0, image_size), "scores": np.ones(len(classes)), "labels": np.array(classes)}
            for _ in test["boxes"]]


def run_detection(options=None, log=print):
    """Train SSDLite on the synthetic set; returns a dict of the measured figures and the test
    set's images, true boxes and detections."""
    import npmobilenet
    from npmobilenet.detection.loss import ssd_loss
    from npmobilenet.detection.metrics import mean_average_precision

    o = dict(DEFAULTS["detection"], **(options or {}))
    size = o["resolution"]
    train = make_dataset(o["train_images"], size, seed=0)
    test = make_dataset(o["test_images"], size, seed=1)
    half = np.float32(0.5)                                      # torchvision's SSDLite: mean = std = 0.5
    x_train, x_test = normalise(train["images"], half, half), normalise(test["images"], half, half)
    model = npmobilenet.build("ssdlite320_mobilenet_v3_large", width=o["width"], num_classes=len(CLASSES),
                              seed=o["seed"], extra_width=o["extra_width"], bn_momentum=o["bn_momentum"])
    anchors = model.anchors_for((size, size))
    log(f"SSDLite, MobileNetV3-Large width {o['width']} backbone, {model.num_parameters():,} parameters, "
        f"{len(anchors)} default boxes; {o['train_images']} training and {o['test_images']} test images of "
        f"{size}x{size}")
    targets = [{"boxes": b, "labels": label} for b, label in zip(train["boxes"], train["labels"])]

    def step_loss(indices):
        cls_logits, bbox_regression = model(x_train[indices])
        loss, dcls, dbox, _ = ssd_loss(cls_logits, bbox_regression, anchors, [targets[i] for i in indices])
        model.backward(dcls, dbox)
        return loss

    seconds = _train(model, step_loss, len(x_train), o, log)
    model.eval()
    detections = []
    for i in range(0, len(x_test), 32):
        detections += model.detect(x_test[i:i + 32])
    truths = [{"boxes": b, "labels": label} for b, label in zip(test["boxes"], test["labels"])]
    score, per_class = mean_average_precision(detections, truths, len(CLASSES))
    baseline, _ = mean_average_precision(_mean_box_baseline(train, test, size), truths, len(CLASSES))
    log(f"test mAP@0.5 {score:.3f} (per class: " + ", ".join(f"{CLASSES[c]} {v:.3f}" for c, v in per_class.items())
        + f"); mean-box baseline {baseline:.3f}; trained in {seconds:.0f} s")
    return dict(task="detection", map50=score, per_class={CLASSES[c]: v for c, v in per_class.items()},
                baseline_map50=baseline, train_seconds=seconds, options=o, images=test["images"],
                truth=truths, detections=detections)


def detection_picture(result, count=8, min_score=0.5, scale=2):
    """(H scale, count W scale, 3) uint8: test images with the detections (score >= min_score,
    coloured by class, labelled with the score) and the true boxes (thin, white)."""
    from npmobilenet.extras import require

    image_module = require("PIL.Image", "the demo's picture")
    draw_module = require("PIL.ImageDraw", "the demo's picture")
    tiles = []
    for image, truth, found in zip(result["images"][:count], result["truth"], result["detections"]):
        tile = image_module.fromarray((image * 255).astype(np.uint8)).resize(
            (image.shape[1] * scale, image.shape[0] * scale), image_module.NEAREST)
        draw = draw_module.Draw(tile)
        for box in truth["boxes"]:
            draw.rectangle([float(v) * scale for v in box], outline=(255, 255, 255), width=1)
        for box, score, label in zip(found["boxes"], found["scores"], found["labels"]):
            if score >= min_score:
                colour = tuple(int(c) for c in COLOURS[label])
                draw.rectangle([float(v) * scale for v in box], outline=colour, width=3)
                draw.text((float(box[0]) * scale + 3, float(box[1]) * scale + 2), f"{CLASSES[label]} {score:.2f}",
                          fill=colour)
        tiles.append(np.asarray(tile))
    return np.concatenate(tiles, axis=1)


# -- the command's entry point -----------------------------------------------------------------------
def write_png(path, picture):
    """Write an (H, W, 3) uint8 picture as PNG, atomically."""
    from npmobilenet.extras import require
    from npmobilenet.io.files import atomic_write

    image_module = require("PIL.Image", "the demo's picture")
    atomic_write(path, lambda f: image_module.fromarray(picture).save(f, format="PNG"))


def run_task(task, options=None, picture=None, log=print):
    """Run the `task` demo ("segmentation" or "detection"); write the picture to `picture` (a
    .png path) if given. Returns the figures (a dict without the arrays)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    result = (run_segmentation if task == "segmentation" else run_detection)(options, log)
    if picture is not None:
        write_png(picture, segmentation_picture(result) if task == "segmentation" else detection_picture(result))
        log(f"wrote {picture}")
    return {k: v for k, v in result.items() if k not in ("images", "truth", "predicted", "detections")}
