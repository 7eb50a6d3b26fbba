"""Time one training step (forward + backward) of a model: the cost `npmobilenet train` pays per batch.

    python benchmarks/training_step.py mobilenet_v2 --width 0.35 --resolution 32 --batch 64
    OMP_WAIT_POLICY=active python benchmarks/training_step.py ...    # OpenMP workers spinning
    python benchmarks/training_step.py mobilenet_v2 --batch 32 --threads 2 --torch   # beside PyTorch

Prints the median of the timed steps after two warm-up steps (compilation excluded), with the
thread count and the OpenMP wait settings it ran under. A step is the forward pass in training
mode (batch statistics) and the backward pass from d(logits) = 1, every parameter's gradient
computed. `--torch` also times torchvision's same architecture (same width, 10 classes; NCHW and
channels-last) on the same thread count, the same step (gradients reset to None first, as ours
are written afresh), in alternating blocks of steps in one process, and prints the ratios
(run it with the Python that has PyTorch).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import npmobilenet  # noqa: E402
from npmobilenet import config  # noqa: E402
from npmobilenet.inference.bench import blocked_times  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", choices=npmobilenet.ARCHS)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--torch", action="store_true", help="also torchvision's model in PyTorch, side by side")
    args = parser.parse_args(argv)
    if args.threads:
        config.set_num_threads(args.threads)
    model = npmobilenet.build(args.arch, width=args.width, num_classes=10)
    x = np.random.default_rng(0).standard_normal((args.batch, args.resolution, args.resolution, 3)).astype(np.float32)

    def ours():
        logits = model(x)
        model.backward(np.ones_like(logits))

    engines = {"npmobilenet": ours}
    if args.torch:
        engines.update(_torch_steps(args.arch, args.width, x, config.get_num_threads()))
    # blocks of steps (two untimed first: compilation, warm caches), in rounds with a pause
    # between engines when PyTorch's idle threads could slow ours
    times = blocked_times(list(engines.items()), args.steps, rounds=3 if args.torch else 1,
                          pause=0.25 if args.torch else 0)
    ms = {name: 1e3 * float(np.median(t)) for name, t in times.items()}
    print(f"{args.arch} width {args.width} at {args.resolution}x{args.resolution}, batch {args.batch}, "
          f"{config.get_num_threads()} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}: "
          f"{ms['npmobilenet']:.1f} ms per step (median of {len(times['npmobilenet'])})")
    for name in engines:
        if name != "npmobilenet":
            print(f"  {name}: {ms[name]:.1f} ms per step; npmobilenet / {name} = {ms['npmobilenet'] / ms[name]:.2f}")
    return 0


def _torch_steps(arch, width, x_nhwc, threads):
    """{name: step} of torchvision's `arch` at `width` in PyTorch, NCHW and channels-last."""
    import torch
    import torchvision

    torch.set_num_threads(threads)
    builders = {"mobilenet_v2": torchvision.models.mobilenet_v2, "mobilenet_v3_large": torchvision.models.mobilenet_v3_large,
                "mobilenet_v3_small": torchvision.models.mobilenet_v3_small}
    if arch not in builders:
        raise SystemExit(f"--torch: torchvision has no {arch}; one of {sorted(builders)}")
    steps = {}
    for name, memory_format in (("torch", torch.contiguous_format), ("torch channels-last", torch.channels_last)):
        net = builders[arch](width_mult=width, num_classes=10).train().to(memory_format=memory_format)
        images = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))).contiguous(memory_format=memory_format)

        def step(net=net, images=images):
            net.zero_grad(set_to_none=True)
            logits = net(images)
            logits.backward(torch.ones_like(logits))

        steps[name] = step
    return steps

if __name__ == "__main__":
    sys.exit(main())
