"""Depthwise convolution in int8 on AVX-512 VNNI: four taps of a kernel row per `vpdpbusd`.

A depthwise layer sums, per channel, KH x KW products (V1 paper, Eq. 3), so there is no input
channel axis for vpdpbusd's four-byte dot products to run over, as the pointwise kernel's does.
The four bytes are taken along a kernel row instead: lane c of the operand holds channel c of four
neighbouring input columns (`vnni.columns4`: four 16-byte loads, one byte permute), and the packed
weight word of lane c holds w[i, j..j+3, c]. One instruction then does 4 taps of 16 channels, where
the portable kernel (`qkernels._depthwise_int8_rows`) sign-extends, subtracts z_x, multiplies and
adds tap by tap.

vpdpbusd's bytes are unsigned, so the input is fed as x + 128, and, as in the pointwise kernel,

    sum_ij (x - z_x) w[i, j, c] = sum_ij (x + 128) w[i, j, c] - (128 + z_x) sum_ij w[i, j, c]

with the last term in the accumulators' start. Padding reads z_x (a 16-byte `pad`), so its taps
cancel exactly as the real value 0 does; the fourth byte of a 3-tap row, and bytes 5-7 of a 5-tap
row, meet zero weights. At stride 1 one operand serves two output pixels: the columns iw..iw+3 hold
the taps of the pixel at iw and, shifted by one, of the pixel at iw + 1, so the weights are packed
twice, as w[i, j..j+3] and as w[i, j-1..j+2] (`DELAYS`). Sums are int32 modulo 2^32 as everywhere,
so the accumulators equal the portable kernel's bit for bit; they are requantized by
`vnni.requantize16_layer`.

Narrow maps (a third or more of a row's pixels at the border: 5x5 kernels on 14x14 and 7x7 maps,
where no 8-column operand of a 7x7 map fits) copy each output row's input rows zero-point padded
first, so that every pixel reads its operands in place; elsewhere border pixels pick their
columns one by one (`vnni.columns4_padded`).

Layout: x (N, H, W, C) int8; the packed weight (KH, DELAYS * groups, C padded to 16) int32 words,
groups = ceil(KW / 4). Dilated kernels stay on the portable kernel.
"""
import numba
import numpy as np

from npmobilenet.compression import vnni
from npmobilenet.compression.vnni import (
    columns4, columns4_padded, dpbusd, load16, load64_int8, requantize16_layer, splat64, store16_int8,
    store64_int8,
)
from npmobilenet.config import njit_inline, njit_parallel, njit_serial
from npmobilenet.ops.depthwise_rows import _interior_columns

DELAYS = 2  # weight copies: for the operand's first output pixel, and for the pixel one column on


def applies(w, dilation):
    """Whether the VNNI depthwise kernel runs this layer: VNNI enabled and no dilation."""
    return vnni.vnni_enabled() and tuple(dilation) == (1, 1)


