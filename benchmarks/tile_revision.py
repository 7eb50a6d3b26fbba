"""A register tile against the same module at another git revision, inside whole runs.

    python benchmarks/tile_revision.py REV [ARCH ...] [--kernel product|depthwise] [--threads 1] [--rounds 12]
    python benchmarks/tile_revision.py REV [ARCH ...] --kernel depthwise --alone [--rounds 12]

Loads the tile as it was at git revision REV into a module of its own: `--kernel product`, this
CPU's `product_span` (`npmobilenet/ops/matmul_avx2.py`, or `matmul_avx512.py` with AVX-512);
`--kernel depthwise`, the depthwise register tile's blocks (`ops/depthwise_avx512.py`: a row's
3x3 and 5x5 blocks). It builds two fused models of each architecture (random weights, 224x224,
batch 1) whose op tables differ only in the addresses of those functions (the table's
PRODUCT_SPAN slot, which every pointwise layer, standard convolution and linear layer calls; or
BLOCKS_3X3 and BLOCKS_5X5), and which model holds which revision swapped every two rounds (two
instances of one model differ by a few percent, where their memory falls). Both must give the
same logits (so `--kernel depthwise` only compares revisions that compute the same bits). Then,
in one process, rounds of one block of traced runs of each revision in turn
(`Program.trace_records`), order alternating: per layer group, the median over
rounds of each one's computing time (ms per run), and their ratio (below 1: this checkout's tile
is faster). The groups: for the product, layers whose output channels are a multiple of 16 and
those that are not (a last partial sliver); for depthwise, the 3x3 and the 5x5 layers (an
expansion joined to its 3x3 layer counted with the 3x3).

`--alone` (depthwise only) times instead each depthwise layer shape of the models alone
(`compare_alone`: the layer's rows of one image, 64-byte-aligned arrays, the revisions in
alternating rounds): the tile's own speed, without the rest of a run's memory traffic.
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_revision(revision, kernel):
    """The module of `kernel` (this CPU's product, or the depthwise tile) as it was at `revision`,
    imported under a name of its own, from a file named by the commit (so that Numba's cache of a
    revision is found again, not written anew for a new temporary path at every run)."""
    from npmobilenet.ops.vector16 import has_avx512

    product = "matmul_avx512.py" if has_avx512() else "matmul_avx2.py"
    path = "npmobilenet/ops/" + (product if kernel == "product" else "depthwise_avx512.py")
    git = ["git", "-C", ROOT]
    commit = subprocess.run(git + ["rev-parse", "--verify", f"{revision}^{{commit}}"], capture_output=True, text=True,
                            check=True).stdout.strip()
    source = subprocess.run(git + ["show", f"{commit}:{path}"], capture_output=True, text=True, check=True).stdout
    directory = os.path.join(tempfile.gettempdir(), "npmobilenet-tile-revisions")
    os.makedirs(directory, exist_ok=True)
    name = f"{kernel}_at_{commit[:12]}"
    file = os.path.join(directory, name + ".py")
    if not os.path.exists(file):
        with open(file + ".part", "w") as f:
            f.write(source)
        os.replace(file + ".part", file)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def compare(arch, addresses, threads, rounds, runs=10):
    """`addresses`: {slot of the op table: the revision's function there}."""
    import npmobilenet
    from npmobilenet.inference.atomics import cycle_rate
    from npmobilenet.inference.program import (CONV, DEPTHWISE, KH, KIND, LINEAR, POINTWISE, PRODUCT_SPAN, RUN, YC,
                                               traced_op_ms)

    rate = cycle_rate()
    model = npmobilenet.build(arch, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((1, 224, 224, 3)).astype(np.float32)
    # two fused models; each round gives one of them this checkout's functions and the other the
    # revision's, swapped from round to round, so that whatever differs between the two models'
    # memory (where their arenas and weights fall) falls on both revisions alike
    models = [model.fuse().set_threads(threads, adaptive=False) for _ in range(2)]
    outputs = [fused(x) for fused in models]
    programs = [fused.plan(x.shape).program for fused in models]
    ours = {slot: int(programs[0].addresses[slot]) for slot in addresses}

    def assign(revision_on):
        """The revision's functions in programs[revision_on]'s table, this checkout's in the other's."""
        for i, program in enumerate(programs):
            for slot in addresses:
                program.addresses[slot] = addresses[slot] if i == revision_on else ours[slot]

    assign(1)
    if not np.array_equal(models[0](x), models[1](x)) or not np.array_equal(outputs[0], models[1](x)):
        raise SystemExit(f"{arch}: the two revisions' tiles gave different logits")
    ops = programs[0].ops
    if PRODUCT_SPAN in addresses:
        products = np.isin(ops[:, KIND], (POINTWISE, CONV, LINEAR))
        groups = {"channels a multiple of 16": products & (ops[:, YC] % 16 == 0),
                  "channels not a multiple of 16": products & (ops[:, YC] % 16 != 0)}
    else:
        tiles = (ops[:, KIND] == DEPTHWISE) & (ops[:, RUN] == 0)
        groups = {"depthwise 3x3": tiles & (ops[:, KH] == 3), "depthwise 5x5": tiles & (ops[:, KH] == 5)}
    groups["every op"] = np.ones(len(ops), bool)
    times = {name: np.zeros((rounds, len(ops))) for name in ("here", "there")}
    for r in range(rounds):
        revision_on = (r // 2) % 2                  # the models swap revisions every two rounds
        assign(revision_on)
        order = ("here", "there") if r % 2 == 0 else ("there", "here")   # and run first in turn
        for name in order:
            program = programs[revision_on if name == "there" else 1 - revision_on]
            for _ in range(runs):
                times[name][r] += traced_op_ms(program.trace_records(threads), len(ops), rate) / runs
    assign(1)
    for group, chosen in groups.items():
        if not chosen.any():
            continue
        here_ms = np.median(times["here"][:, chosen].sum(axis=1))
        there_ms = np.median(times["there"][:, chosen].sum(axis=1))
        ratios = times["here"][:, chosen].sum(axis=1) / times["there"][:, chosen].sum(axis=1)
        print(f"{arch:24s} {group:32s} {int(chosen.sum()):4d} ops: this checkout {here_ms:7.3f} ms, "
              f"the revision {there_ms:7.3f} ms, ratio {here_ms / there_ms:.3f} "
              f"(per round: median {np.median(ratios):.3f}, quartiles {np.percentile(ratios, 25):.3f}-"
              f"{np.percentile(ratios, 75):.3f})", flush=True)


def _aligned(array):
    """A copy of `array` starting on a 64-byte boundary, as the op table's arena and parameters
    (`plan.aligned_empty`: a cost of numpy's own alignment that whole runs do not have)."""
    from npmobilenet.inference.plan import aligned_empty

    copy = aligned_empty(array.size).reshape(array.shape)
    copy[...] = array
    return copy


def compare_alone(archs, module, rounds, act=2):
    """Each depthwise layer shape of `archs` that the register tile takes, alone, on one thread:
    every row of one image (`depthwise_steps_3x3` / `_5x5`: border pixels by clamped taps, the
    rest in the tile's blocks), with this checkout's blocks and with the revision's, in alternating
    rounds, on 64-byte-aligned arrays (ReLU6). The same bits are checked first."""
    import npmobilenet
    from numba import njit
    from npmobilenet.inference.program import DEPTHWISE, KH, KIND, PL, PT, SH, SW, XC, XH, XW, YH, YW
    from npmobilenet.ops import depthwise_avx512 as here
    from npmobilenet.ops.depthwise import steps_per_image

    @njit
    def run3(x, w, b, sums, steps, sh, sw, pt, pl, act, borders, blocks, y, reps):
        for _ in range(reps):
            here.depthwise_steps_3x3(x, w, 3, 3, b, act, sums, sh, sw, pt, pl, 1, 1, y, 0, steps, borders, blocks)

    @njit
    def run5(x, w, b, sums, steps, sh, sw, pt, pl, act, padded, borders, blocks, taps, y, reps):
        for _ in range(reps):
            here.depthwise_steps_5x5(x, w, 5, 5, b, act, sums, sh, sw, pt, pl, 1, 1, y, 0, steps, padded, borders,
                                     blocks, taps)

    shapes = set()
    x0 = np.zeros((1, 224, 224, 3), np.float32)
    for arch in archs:
        fused = npmobilenet.build(arch, seed=0).eval().fuse(threads=1)
        fused(x0)
        for op in fused.plan(x0.shape).program.ops:
            if op[KIND] == DEPTHWISE and here.takes((op[KH],) * 2, (op[SH], op[SW]), (1, 1)):
                shapes.add(tuple(int(op[i]) for i in (KH, XH, XW, XC, YH, YW, SH, SW, PT, PL)))
    borders = here.BORDERS.address()
    blocks = {3: (here.BLOCKS_3X3.address(), module.BLOCKS_3X3.address()), 5: (here.BLOCKS.address(), module.BLOCKS.address())}
    rng = np.random.default_rng(0)
    cases = []
    for k, h, w, c, oh, ow, sh, sw, pt, pl in sorted(shapes):
        x = _aligned(rng.standard_normal((1, h, w, c)).astype(np.float32))
        weight = _aligned(rng.standard_normal((k * k, c)).astype(np.float32))
        bias = _aligned(rng.standard_normal(c).astype(np.float32))
        ys = [_aligned(np.zeros((1, oh, ow, c), np.float32)) for _ in range(2)]
        sums = np.zeros((0, oh, c), np.float32)
        steps = steps_per_image(oh, k, k, sh, 1)[0]
        reps = int(2e7 / (oh * ow * c * k * k)) + 1
        # each revision's call but for its output and repetitions: (kernel, arguments)
        if k == 3:
            calls = [(run3, (x, weight, bias, sums, steps, sh, sw, pt, pl, act, borders, address)) for address in blocks[3]]
        else:
            padded = _aligned(np.zeros(here.workspace_elements(oh, ow, c, sh, sw, 1, 1), np.float32))
            calls = [(run5, (x, weight, bias, sums, steps, sh, sw, pt, pl, act, padded, borders, address, 0))
                     for address in blocks[5]]
        for (kernel, arguments), y in zip(calls, ys):
            kernel(*arguments, y, 1)
        if not np.array_equal(ys[0], ys[1]):
            raise SystemExit(f"{k}x{k} on {h}x{w}x{c} at stride {sh}: the two revisions' blocks gave different outputs")
        cases.append((f"{k}x{k} {h}x{w}x{c} stride {sh}", k, calls, ys[0], reps, np.zeros((rounds, 2))))
    for r in range(rounds):
        for name, k, calls, y, reps, times in cases:
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):
                kernel, arguments = calls[i]
                start = time.perf_counter()
                kernel(*arguments, y, reps)
                times[r, i] = (time.perf_counter() - start) / reps * 1e3
    for name, k, calls, y, reps, times in cases:
        ratios = times[:, 0] / times[:, 1]
        print(f"{name:30s} this checkout {np.median(times[:, 0]):7.4f} ms, the revision {np.median(times[:, 1]):7.4f} ms, "
              f"ratio {np.median(times[:, 0]) / np.median(times[:, 1]):.3f} (per round: median {np.median(ratios):.3f})")
    for k in (3, 5):
        chosen = [times for name, kk, calls, y, reps, times in cases if kk == k]
        if chosen:
            total = sum(chosen)
            print(f"every {k}x{k} shape, summed: ratio {np.median(total[:, 0]) / np.median(total[:, 1]):.3f} "
                  f"(per round: median {np.median(total[:, 0] / total[:, 1]):.3f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revision")
    parser.add_argument("archs", nargs="*", default=["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
                                                     "mobilenet_v4_conv_small"])
    parser.add_argument("--kernel", choices=("product", "depthwise"), default="product")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=12, help="a multiple of 4 (default 12)")
    parser.add_argument("--alone", action="store_true",
                        help="--kernel depthwise: each depthwise layer shape alone (one image, one thread), not whole runs")
    args = parser.parse_args()
    if args.alone and args.kernel != "depthwise":
        parser.error("--alone times the depthwise tile's layers (give --kernel depthwise)")
    if args.rounds < 4 or args.rounds % 4:
        parser.error(f"--rounds must be a positive multiple of 4 (each revision on each model as often, "
                     f"and first as often), got {args.rounds}")
    from npmobilenet.inference.program import BLOCKS_3X3, BLOCKS_5X5, PRODUCT_SPAN
    from npmobilenet.ops import register_tile
    from npmobilenet.ops.indirect import CompiledCall

    module = load_revision(args.revision, args.kernel)
    if args.alone:
        print(f"depthwise tile's layers alone: this checkout against {args.revision}, 1 thread, {args.rounds} rounds, "
              "ms per image")
        compare_alone(args.archs, module, args.rounds)
        return
    if args.kernel == "product":
        addresses = {PRODUCT_SPAN: CompiledCall(module.product_span, register_tile.SPAN.argtypes).address()}
    else:
        addresses = {BLOCKS_3X3: module.BLOCKS_3X3.address(), BLOCKS_5X5: module.BLOCKS.address()}
    print(f"{args.kernel} tile: this checkout against {args.revision}, {args.threads} thread(s), {args.rounds} rounds, "
          "traced computing time per run")
    for arch in args.archs:
        compare(arch, addresses, args.threads, args.rounds)


if __name__ == "__main__":
    main()
