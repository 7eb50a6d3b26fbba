"""The peer int8 implementation: ONNX Runtime's static quantization of the same float model.

Used to cross-check npmobilenet's integer-only inference against an independent int8 engine
(QDQ format, per-channel int8 weights, int8 activations calibrated by min/max on the same
images). Needs the `onnx` extra.

On an x86 CPU without an int8 dot-product instruction (AVX-512 VNNI or AVX-VNNI), ONNX Runtime's
int8 kernels multiply with `vpmaddubsw`, whose 16-bit pair sums saturate for 8-bit weights; its
documentation's remedy is `reduce_range` (7-bit weights), which `onnxruntime_static_int8` then
uses (on the AMD EPYC Zen 3 machine, without it, its predictions of the digits test set agreed
with the float model's on 89% of the images).
"""
import os

import numpy as np

from npmobilenet.config import cpu_features
from npmobilenet.extras import require


def saturating_int8_cpu():
    """Whether ONNX Runtime's int8 kernels saturate on this CPU: x86 (AVX2) without VNNI."""
    features = cpu_features()
    return "avx2" in features and not ({"avx512vnni", "avxvnni"} & features)


def onnxruntime_static_int8(model, calibration_images, workdir, batch=32):
    """Export `model` to ONNX (NHWC input), quantize it with ONNX Runtime's `quantize_static`, and
    return `run(images) -> logits` on the int8 graph (one thread)."""
    ort = require("onnxruntime", "the ONNX Runtime int8 cross-check")
    quantization = require("onnxruntime.quantization", "the ONNX Runtime int8 cross-check")
    from npmobilenet.io.onnx_export import export_onnx

    fp32, int8 = os.path.join(workdir, "model.onnx"), os.path.join(workdir, "model.int8.onnx")
    export_onnx(model, fp32, input_layout="nhwc")
    calibration = np.ascontiguousarray(calibration_images, dtype=np.float32)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([calibration[i:i + batch] for i in range(0, len(calibration), batch)])

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"input": x}

    quantization.quantize_static(
        fp32, int8, Reader(), quant_format=quantization.QuantFormat.QDQ, per_channel=True,
        activation_type=quantization.QuantType.QInt8, weight_type=quantization.QuantType.QInt8,
        calibrate_method=quantization.CalibrationMethod.MinMax, reduce_range=saturating_int8_cpu(),
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(int8, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(images):
        images = np.ascontiguousarray(images, dtype=np.float32)
        return np.concatenate([session.run(None, {name: images[i:i + 128]})[0] for i in range(0, len(images), 128)])

    return run
