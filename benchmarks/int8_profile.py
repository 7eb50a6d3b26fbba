"""Where an int8 model's time goes: milliseconds per op kind, and the Python overhead per op.

    python benchmarks/int8_profile.py [arch] [--batch 1] [--threads 1] [--repeat 20]

A random-weight model at 224x224, quantized per channel on a few random images, run op by op
(`op.evaluate`, as `QuantizedModel.run` does) in each mode (integer-only and on the float
kernels); each op timed alone, the median of `--repeat` calls. Kinds are the op kind and a
convolution's variant, kernel size and stride. The Python overhead per op is bounded above by
the whole run of the same model on a 32x32 input (kernels nearly free) divided by its ops.
Then the same, integer-only, in the op table the model runs (`qmodel.plan(shape).program`): each
row run alone (`Program.run(ops=(k, k + 1))`), per kind, and the whole table.
"""
import argparse
from collections import defaultdict

import numpy as np

from applications import median_ms  # benchmarks/ is on the path of a script run from it


def op_kind(op):
    if op.kind != "conv":
        return op.kind
    kh = op.weight.shape[0] if op.variant in ("standard", "depthwise") else 1
    stride = op.stride[0] if op.variant in ("standard", "depthwise") else 1
    return f"conv {op.variant}" + (f" {kh}x{kh}/s{stride}" if op.variant in ("standard", "depthwise") else "")


def profile(qmodel, xq, integer_only, repeat):
    qmodel.integer_only = integer_only
    env = qmodel.run(xq, record=True)
    zp = {name: z for name, (_, z) in qmodel.tensors.items()}
    per_kind, counts = defaultdict(float), defaultdict(int)
    for op in qmodel.ops:
        ms = median_ms(lambda: op.evaluate(env, zp, not integer_only), repeat)
        per_kind[op_kind(op)] += ms
        counts[op_kind(op)] += 1
    total = median_ms(lambda: qmodel.run(xq), repeat)
    return per_kind, counts, total


def table_kinds(program):
    """The op table's rows by kind (pointwise split into one pixel, K <= 32 and K > 32)."""
    from npmobilenet.compression import qprogram as qp

    names = {qp.PW_VNNI: "pointwise VNNI", qp.PW: "pointwise", qp.DEPTHWISE: "depthwise",
             qp.DEPTHWISE_VNNI: "depthwise VNNI", qp.IM2COL: "receptive-field gather", qp.LOOKUP: "lookup",
             qp.LOOKUP_VBMI: "lookup (VBMI)", qp.ADD: "add", qp.MEAN: "mean", qp.CHANNEL_SCALE: "channel scale",
             qp.PW_PAIRS: "pointwise pairs", qp.LOOKUP_AVX2: "lookup (AVX2)"}
    kinds = []
    for row in program.ops:
        kind = names[int(row[qp.KIND])]
        if row[qp.KIND] in (qp.PW_VNNI, qp.PW, qp.PW_PAIRS):
            x = qp.ARGS                                           # argument 0: x (P, Cin)
            kind += " (one pixel)" if row[x + 1] == 1 else (" K <= 32" if row[x + 2] <= 32 else " K > 32")
        kinds.append(kind)
    return kinds


def profile_table(qmodel, xq, threads, repeat):
    """ms per kind of the op table (the integer-only run's), each op run alone from the table
    (`Program.run(ops=(k, k + 1))`), and the whole table's run; None without a table."""
    qmodel.integer_only = True
    program = qmodel.plan(xq.shape).program
    if program is None:
        return None
    per_kind, counts = defaultdict(float), defaultdict(int)
    for k, kind in enumerate(table_kinds(program)):
        per_kind[kind] += median_ms(lambda: program.run(threads, ops=(k, k + 1)), repeat)
        counts[kind] += 1
    return per_kind, counts, median_ms(lambda: program.run(threads), repeat)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", nargs="?", default="mobilenet_v2")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)

    import npmobilenet
    from npmobilenet import config, quantize

    config.set_num_threads(args.threads)
    model = npmobilenet.build(args.arch, seed=0).eval()
    images = np.random.default_rng(0).uniform(-1, 1, (max(4, args.batch), 224, 224, 3)).astype(np.float32)
    qmodel = quantize(model, images[:4])
    xq = qmodel.quantize_input(images[:args.batch])
    tiny = qmodel.quantize_input(images[:args.batch, :32, :32])
    fused = model.fuse(threads=args.threads)
    float_ms = median_ms(lambda: fused(images[:args.batch]), args.repeat)
    print(f"{args.arch} 224, batch {args.batch}, {args.threads} thread(s), {len(qmodel.ops)} ops; "
          f"fused float32 {float_ms:.2f} ms")
    for integer_only in (True, False):
        per_kind, counts, total = profile(qmodel, xq, integer_only, args.repeat)
        qmodel.integer_only = integer_only
        tiny_ms = median_ms(lambda: qmodel.run(tiny), args.repeat)
        print(f"\nint8 {'integer-only' if integer_only else 'float kernels'}: whole run {total:.2f} ms "
              f"(sum of ops {sum(per_kind.values()):.2f}); at 32x32 {tiny_ms:.3f} ms = "
              f"{1e3 * tiny_ms / len(qmodel.ops):.1f} us per op (an upper bound on the overhead)")
        print("| op kind | ops | ms | share |")
        print("|---|---|---|---|")
        for kind, ms in sorted(per_kind.items(), key=lambda kv: -kv[1]):
            print(f"| {kind} | {counts[kind]} | {ms:.2f} | {100 * ms / total:.0f}% |")
    table = profile_table(qmodel, xq, args.threads, args.repeat)
    if table is not None:
        per_kind, counts, total = table
        print(f"\nint8 op table (integer-only), each op run alone from the table: whole table {total:.2f} ms "
              f"(sum of ops {sum(per_kind.values()):.2f})")
        print("| op table kind | ops | ms | share |")
        print("|---|---|---|---|")
        for kind, ms in sorted(per_kind.items(), key=lambda kv: -kv[1]):
            print(f"| {kind} | {counts[kind]} | {ms:.2f} | {100 * ms / total:.0f}% |")


if __name__ == "__main__":
    main()
