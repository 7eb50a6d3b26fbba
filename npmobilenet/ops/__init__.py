"""Stateless convolution kernels with hand-written backward passes.

Layouts: activations NHWC `(N, H, W, C)`; weights standard `(KH, KW, Cin, Cout)`, depthwise
`(KH, KW, C)`, pointwise `(Cin, Cout)`. Every function accepts float32 or float64 (x and w of one
dtype; the result has it too), any C-contiguous or strided array, `stride`/`dilation` as an int or
`(vertical, horizontal)` and `padding` as an int, `(ph, pw)` or `((top, bottom), (left, right))`.

    conv2d / conv2d_backward                      forward tile (stem taps, or gathered blocks x GEMM);
                                                  backward im2col (Numba) + GEMM (BLAS)
    depthwise_conv2d / depthwise_conv2d_backward  Numba loops, vectorised over channels
    pointwise_conv2d / pointwise_conv2d_backward  GEMM (BLAS)

Each convolution kind has one forward tile (`conv.conv_tile`, `depthwise.depthwise_tile`,
`pointwise.pointwise_tile`) with an epilogue (bias, activation, residual, SE; `epilogue.py`),
which training's forward, fused inference (`npmobilenet.inference`) and the exact int8 path
(`npmobilenet.compression.qkernels`) share; training's pointwise forward stays one np.matmul
(see pointwise.py). `blas.py` calls OpenBLAS's GEMM from inside Numba.

`reference` holds slow NumPy versions of all six and of batch norm (the float oracle),
`reference_int8` the int8 arithmetic (the integer oracle); neither shares code with a kernel. Kernels compile on first use
and are cached on disk; parallel builds run above `config.PARALLEL_MIN_MACS`, on
`get_num_threads()` threads.
"""
from npmobilenet.config import get_num_threads, set_num_threads
from npmobilenet.ops.conv import conv2d, conv2d_backward
from npmobilenet.ops.depthwise import depthwise_conv2d, depthwise_conv2d_backward
from npmobilenet.ops.pointwise import pointwise_conv2d, pointwise_conv2d_backward

__all__ = [
    "conv2d",
    "conv2d_backward",
    "depthwise_conv2d",
    "depthwise_conv2d_backward",
    "pointwise_conv2d",
    "pointwise_conv2d_backward",
    "get_num_threads",
    "set_num_threads",
]
