"""Fast CPU inference: `model.fuse()` folds batch norm, fuses each convolution with its bias,
activation, residual add and squeeze-and-excitation, and runs the network over a memory plan of
a few reused buffers as one table of tiled ops that the threads share (see fuse.py, kernels.py,
plan.py, program.py; `npmobilenet bench` measures it)."""
from npmobilenet.inference.fuse import FusedMobileNet, fold_batch_norm, fuse_model
from npmobilenet.inference.plan import MemoryPlan, planned_peak_bytes

__all__ = ["FusedMobileNet", "MemoryPlan", "fold_batch_norm", "fuse_model", "planned_peak_bytes"]
