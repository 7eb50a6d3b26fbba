"""Compression on the digits task: accuracy, MACs, size and latency of every compressed model.

One table: the float model (and its fused inference copy), int8 per-channel and per-tensor (and
the outlier-robust calibrations), channel pruning at 25/50/75% of expansion channels (fine-tuned),
global magnitude pruning (fine-tuned), truncated-SVD factorisation (before and after
fine-tuning). Then a cross-check against ONNX Runtime's static int8 quantization (QDQ, per-channel,
min/max, the same calibration images): top-1 of each int8 model and how often they agree with
each other and with float. With matplotlib, `--plot FILE` draws accuracy against MACs.

    python benchmarks/compression.py                       # the fixture model, ~10 min
    python benchmarks/compression.py --quick               # no fine-tuning, fewer repeats
    python benchmarks/compression.py --checkpoint CKPT --finetune-epochs 3 --markdown

Latency is the median wall time of one forward pass at batch 1 and per image at batch 64
(`--threads` Numba/BLAS threads), after a warm-up: float models (pruned and factorised included)
are timed as `model.fuse()` runs them (BN folded, fused kernels), int8 models on the integer
kernels. Size is the checkpoint file in bytes.
"""
import argparse
import copy
import os
import sys
import tempfile
import time


def parse_args(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=os.path.join(here, "..", "tests", "fixtures", "compression", "digits_v2_w035.npz"))
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="no fine-tuning, 5 repeats")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime cross-check")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--plot", default=None, help="write accuracy vs MACs to this image (needs matplotlib)")
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from npmobilenet.analysis.summary import summarize  # noqa: E402
from npmobilenet.compression import factorize, prune  # noqa: E402
from npmobilenet.io import checkpoint
from npmobilenet.compression.quantize import quantize  # noqa: E402
from npmobilenet.training import AdamW, CosineLR, load_digits, save, train  # noqa: E402
from npmobilenet.training.augment import preprocessing  # noqa: E402


def top1(model, images, labels, batch=120):
    logits = np.concatenate([model(images[i : i + batch]) for i in range(0, len(images), batch)])
    return float((logits.argmax(1) == labels).mean()), logits.argmax(1)


