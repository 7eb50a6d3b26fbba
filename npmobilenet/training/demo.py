"""`npmobilenet demo`: train a MobileNetV2 from scratch on real handwritten digits, end to end.

The data are the 1,797 8x8 scans scikit-learn ships in its wheel (`sklearn.datasets.load_digits`:
the test set of the UCI optical-recognition digits, written by 13 people). They are upsampled
bilinearly to the model's resolution and 20% of every class is held out as the test set (fixed
split seed 0, whatever `--seed` is). The demo trains with the hand-written backward passes,
saves the checkpoint, reloads it, and reports from the *reloaded* model in eval mode: test
accuracy and confusion matrix, the per-layer cost summary, and the inference latency at batch 1
and 64 (of the eval-mode model and of its fused inference copy, `model.fuse()`).

Hyper-parameters (chosen on a validation split carved from the training set, never on the test
set): MobileNetV2 width 0.35 at 32x32, AdamW lr 0.01 with decoupled decay 0.05 (batch norm and
biases exempt), 1 warm-up epoch then cosine, batch 64, label smoothing 0.1, random shifts of up
to 2 pixels (pad 2 + crop) as augmentation, 30 epochs.
"""
import contextlib
import os
import sys
import time

import numpy as np

TARGET_ACCURACY = 0.97
SPLIT_SEED = 0  # the held-out test set is the same for every run

DEFAULTS = dict(
    arch="mobilenet_v2", width=0.35, resolution=32, epochs=30, batch_size=64, lr=0.01, weight_decay=0.05,
    label_smoothing=0.1, shift=2, warmup_epochs=1.0, seed=0,
)
QUICK = dict(epochs=1, train_images=256)


def measure_latency(model, resolution, batch, seconds=1.0, max_runs=50, warmup=1):
    """Median seconds per forward pass of a `(batch, R, R, 3)` input, after `warmup` passes.

    Runs until `seconds` have passed (at least 3 runs, at most `max_runs`); the median resists
    the noise of a shared machine.
    """
    x = np.random.default_rng(0).standard_normal((batch, resolution, resolution, 3)).astype(np.float32)
    for _ in range(warmup):
        model(x)
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < max_runs):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times)), len(times)


@contextlib.contextmanager
def limited_threads(threads):
    """Run with `threads` Numba threads and (via threadpoolctl, which scikit-learn brings) as many
    BLAS threads; restores both afterwards.

    Why 1 by default: the result is then the same run after run on one machine (the thread count
    changes the order of floating-point sums, and with it a test image's class now and then), and it
    does not depend on the other core being free. Two threads bought nothing measurable on the
    shared development machine (26 s of training either way).
    """
    from npmobilenet.config import get_num_threads, set_num_threads

    previous = get_num_threads()
    set_num_threads(min(threads, numba_thread_limit()))
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            yield
        else:
            with threadpool_limits(threads, user_api="blas"):
                yield
    finally:
        set_num_threads(previous)


def numba_thread_limit():
    import numba

    return numba.config.NUMBA_NUM_THREADS


def _cost_summary(model, resolution):
    try:
        from npmobilenet.analysis.summary import summarize
    except ImportError:
        params = model.num_parameters()
        return f"{params:,} parameters (per-layer summary unavailable: npmobilenet.analysis.summary missing)"
    return summarize(model, resolution).format_table()


def run_demo(
    width=DEFAULTS["width"],
    resolution=DEFAULTS["resolution"],
    epochs=DEFAULTS["epochs"],
    out=".",
    seed=DEFAULTS["seed"],
    quick=False,
    batch_size=DEFAULTS["batch_size"],
    lr=DEFAULTS["lr"],
    label_smoothing=DEFAULTS["label_smoothing"],
    shift=DEFAULTS["shift"],
    progress="auto",
    summary=True,
    stream=None,
    threads=1,
):
    """Train, save, reload, evaluate, summarise, time. Returns a dict of the measured results.

    `quick=True` trains one epoch on 256 images (for tests); the rest of the pipeline is the same.
    `threads`: Numba and BLAS threads for the run (see `limited_threads`).
    """
    with limited_threads(threads):
        return _run_demo(width, resolution, epochs, out, seed, quick, batch_size, lr, label_smoothing, shift,
                         progress, summary, stream, threads)


