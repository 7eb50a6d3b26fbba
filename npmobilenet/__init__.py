"""npmobilenet: MobileNet V1, V2 and V3 from scratch in NumPy and Numba."""
__version__ = "0.1.0"