def pack(w, zx, bias, multiplier, shift, stride):
    """(pad, words, start, multipliers, shifts, left, pairs) of the kernel for w (KH, KW, C) int8, once
    per layer: z_x in 16 bytes; the weight words; padded to 16 channels the accumulators' start
    b - (128 + z_x) sum_ij w, the multipliers and shifts; `left`: some shift > 0; `pairs`: stride
    1 along the width and KW not a multiple of 4, so that one operand holds two pixels' taps."""
    kh, kw, channels = w.shape
    groups, width = -(-kw // vnni.GROUP), -(-channels // vnni.LANES) * vnni.LANES
    words = np.zeros((kh, DELAYS, groups, width, vnni.GROUP), np.int8)
    for delay in range(DELAYS):
        for g in range(groups):
            for t in range(vnni.GROUP):
                j = vnni.GROUP * g + t - delay     # the tap of byte t for a pixel `delay` columns on
                if 0 <= j < kw:
                    words[:, delay, g, :channels, t] = w[:, j, :]
    start, multipliers, shifts = (np.zeros(width, np.int32) for _ in range(3))
    total = w.astype(np.int64).sum(axis=(0, 1))
    # int32 arithmetic modulo 2^32, as the kernel's sums are
    start[:channels] = (bias.astype(np.int64) - (128 + int(zx)) * total).astype(np.int32)
    multipliers[:channels], shifts[:channels] = multiplier, shift
    pairs = stride[1] == 1 and kw % vnni.GROUP != 0
    return (np.full(16, zx, np.int8), words.view(np.int32).reshape(kh, DELAYS * groups, width), start, multipliers,
            shifts, np.int32(bool(np.any(shift > 0))), np.int64(pairs))


@njit_inline
def _operands_sum(x, flat, acc, p, row_step, channels, count, kh, groups, width, k):
    # acc + the taps of the pixel whose kernel rows start at x[p], x[p + row_step], ... (all inside),
    # with the weight words from flat[k]: one pixel, or with k one delay on, the next pixel
    for i in range(kh):
        for g in range(groups):
            q = columns4(x, p + i * row_step + 4 * g * channels, channels, count)
            acc = dpbusd(acc, q, load16(flat, k + (i * DELAYS * groups + g) * width))
    return acc


@njit_inline
def _pair_sum(x, flat, a0, a1, p, row_step, channels, count, kh, groups, width, k):
    # `_operands_sum` for two pixels, iw and iw + 1, from the same operands
    for i in range(kh):
        for g in range(groups):
            q = columns4(x, p + i * row_step + 4 * g * channels, channels, count)
            k0 = k + (i * DELAYS * groups + g) * width
            a0 = dpbusd(a0, q, load16(flat, k0))
            a1 = dpbusd(a1, q, load16(flat, k0 + groups * width))
    return a0, a1


@njit_inline
def _border_sum(x, pad, flat, acc, n, ih0, iw, c0, count, kh, groups, width):
    # acc + the taps of one pixel some of whose operand columns or rows are outside the input:
    # those read pad (z_x), as padding holds
    _, h, wd, channels = x.shape
    for i in range(kh):
        ih = ih0 + i
        inside = ih >= 0 and ih < h
        p = ((n * h + ih) * wd + iw) * channels + c0
        for g in range(groups):
            j = iw + 4 * g
            i0 = p + 4 * g * channels if inside and j >= 0 and j < wd else -1
            i1 = p + (4 * g + 1) * channels if inside and j + 1 >= 0 and j + 1 < wd else -1
            i2 = p + (4 * g + 2) * channels if inside and j + 2 >= 0 and j + 2 < wd else -1
            i3 = p + (4 * g + 3) * channels if inside and j + 3 >= 0 and j + 3 < wd else -1
            acc = dpbusd(acc, columns4_padded(x, pad, i0, i1, i2, i3, count),
                         load16(flat, (i * DELAYS * groups + g) * width + c0))
    return acc


@njit_inline
def _row_sums(x, pad, flat, start, multipliers, shifts, left, pairs, zy, lo, hi, y, xn, n, oh, ih0, sw, pl, first,
              end, kh, groups, width, c0, count):
    # output row (n, oh) from image xn of x (n, or 0 in `_rows_padded`'s copy), channels
    # c0..c0+count-1: border pixels tap by tap, interior pixels from operands read in place, two
    # at a time where `pairs`
    _, h, wd, channels = x.shape
    _, ho, wo, _ = y.shape
    if ih0 < 0 or ih0 + kh > h:
        first, end = 0, 0                      # rows outside: every pixel is a border pixel
    row_step = wd * channels
    b, m, s = load16(start, c0), load16(multipliers, c0), load16(shifts, c0)
    out = (n * ho + oh) * wo * channels + c0
    p0 = (xn * h + ih0) * row_step + c0
    for ow in range(first):
        a = _border_sum(x, pad, flat, b, n, ih0, ow * sw - pl, c0, count, kh, groups, width)
        q = requantize16_layer(a, m, s, left, zy, lo, hi)
        store16_int8(y, out + ow * channels, q, count)
    ow = first
    if pairs:
        for ow in range(first, end - 1, 2):
            a0, a1 = _pair_sum(x, flat, b, b, p0 + (ow - pl) * channels, row_step, channels, count, kh,
                               groups, width, c0)
            q0 = requantize16_layer(a0, m, s, left, zy, lo, hi)
            q1 = requantize16_layer(a1, m, s, left, zy, lo, hi)
            store16_int8(y, out + ow * channels, q0, count)
            store16_int8(y, out + (ow + 1) * channels, q1, count)
        ow = first + (end - first) // 2 * 2
    for ow in range(ow, end):
        a = _operands_sum(x, flat, b, p0 + (ow * sw - pl) * channels, row_step, channels, count, kh, groups,
                          width, c0)
        q = requantize16_layer(a, m, s, left, zy, lo, hi)
        store16_int8(y, out + ow * channels, q, count)
    for ow in range(max(end, first), wo):
        a = _border_sum(x, pad, flat, b, n, ih0, ow * sw - pl, c0, count, kh, groups, width)
        q = requantize16_layer(a, m, s, left, zy, lo, hi)
        store16_int8(y, out + ow * channels, q, count)


@njit_serial
def _depthwise_int8_vnni_rows(x, pad, words, start, multipliers, shifts, left, pairs, zy, lo, hi, sh, sw, pt, pl, y,
                              row_start, row_end):
    # x: (N, H, W, C) int8 -> y: (N, Ho, Wo, C) int8, output rows row_start..row_end-1 (n * Ho + oh),
    # from `pack`'s arguments: in place, or, where a third or more of a row's pixels are border
    # pixels (5x5 kernels on 14x14 and 7x7 maps, 3x3 on 7x7), from zero-point-padded copies of
    # the input rows, where every pixel reads its operands in place (`_rows_padded`)
    groups = words.shape[1] // DELAYS
    # output columns whose operands (4 * groups input columns) lie inside x
    first, end = _interior_columns(x.shape[2], y.shape[2], 4 * groups, sw, pl, 1)
    if 3 * (y.shape[2] - (end - first)) >= y.shape[2]:
        _rows_padded(x, pad, words, start, multipliers, shifts, left, pairs, zy, lo, hi, sh, sw, pt, pl, y, row_start,
                     row_end)
    else:
        _rows_in_place(x, pad, words, start, multipliers, shifts, left, pairs, zy, lo, hi, sh, sw, pt, pl, y,
                       row_start, row_end, first, end)


@njit_serial
def _rows_in_place(x, pad, words, start, multipliers, shifts, left, pairs, zy, lo, hi, sh, sw, pt, pl, y, row_start,
                   row_end, first, end):
    # 3x3 and 5x5 kernels have their own (unrolled) copies of the row
    channels = x.shape[3]
    ho = y.shape[1]
    kh, groups, width = words.shape[0], words.shape[1] // DELAYS, words.shape[2]
    flat = words.reshape(words.size)
    full = channels // 16 * 16                 # blocks of 16 channels: unmasked loads
    for row in range(row_start, row_end):
        n, oh = row // ho, row % ho
        ih0 = oh * sh - pt
        for c0 in range(0, channels, 16):
            if kh == 3 and groups == 1 and c0 < full:
                _row_sums(x, pad, flat, start, multipliers, shifts, left, pairs, zy, lo, hi, y, n, n, oh, ih0, sw, pl,
                          first, end, 3, 1, width, c0, 16)
            elif kh == 5 and groups == 2 and c0 < full:
                _row_sums(x, pad, flat, start, multipliers, shifts, left, pairs, zy, lo, hi, y, n, n, oh, ih0, sw, pl,
                          first, end, 5, 2, width, c0, 16)
            else:
                _row_sums(x, pad, flat, start, multipliers, shifts, left, pairs, zy, lo, hi, y, n, n, oh, ih0, sw, pl,
                          first, end, kh, groups, width, c0, min(16, channels - c0))


@njit_inline
def _fill_bytes(dst, d0, value, count):
    # dst[d0:d0+count] = value (int8x64), 64 bytes at a time, the last piece masked
    e = 0
    while e + 64 <= count:
        store64_int8(dst, d0 + e, value, 64)
        e += 64
    if e < count:
        store64_int8(dst, d0 + e, value, count - e)


@njit_inline
def _copy_bytes(dst, d0, src, s0, count):
    # dst[d0:d0+count] = src[s0:s0+count], 64 bytes at a time, the last piece masked
    e = 0
    while e + 64 <= count:
        store64_int8(dst, d0 + e, load64_int8(src, s0 + e, 64), 64)
        e += 64
    if e < count:
        store64_int8(dst, d0 + e, load64_int8(src, s0 + e, count - e), count - e)


@njit_serial
def _rows_padded(x, pad, words, start, multipliers, shifts, left, pairs, zy, lo, hi, sh, sw, pt, pl, y, row_start,
                 row_end):
    # each output row from a copy of its KH input rows, columns -pl .. -pl + Wp - 1, z_x where they
    # are outside x (the padding): every pixel then reads its operands in place. (As
    # `depthwise_avx512._pad_rows` does for float; its slice assignments, on int8, made these
    # layers 2-3x slower than the 64-byte copies here.)
    _, h, wd, channels = x.shape
    ho, wo = y.shape[1], y.shape[2]
    kh, groups, width = words.shape[0], words.shape[1] // DELAYS, words.shape[2]
    flat = words.reshape(words.size)
    full = channels // 16 * 16
    wp = (wo - 1) * sw + 4 * groups
    rows = np.empty((1, kh, wp, channels), np.int8)
    rf, xf, z = rows.reshape(rows.size), x.reshape(x.size), splat64(pad[0])
    inside_lo, inside_hi = min(pl, wp), min(max(wd + pl, 0), wp)      # copy columns inside x
    for row in range(row_start, row_end):
        n, oh = row // ho, row % ho
        ih0 = oh * sh - pt
        for i in range(kh):
            ih, r0 = ih0 + i, i * wp * channels
            if ih < 0 or ih >= h or inside_hi <= inside_lo:
                _fill_bytes(rf, r0, z, wp * channels)
                continue
            _fill_bytes(rf, r0, z, inside_lo * channels)
            _copy_bytes(rf, r0 + inside_lo * channels, xf, ((n * h + ih) * wd + inside_lo - pl) * channels,
                        (inside_hi - inside_lo) * channels)
            _fill_bytes(rf, r0 + inside_hi * channels, z, (wp - inside_hi) * channels)
        for c0 in range(0, channels, 16):
            if kh == 3 and groups == 1 and c0 < full:
                _row_sums(rows, pad, flat, start, multipliers, shifts, left, pairs, zy, lo, hi, y, 0, n, oh, 0, sw, 0,
                          0, wo, 3, 1, width, c0, 16)
            elif kh == 5 and groups == 2 and c0 < full:
                _row_sums(rows, pad, flat, start, multipliers, shifts, left, pairs, zy, lo, hi, y, 0, n, oh, 0, sw, 0,
                          0, wo, 5, 2, width, c0, 16)
            else:
                _row_sums(rows, pad, flat, start, multipliers, shifts, left, pairs, zy, lo, hi, y, 0, n, oh, 0, sw, 0,
                          0, wo, kh, groups, width, c0, min(16, channels - c0))


@njit_parallel
def _depthwise_int8_vnni_parallel(x, pad, words, start, multipliers, shifts, left, pairs, zy, lo, hi, sh, sw, pt, pl,
                                  y, chunks):
    rows = y.shape[0] * y.shape[1]
    for c in numba.prange(chunks):
        _depthwise_int8_vnni_rows(x, pad, words, start, multipliers, shifts, left, pairs, zy, lo, hi, sh, sw, pt, pl,
                                  y, c * rows // chunks, (c + 1) * rows // chunks)


__all__ = ["DELAYS", "applies", "pack"]
