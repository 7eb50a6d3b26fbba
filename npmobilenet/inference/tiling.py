"""How fused inference cuts each layer into tiles: shapes only, never the thread count.

A tile is computed by the same instructions whichever thread takes it, so with tiles that depend
on shapes alone, outputs are bitwise identical for every thread count (see `program.py`). The
convolution tiles' own rules live beside them: `ops.depthwise.steps_per_image` (two output
rows) and `ops.conv.tile_pixels` (a block of output pixels); here are the matrix products'.
"""
import math


def pointwise_tiles(rows, in_channels, out_channels):
    """(rows, columns) per output tile of a pointwise convolution of `rows` = N*H*W rows.

    Measured on this machine (benchmarks/inference.py --tiles): SGEMM keeps its speed on tiles
    of 64-128 rows and loses a quarter of it at 13-25 rows; so large layers are cut into
    128-row tiles (their input and output rows stay in L2 for the epilogue), and small ones
    (the 14x14 and 7x7 stages at batch 1: 49-196 rows) into two tiles: two column halves when
    there are at least 128 output channels, else two row halves, so both cores have work.
    """
    if rows >= 512:
        return 128, out_channels
    if out_channels >= 128:
        return rows, math.ceil(out_channels / 2 / 16) * 16
    return max(1, math.ceil(rows / 2)), out_channels


def pointwise_tile_count(rows, in_channels, out_channels):
    """How many tiles `pointwise_tiles` makes: (row tiles, column tiles)."""
    tile_rows, tile_cols = pointwise_tiles(rows, in_channels, out_channels)
    return -(-rows // tile_rows), -(-out_channels // tile_cols)


def linear_block_cols(out_features):
    """Columns per block of the classifier: about 4 blocks, multiples of 16 (SGEMM's panel width)."""
    return max(16, min(out_features, math.ceil(out_features / 4 / 16) * 16))


def resize_tile_rows(out_width, channels):
    """Output rows per tile of a bilinear resize: about 16k outputs (a few microseconds of work,
    well above a tile's bookkeeping), at least one row."""
    return max(1, 16384 // max(1, out_width * channels))
