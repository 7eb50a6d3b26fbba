"""Time one training step (forward + backward) of a model: the cost `npmobilenet train` pays per batch.

    python benchmarks/training_step.py mobilenet_v2 --width 0.35 --resolution 32 --batch 64
    OMP_WAIT_POLICY=active python benchmarks/training_step.py ...    # OpenMP workers spinning

Prints the median of the timed steps after two warm-up steps (compilation excluded), with the
thread count and the OpenMP wait settings it ran under.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import npmobilenet  # noqa: E402
from npmobilenet import config  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", choices=npmobilenet.ARCHS)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        config.set_num_threads(args.threads)
    model = npmobilenet.build(args.arch, width=args.width, num_classes=10)
    x = np.random.default_rng(0).standard_normal((args.batch, args.resolution, args.resolution, 3)).astype(np.float32)
    times = []
    for _ in range(2 + args.steps):
        start = time.perf_counter()
        logits = model(x)
        model.backward(np.ones_like(logits))
        times.append(time.perf_counter() - start)
    print(f"{args.arch} width {args.width} at {args.resolution}x{args.resolution}, batch {args.batch}, "
          f"{config.get_num_threads()} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}: "
          f"{1e3 * np.median(times[2:]):.1f} ms per step (median of {args.steps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