def _run_demo(width, resolution, epochs, out, seed, quick, batch_size, lr, label_smoothing, shift, progress,
              summary, stream, threads):
    import npmobilenet
    from npmobilenet.training import augment
    from npmobilenet.io.checkpoint import load
    from npmobilenet.training.data import load_digits
    from npmobilenet.training.evaluation import evaluate, format_confusion
    from npmobilenet.training.loop import train
    from npmobilenet.training.optim import AdamW
    from npmobilenet.training.schedule import CosineLR

    stream = stream if stream is not None else sys.stdout

    def say(text=""):
        print(text, file=stream, flush=True)

    wall_start = time.perf_counter()
    train_set, test_set = load_digits(resolution, test_fraction=0.2, seed=SPLIT_SEED)
    if quick:
        epochs = QUICK["epochs"]
        train_set = train_set.subset(np.arange(QUICK["train_images"]))
    mean, std = augment.channel_stats(train_set.images)
    normalize = augment.Normalize(mean, std)
    steps = [augment.RandomCrop(resolution, shift)] if shift else []
    transform = augment.Compose(steps + [normalize])

    model = npmobilenet.build(DEFAULTS["arch"], width=width, num_classes=10, seed=seed)
    optimizer = AdamW(model.named_parameters(), lr=lr, weight_decay=DEFAULTS["weight_decay"])
    steps_per_epoch = len(train_set) // batch_size
    schedule = CosineLR.from_epochs(lr, epochs, steps_per_epoch, min(DEFAULTS["warmup_epochs"], epochs - 1))

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"mobilenet_v2_{width:g}_digits.npz")
    say(f"npmobilenet demo: MobileNetV2 width {width:g} at {resolution}x{resolution} on scikit-learn's digits")
    say(
        f"  data: {len(train_set)} training / {len(test_set)} test images (8x8 scans upsampled to "
        f"{resolution}x{resolution}; stratified 20% test split, seed {SPLIT_SEED})"
    )
    say(f"  model: {model.num_parameters():,} parameters; optimizer: {optimizer!r}; schedule: {schedule!r}")
    say(
        f"  batch {batch_size}, {epochs} epochs, label smoothing {label_smoothing}, random shift +-{shift} px, "
        f"seed {seed}, {threads} thread{'s' if threads > 1 else ''}"
    )
    say()
    train_start = time.perf_counter()
    history = train(
        model, train_set, None, epochs, optimizer, schedule,
        batch_size=batch_size, seed=seed, label_smoothing=label_smoothing, transform=transform,
        eval_transform=normalize, checkpoint=path, progress=progress,
        checkpoint_meta={"resolution": resolution, "mean": mean.tolist(), "std": std.tolist(),
                         "data": "digits", "split_seed": SPLIT_SEED},
    )
    train_seconds = time.perf_counter() - train_start

    reloaded = load(path)  # rebuilt from the file's config, in eval mode
    result = evaluate(reloaded, test_set, transform=normalize)
    say()
    say(f"saved {path} ({os.path.getsize(path) / 1e6:.2f} MB); reloaded it, in eval mode:")
    say(
        f"  test accuracy {100 * result['top1']:.2f}% ({int(np.trace(result['confusion']))}/{result['count']}), "
        f"top-5 {100 * result['top5']:.2f}%, loss {result['loss']:.4f}"
    )
    say(format_confusion(result["confusion"], test_set.classes))
    if summary:
        say()
        say(_cost_summary(reloaded, resolution))

    latency = {}
    runners = [("eval-mode model", reloaded)]
    try:  # the inference copy: batch norm folded, conv + bias + activation in one kernel
        runners.append(("fused (model.fuse())", reloaded.fuse(threads=threads)))
    except (AttributeError, ImportError, RuntimeError, TypeError, ValueError) as exc:
        say(f"(fused inference unavailable: {exc})")
    say()
    for label, runner in runners:
        for batch in (1, 64):
            seconds, runs = measure_latency(runner, resolution, batch, seconds=0.3 if quick else 1.0)
            latency[(label, batch)] = seconds
            say(
                f"inference, {label:<21} batch {batch:>2}: {1000 * seconds / batch:7.3f} ms per image, "
                f"{batch / seconds:8.0f} images/s (median of {runs} runs after warm-up)"
            )
    wall = time.perf_counter() - wall_start
    met = result["top1"] >= TARGET_ACCURACY
    say()
    say(
        f"test accuracy {100 * result['top1']:.2f}% (target {100 * TARGET_ACCURACY:.0f}%: "
        f"{'met' if met else 'NOT met' + (' (expected with --quick)' if quick else '')}); "
        f"training {train_seconds:.1f} s, total {wall:.1f} s"
    )
    return {
        "accuracy": result["top1"],
        "top5": result["top5"],
        "confusion": result["confusion"],
        "history": history,
        "checkpoint": path,
        "train_seconds": train_seconds,
        "wall_seconds": wall,
        "latency": latency,
        "target_met": met,
    }