def latency(model, images, repeats):
    """(ms at batch 1, ms per image at batch 64): medians after one warm-up call."""
    result = []
    for batch in (1, 64):
        x = np.ascontiguousarray(images[:batch])
        model(x)
        times = []
        for _ in range(repeats if batch == 1 else max(3, repeats // 4)):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
        result.append(1000 * float(np.median(times)) / batch)
    return result


def finetune(model, train_set, epochs, lr, masks=None, transform=None):
    """`epochs` epochs of AdamW with cosine decay (after batch-norm recalibration by the caller)."""
    if epochs <= 0:
        return model.eval()
    optimizer = AdamW(model.named_parameters(), lr=lr, weight_decay=0.01)
    if masks is not None:
        optimizer = prune.MaskedOptimizer(optimizer, model, masks)
    steps = len(train_set) // 64
    train(model, train_set, epochs=epochs, optimizer=optimizer, schedule=CosineLR.from_epochs(lr, epochs, steps),
          batch_size=64, seed=0, progress="none", transform=transform)
    return model.eval()


def file_size(obj, tmp):
    path = os.path.join(tmp, "m.npz")
    if hasattr(obj, "save") and not hasattr(obj, "backward"):
        obj.save(path)
    else:
        save(obj, path)
    return os.path.getsize(path)


def onnx_cross_check(model, qmodel, calibration, test_images, ours_pred, float_pred, labels, tmp):
    """ONNX Runtime static QDQ int8 (per-channel, min/max) of the same float model and images; and
    our int8 model exported in QDQ form, run by ONNX Runtime's integer kernels."""
    from npmobilenet.compression.peer import onnxruntime_static_int8
    from npmobilenet.io.onnx_export import export_onnx, run_onnx

    ort_pred = onnxruntime_static_int8(model, calibration, tmp)(test_images).argmax(1)
    path = export_onnx(qmodel, os.path.join(tmp, "ours_int8_qdq.onnx"))
    ours_logits, exported = qmodel(test_images), run_onnx(path, test_images.transpose(0, 3, 1, 2))
    return dict(ort_top1=float((ort_pred == labels).mean()), agree_ours_ort=float((ort_pred == ours_pred).mean()),
                agree_ort_float=float((ort_pred == float_pred).mean()),
                agree_ours_float=float((ours_pred == float_pred).mean()),
                agree_ours_exported=float((exported.argmax(1) == ours_pred).mean()),
                exported_steps=float(np.abs(exported - ours_logits).max() / qmodel.tensors[qmodel.output][0]))


def main(args):
    if args.threads:
        from npmobilenet.config import set_num_threads

        set_num_threads(args.threads)
    epochs = 0 if args.quick else args.finetune_epochs
    repeats = 5 if args.quick else args.repeats
    ckpt = checkpoint.load_checkpoint(args.checkpoint)
    model = ckpt.model.eval()
    resolution = ckpt.meta.get("resolution", 32)
    train_set, test_set = load_digits(resolution, 0.2, ckpt.meta.get("split_seed", 0))
    # the checkpoint's own preprocessing (e.g. the demo's mean/std normalisation), as `eval` applies it
    prep = preprocessing(None, ckpt.meta.get("mean"), ckpt.meta.get("std"))
    transform = lambda x, rng=None: prep(x, rng)  # noqa: E731
    images, labels = transform(test_set.images), test_set.labels
    rng = np.random.default_rng(0)
    calibration = transform(train_set.images[np.sort(rng.permutation(len(train_set))[: args.calibration_images])])

    rows = []
    tmp = tempfile.mkdtemp(prefix="npmobilenet-compression-")
    recalibration = transform(train_set.images[np.sort(np.random.default_rng(1).permutation(len(train_set))[:512])])

    def recalibrate(m):
        """Accuracy as compressed, then after batch-norm recalibration (the note of its row)."""
        raw, _ = top1(m, images, labels)
        prune.recalibrate_batch_norm(m, recalibration)
        recalibrated, _ = top1(m, images, labels)
        return f"as cut {100 * raw:.1f}%, BN recalibrated {100 * recalibrated:.1f}%"

    def add(name, m, macs, params, size, note=""):
        acc, pred = top1(m, images, labels)
        timed = m
        if hasattr(m, "fuse"):  # float models are timed as the inference engine runs them: fused
            try:
                timed = m.fuse()
            except (ImportError, AttributeError, NotImplementedError, TypeError, ValueError) as exc:
                note = (note + "; " if note else "") + f"timed unfused ({type(exc).__name__})"
        ms1, ms64 = latency(timed, images, repeats)
        rows.append(dict(name=name, top1=acc, macs=macs, params=params, size=size, ms1=ms1, ms64=ms64, note=note))
        print(f"  measured {name}: top-1 {100 * acc:.2f}%", file=sys.stderr, flush=True)
        return pred

    base = summarize(model, resolution)
    float_size = file_size(model, tmp)
    float_pred = add("float32", model, base.macs, base.params, float_size, "timed fused (model.fuse())")

    quantized = {}
    for label, per_channel, method in [("int8 per-channel", True, "minmax"), ("int8 per-tensor", False, "minmax"),
                                       ("int8 per-channel, percentile", True, "percentile"),
                                       ("int8 per-channel, MSE", True, "mse")]:
        q = quantize(model, calibration, per_channel=per_channel, method=method)
        quantized[label] = q
        quantized[label + "/pred"] = add(label, q, q.macs((1, resolution, resolution, 3)), q.num_parameters(),
                                         file_size(q, tmp), f"{args.calibration_images} calibration images")

    for fraction in (0.25, 0.5, 0.75):
        pruned = prune.prune_channels(model, fraction, "bn")
        before = recalibrate(pruned)
        finetune(pruned, train_set, epochs, args.lr, transform=transform)
        cost = summarize(pruned, resolution)
        add(f"pruned {fraction:.0%} expansion", pruned, cost.macs, cost.params, file_size(pruned, tmp), before)

    for sparsity in (0.5, 0.75):
        sparse = copy.deepcopy(model)
        masks = prune.magnitude_prune(sparse, sparsity, "normalized")
        before = recalibrate(sparse)
        finetune(sparse, train_set, epochs, args.lr, masks, transform)
        add(f"magnitude {sparsity:.0%} sparse", sparse, base.macs, base.params, file_size(sparse, tmp),
            "threshold on abs(w)/RMS(layer); dense storage, no speed-up; " + before)

    factored, report = factorize.factorize(model, energy=0.9)
    cost = summarize(factored, resolution)
    before = recalibrate(factored)
    finetune(factored, train_set, epochs, args.lr, transform=transform)
    done = sum(1 for r in report.values() if r[2] is not None)
    add("SVD factorised (energy 0.9)", factored, cost.macs, cost.params, file_size(factored, tmp),
        f"{done} layers; " + before)

    cross = None
    if not args.no_onnx:
        try:
            cross = onnx_cross_check(model, quantized["int8 per-channel"], calibration, images,
                                     quantized["int8 per-channel/pred"], float_pred, labels, tmp)
        except ImportError as exc:
            print(f"  (no ONNX Runtime cross-check: {exc})", file=sys.stderr)

    print_table(rows, args, ckpt, epochs, len(labels))
    if cross:
        print()
        print(f"ONNX Runtime {__import__('onnxruntime').__version__} static int8 (QDQ, per-channel, MinMax, same "
              f"{args.calibration_images} calibration images) on the {len(labels)} test images:")
        print(f"  ORT int8 top-1 {100 * cross['ort_top1']:.2f}%   ours int8 top-1 "
              f"{100 * rows[[r['name'] for r in rows].index('int8 per-channel')]['top1']:.2f}%")
        print(f"  agreement ours-int8 vs ORT-int8 {100 * cross['agree_ours_ort']:.2f}%,  ours-int8 vs float "
              f"{100 * cross['agree_ours_float']:.2f}%,  ORT-int8 vs float {100 * cross['agree_ort_float']:.2f}%")
        print(f"  ours int8 exported in QDQ form, run by ONNX Runtime: top-1 agrees with ours on "
              f"{100 * cross['agree_ours_exported']:.2f}%, logits differ by at most {cross['exported_steps']:.0f} "
              f"int8 output steps")
    if args.plot:
        plot(rows, args.plot)


def print_table(rows, args, ckpt, epochs, count):
    c = ckpt.config
    print(f"\n{c['arch']} width {c['width']} on digits ({count} test images), fine-tuning {epochs} epochs, "
          f"{args.threads or 'all'} threads")
    head = ["model", "top-1 %", "MACs", "params", "file bytes", "ms @1", "ms/img @64", "note"]
    lines = [[r["name"], f"{100 * r['top1']:.2f}", f"{r['macs']:,}", f"{r['params']:,}", f"{r['size']:,}",
              f"{r['ms1']:.2f}", f"{r['ms64']:.3f}", r["note"]] for r in rows]
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for line in lines:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for line in lines:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)))


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (no plot: matplotlib is not installed)", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["macs"] / 1e6, 100 * r["top1"])
        ax.annotate(r["name"], (r["macs"] / 1e6, 100 * r["top1"]), fontsize=7)
    ax.set_xlabel("MMACs per image")
    ax.set_ylabel("top-1 %")
    ax.set_title("Compression on digits")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"  wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main(ARGS)
