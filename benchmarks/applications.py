"""LR-ASPP and SSDLite320 (full width, random weights) at batch 1: npmobilenet's fused inference
(`model.fuse()`) and its unfused eval-mode forward pass beside ONNX Runtime running the same model
exported through the lowered graph.

    python benchmarks/applications.py --threads 1,2 --repeat 10

ONNX Runtime gets the same thread count (intra-op; inter-op 1) and the graph `export_onnx` writes
(batch norm folded). Before timing, the engines' outputs are checked to agree within 1e-4 of the
largest value. SSDLite's post-processing (softmax, decoding, per-class NMS as a Numba kernel;
outside the ONNX graph for both engines) is timed on its own. `npmobilenet bench NAME` times the
fused models beside ONNX Runtime and PyTorch too, in alternating blocks.

Times are medians in ms over `--repeat` calls after two untimed ones. On a shared machine,
run it alone.
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np

MODELS = {"lraspp_mobilenet_v3_large": (520, 520), "ssdlite320_mobilenet_v3_large": (320, 320)}


def median_ms(fn, repeat):
    fn()
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def onnxruntime_session(model, threads, workdir):
    import onnxruntime as ort

    from npmobilenet.io.onnx_export import export_onnx

    path = export_onnx(model, os.path.join(workdir, model.config["arch"] + ".onnx"), input_layout="nhwc")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def check_agreement(model, session, x, ours):
    """ONNX Runtime's outputs against ours (a forward pass's): the largest difference relative to
    the largest output value (AssertionError above 1e-4)."""
    names = [o.name for o in session.get_outputs()]
    theirs = session.run(names, {"input": x})
    if isinstance(ours, tuple):                  # SSDLite: its twelve head maps, reshaped outside the graph
        theirs = model.head_outputs([m.transpose(0, 2, 3, 1) for m in theirs])
    else:
        ours, theirs = (ours,), (theirs[0].transpose(0, 2, 3, 1),)
    error = max(float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(ours, theirs))
    assert error <= 1e-4, f"{model.config['arch']}: ONNX Runtime differs from npmobilenet by {error:.1e}"
    return error


def measure(arch, threads, repeat, workdir):
    import npmobilenet
    from npmobilenet import config
    from npmobilenet.detection.postprocess import postprocess_detections

    config.set_num_threads(threads)
    model = npmobilenet.build(arch).eval()
    x = np.random.default_rng(0).standard_normal((1, *MODELS[arch], 3)).astype(np.float32)
    fused = model.fuse(threads)
    session = onnxruntime_session(model, threads, workdir)
    error = max(check_agreement(model, session, x, model(x)), check_agreement(model, session, x, fused(x)))
    names = [o.name for o in session.get_outputs()]
    row = {"arch": arch, "input": MODELS[arch], "threads": threads, "agreement": error,
           "fused_ms": median_ms(lambda: fused(x), repeat),
           "unfused_ms": median_ms(lambda: model(x), repeat),
           "onnxruntime_ms": median_ms(lambda: session.run(names, {"input": x}), repeat)}
    if arch.startswith("ssdlite"):
        cls_logits, bbox_regression = model(x)
        anchors = model.anchors_for(x.shape[1:3])
        row["postprocess_ms"] = median_ms(
            lambda: postprocess_detections(cls_logits, bbox_regression, anchors, x.shape[1:3]), repeat)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for arch in args.models.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                r = measure(arch, threads, args.repeat, workdir)
                extra = f", post-processing {r['postprocess_ms']:.1f} ms" if "postprocess_ms" in r else ""
                print(f"{arch} {r['input'][0]}x{r['input'][1]}, {threads} thread(s): npmobilenet fused "
                      f"{r['fused_ms']:.1f} ms (unfused {r['unfused_ms']:.1f} ms), ONNX Runtime "
                      f"{r['onnxruntime_ms']:.1f} ms, fused / ONNX Runtime {r['fused_ms'] / r['onnxruntime_ms']:.2f}"
                      f"{extra} (outputs agree to {r['agreement']:.1e})", flush=True)


if __name__ == "__main__":
    main()
