"""How fused inference cuts each layer into tiles: shapes only, never the thread count.

A tile is computed by the same instructions whichever thread takes it, so with tiles that depend
on shapes alone, outputs are bitwise identical for every thread count (see `program.py`). The
convolution tiles' own rules live beside them: `ops.depthwise.steps_per_image` (two output
rows) and `ops.conv.tile_pixels` (a block of output pixels); here are the matrix products'.
"""
import math

from npmobilenet.config import njit_inline


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


# An expansion and depthwise convolution run as one op when the expanded map of one image is
# three times the second-level cache (512 KiB a core on the Zen 3 machine), in bands whose expanded
# rows take three quarters of it; not where a band would compute more than a quarter of its
# expanded rows again (its neighbours' halo). Measured in the README (smaller maps and bands, and
# bands of half their rows again, were slower).
EXPANSION_MIN_BYTES = 3 << 19
BAND_BYTES = 3 << 17


def expansion_band_rows(in_height, in_width, channels, out_height, kernel, stride):
    """Output rows per tile of an inverted residual's expansion and its depthwise convolution run
    as one op (`layers.FusedExpansion`), whose expanded input is `in_height` x `in_width` x
    `channels` for a `kernel`-tall window at `stride`; 0: run them as two ops. A band of b output
    rows expands `band_input_rows(b, kernel, stride)` rows into a worker's workspace."""
    row_bytes = 4 * in_width * channels
    if in_height * row_bytes < EXPANSION_MIN_BYTES:
        return 0
    band = min(out_height, max(1, (BAND_BYTES // row_bytes - kernel) // stride + 1))
    if band_input_rows(band, kernel, stride) > 1.25 * band * stride:
        return 0
    return band


def band_input_rows(band, kernel, stride):
    """Rows of the expanded map that `band` output rows' windows reach (at most: fewer at the
    image's edges), what a worker's workspace block holds."""
    return (band - 1) * stride + kernel


@njit_inline
def expansion_band(t, band, out_height, in_height, kernel, stride, pad_top):
    """Band t of an expansion run with its depthwise convolution in bands of `band` output rows
    (`expansion_band_rows`), as `ops.depthwise.step_rows` numbers a depthwise layer's steps: (its
    image, first and last output rows, the first and last expanded rows its windows reach, and the
    padding above them: `pad_top` at the image's top, else 0). The op table's tile
    (`program._expansion_band`) and the layer's own kernel (`layers.FusedExpansion.call`, through
    `.py_func`) cut the bands by this one function."""
    bands = (out_height + band - 1) // band
    n = t // bands
    first = (t - n * bands) * band
    last = min(first + band, out_height)
    top = first * stride - pad_top                 # the band's first window's first row
    start, end = max(top, 0), min((last - 1) * stride - pad_top + kernel, in_height)
    return n, first, last, start, end, start - top
