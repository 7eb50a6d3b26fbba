"""The training loop: minibatch gradient descent with the models' hand-written backward passes.

One step is: forward in training mode -> softmax cross-entropy -> `model.backward(dlogits)`
(which overwrites every parameter's `.grad`) -> `optimizer.step()`. After each epoch the model is
evaluated in eval mode, the epoch is appended to the history and (if asked) a checkpoint is
written atomically. A NaN or infinite loss stops training before the weights are touched, with
an error naming the epoch and batch; the last checkpoint, written after the last good epoch,
stays as it was.

Reproducibility: the shuffling and augmentation of epoch `e` come from
`default_rng([seed, e])`, dropout's generator is saved in the checkpoint, and so are the
optimizer's moments and step count; resuming after epoch `e` therefore replays exactly the steps
the uninterrupted run would have taken.
"""
import math
import sys
import time

import numpy as np

from npmobilenet.extras import available
from npmobilenet.io.checkpoint import load_checkpoint, save
from npmobilenet.training.data import BatchLoader, as_dataset
from npmobilenet.training.evaluation import evaluate
from npmobilenet.training.loss import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from npmobilenet.training.optim import AdamW
from npmobilenet.training.schedule import ConstantLR


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; `epoch` and `batch` (1-based) say where."""

    def __init__(self, message, epoch, batch, step):
        super().__init__(message)
        self.epoch, self.batch, self.step = epoch, batch, step


def _format_seconds(seconds):
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Progress display: a tqdm bar per epoch when tqdm is installed and stderr is a terminal, else
    plain text lines (one per epoch, plus one every `interval` seconds within long epochs).

    mode: "auto", "tqdm", "plain" or "none"; stream: where to write (default: the bar to stderr,
    plain lines to stdout).
    """

    def __init__(self, mode="auto", stream=None, interval=10.0):
        if mode is True:
            mode = "auto"
        elif mode is False or mode is None:
            mode = "none"
        if mode not in ("auto", "tqdm", "plain", "none"):
            raise ValueError(f"progress must be 'auto', 'tqdm', 'plain', 'none', True or False, got {mode!r}")
        if mode == "auto":
            mode = "tqdm" if available("tqdm") and sys.stderr.isatty() else "plain"
        self.mode = mode
        self.stream = stream if stream is not None else (sys.stderr if mode == "tqdm" else sys.stdout)
        self.interval = interval
        self._bar = None
        self._last_print = 0.0

    def start_epoch(self, epoch, epochs, steps):
        self._epoch, self._epochs, self._steps = epoch, epochs, steps
        self._last_print = time.perf_counter()
        if self.mode == "tqdm":
            from npmobilenet.extras import require

            tqdm = require("tqdm", "the progress bar").tqdm
            self._bar = tqdm(
                total=steps, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=True, dynamic_ncols=True,
                file=self.stream,
            )

    def update(self, batch, loss, acc, images_per_second, seconds_left):
        text = f"loss {loss:.4f} acc {100 * acc:5.1f}% {images_per_second:6.0f} img/s left {_format_seconds(seconds_left)}"
        if self.mode == "tqdm":
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(1)
        elif self.mode == "plain":
            now = time.perf_counter()
            if now - self._last_print >= self.interval and batch < self._steps:
                print(f"  epoch {self._epoch}/{self._epochs} batch {batch}/{self._steps}  {text}", file=self.stream, flush=True)
                self._last_print = now

    def end_epoch(self, record, seconds_left):
        val = ""
        if record.get("val_loss") is not None:
            val = f"  val loss {record['val_loss']:.4f} acc {100 * record['val_acc']:5.1f}%"
        text = (
            f"train loss {record['train_loss']:.4f} acc {100 * record['train_acc']:5.1f}%{val}  "
            f"lr {record['lr']:.3g}  {record['images_per_second']:.0f} img/s  {record['seconds']:.1f} s"
        )
        if self.mode == "tqdm":
            self._bar.set_postfix_str(f"{text}  left {_format_seconds(seconds_left)}", refresh=True)
            self._bar.close()
            self._bar = None
        elif self.mode == "plain":
            print(
                f"epoch {self._epoch}/{self._epochs}  {text}  left {_format_seconds(seconds_left)}",
                file=self.stream, flush=True,
            )

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def train(
    model,
    train_data,
    val_data=None,
    epochs=1,
    optimizer=None,
    schedule=None,
    *,
    batch_size=64,
    seed=0,
    label_smoothing=0.0,
    transform=None,
    eval_transform=None,
    checkpoint=None,
    resume=None,
    progress="auto",
    drop_last=True,
    eval_batch_size=256,
    checkpoint_meta=None,
):
    """Train `model` for `epochs` epochs; returns the history, one dict per epoch.

    model: a MobileNet (or any Layer with `config`, `backward`, train/eval).
    train_data, val_data: ArrayDataset or `(images (N, H, W, C), labels (N,))`; val may be None.
    optimizer: an `npmobilenet.training.optim` optimizer (default AdamW, lr 1e-3, decay 0.01).
    schedule: a `npmobilenet.training.schedule` schedule (default: the optimizer's lr throughout);
        per-epoch schedules are read at the epoch index, per-step ones at the global step.
    batch_size, seed, label_smoothing: as named; `drop_last` drops a final short batch.
    transform: `t(x, rng)` for training batches (augmentation + normalisation);
    eval_transform: `t(x, rng)` for validation batches (the deterministic part).
    checkpoint: path written atomically after every epoch (model, optimizer, epoch, seed, history,
        plus `checkpoint_meta`, e.g. the normalisation the eval command must repeat).
    resume: path of a checkpoint to continue from (its epoch count, optimizer state, dropout
        generators and history); training continues until `epochs` in total.
    progress: "auto" (tqdm bar on a terminal, else plain lines), "tqdm", "plain", "none"/False.

    Each history entry: epoch (1-based), train_loss, train_acc, val_loss, val_acc (None without
    val_data), lr (at the epoch's last step), seconds, images_per_second.
    Raises NonFiniteLossError (a FloatingPointError) naming the epoch and batch when the loss is
    NaN or infinite; the weights are not updated by that batch and the checkpoint is left alone.
    """
    train_set = as_dataset(train_data)
    val_set = as_dataset(val_data) if val_data is not None else None
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if optimizer is None:
        optimizer = AdamW(model.named_parameters(), lr=1e-3, weight_decay=0.01)
    if schedule is None:
        schedule = ConstantLR(optimizer.lr)
    history, start_epoch = [], 0
    if resume is not None:
        ckpt = load_checkpoint(resume, model=model)
        if ckpt.optimizer_state is None:
            raise ValueError(f"cannot resume from {resume}: it holds no optimizer state (saved without optimizer=)")
        optimizer.load_state_dict(ckpt.optimizer_state)
        start_epoch = int(ckpt.epoch or 0)
        history = list(ckpt.meta.get("history", []))
        if ckpt.meta.get("seed") is not None and ckpt.meta["seed"] != seed:
            raise ValueError(f"{resume} was trained with seed {ckpt.meta['seed']}, but seed={seed} was given")
    loader = BatchLoader(train_set, batch_size, shuffle=True, seed=seed, transform=transform, drop_last=drop_last)
    steps_per_epoch = len(loader)
    display = Progress(progress)

    last_saved = {"epoch": start_epoch if resume is not None and checkpoint is not None else None}

    def save_epoch(epoch):
        if checkpoint is not None:
            save(model, checkpoint, optimizer, epoch=epoch, seed=seed, history=history, **(checkpoint_meta or {}))
            last_saved["epoch"] = epoch

    def last_good():
        if checkpoint is None:
            return "none (no checkpoint path given)"
        if last_saved["epoch"] is None:
            return f"none written yet ({checkpoint} untouched)"
        return f"{checkpoint} (after epoch {last_saved['epoch']}), left intact"

    train_seconds, trained_images, eval_seconds = 0.0, 0, 0.0
    images_left = (epochs - start_epoch) * steps_per_epoch * batch_size
    try:
        for epoch in range(start_epoch, epochs):
            model.train()
            display.start_epoch(epoch + 1, epochs, steps_per_epoch)
            epoch_start = time.perf_counter()
            loss_sum, correct, seen, epoch_train_seconds = 0.0, 0, 0, 0.0
            tick = epoch_start  # step time includes loading and augmenting the batch
            for batch, (x, y) in enumerate(loader.batches(epoch)):
                step = epoch * steps_per_epoch + batch
                optimizer.lr = schedule.lr_at(step if schedule.unit == "step" else epoch)
                logits = model(x)
                loss, cache = softmax_cross_entropy_forward(logits, y, label_smoothing)
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss is {loss} at epoch {epoch + 1}, batch {batch + 1}/{steps_per_epoch} (step {step + 1}, "
                        f"lr {optimizer.lr:.3g}); stopped before updating the weights. Last good checkpoint: {last_good()}. "
                        "Try a lower learning rate.",
                        epoch + 1, batch + 1, step + 1,
                    )
                model.backward(softmax_cross_entropy_backward(cache))
                optimizer.step()
                now = time.perf_counter()
                step_seconds, tick = now - tick, now
                train_seconds += step_seconds
                epoch_train_seconds += step_seconds
                trained_images += len(y)
                images_left -= len(y)
                loss_sum += loss * len(y)
                correct += int((logits.argmax(axis=1) == y).sum())
                seen += len(y)
                images_per_second = trained_images / max(train_seconds, 1e-9)
                evals_left = (epochs - epoch) if val_set is not None else 0
                seconds_left = images_left / images_per_second + evals_left * eval_seconds
                display.update(batch + 1, loss_sum / seen, correct / seen, images_per_second, seconds_left)
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / seen,
                "train_acc": correct / seen,
                "val_loss": None,
                "val_acc": None,
                "lr": optimizer.lr,
            }
            if val_set is not None:
                eval_start = time.perf_counter()
                result = evaluate(model, val_set, eval_batch_size, eval_transform, label_smoothing=0.0)
                eval_seconds = time.perf_counter() - eval_start
                record["val_loss"], record["val_acc"] = result["loss"], result["top1"]
            record["seconds"] = time.perf_counter() - epoch_start
            record["images_per_second"] = seen / max(epoch_train_seconds, 1e-9)
            history.append(record)
            save_epoch(epoch + 1)
            remaining = epochs - epoch - 1
            display.end_epoch(record, images_left / max(trained_images / max(train_seconds, 1e-9), 1e-9) + remaining * eval_seconds)
    finally:
        display.close()
    return history
