"""Depthwise convolution in int8 on AVX-512 VNNI: four taps of a kernel row per `vpdpbusd`.

A depthwise layer sums, per channel, KH x KW products (V1 paper, Eq. 3), so there is no input
channel axis for vpdpbusd's four-byte dot products to run over, as the pointwise kernel's does.
The four bytes are taken along a kernel row instead: lane c of an operand holds channel c of four
neighbouring input columns, and the packed weight word of lane c holds four taps of channel c.
One instruction then does 4 taps of 16 channels, where the portable kernel
(`qkernels._depthwise_int8_rows`) sign-extends, subtracts z_x, multiplies and adds tap by tap.

Each input row a worker needs is first rewritten once as operands (`_operand_row`): for each
window of four columns -pl + 4m .. -pl + 4m + 3 and each 16 channels, the 64 bytes of one operand
(`vnni.columns4`: four 16-byte loads, one byte permute), columns outside the image holding z_x, as
padding does. Output pixels then go in blocks of 4 / stride (4 at stride 1, 2 at stride 2) that
start on a window: pixel e of a block starts its kernel row at byte d = e * stride of the block's
first window and reaches into the next one where d + KW > 4, so it multiplies those two operands
by weight words shifted by d (`DELAYS` copies of each kernel row, byte t of word (d, g) holding
tap 4g + t - d). Every operand is read in place by a few multiply-adds, border pixels like the
others; a worker keeps its last KH rewritten rows, so each input row is rewritten once per
worker, not once per output row that reads it.

vpdpbusd's bytes are unsigned, so the input is fed as x + 128, and, as in the pointwise kernel,

    sum_ij (x - z_x) w[i, j, c] = sum_ij (x + 128) w[i, j, c] - (128 + z_x) sum_ij w[i, j, c]

with the last term in the accumulators' start. Padding reads z_x, so its taps cancel exactly as
the real value 0 does; bytes beyond a kernel row's taps meet zero weights. Sums are int32 modulo
2^32 as everywhere, so the accumulators equal the portable kernel's bit for bit; they are
requantized by `vnni.requantize16_layer`.

Layout: x (N, H, W, C) int8; the packed weight (ceil(C / 16), KH, DELAYS * groups * 16) int32
words, (delay, group, lane) in the last axis, groups = ceil((KW + 3) / 4): the words of 16 channels
together, so that a block's weight addresses are constants from one base. Strides of 1 and 2 along the width; dilated kernels and other strides
stay on the portable kernel.
"""
import numba
import numpy as np

from npmobilenet.compression import vnni
from npmobilenet.compression.vnni import (
    columns4, columns4_padded, dpbusd, load16, requantize16_layer, store16, store16_int8,
)
from npmobilenet.config import njit_inline, njit_parallel, njit_serial

DELAYS = 4  # weight copies per kernel row: for a pixel starting at byte d = 0..3 of a window


def applies(w, dilation, stride=(1, 1)):
    """Whether the VNNI depthwise kernel runs this layer: VNNI enabled, no dilation, stride 1 or 2
    along the width."""
    return vnni.vnni_enabled() and tuple(dilation) == (1, 1) and stride[1] in (1, 2)


def pack(w, zx, bias, multiplier, shift, stride):
    """(pad, words, start, multipliers, shifts, left, kw) of the kernel for w (KH, KW, C) int8, once
    per layer: z_x in 16 bytes; the weight words; padded to 16 channels the accumulators' start
    b - (128 + z_x) sum_ij w, the multipliers and shifts; `left`: some shift > 0; KW."""
    kh, kw, channels = w.shape
    groups = -(-(kw + DELAYS - 1) // vnni.GROUP)     # windows a pixel starting at byte 3 reaches
    blocks = -(-channels // vnni.LANES)
    words = np.zeros((blocks * vnni.LANES, kh, DELAYS, groups, vnni.GROUP), np.int8)
    for delay in range(DELAYS):
        for g in range(groups):
            for t in range(vnni.GROUP):
                j = vnni.GROUP * g + t - delay         # the tap of byte t for a pixel starting at byte `delay`
                if 0 <= j < kw:
                    words[:channels, :, delay, g, t] = w[:, j, :].T
    # (C, KH, DELAYS, groups, 4) -> (C / 16, KH, DELAYS, groups, 16 lanes, 4 bytes)
    words = words.reshape(blocks, vnni.LANES, kh, DELAYS, groups, vnni.GROUP).transpose(0, 2, 3, 4, 1, 5)
    width = blocks * vnni.LANES
    start, multipliers, shifts = (np.zeros(width, np.int32) for _ in range(3))
    total = w.astype(np.int64).sum(axis=(0, 1))
    # int32 arithmetic modulo 2^32, as the kernel's sums are
    start[:channels] = (bias.astype(np.int64) - (128 + int(zx)) * total).astype(np.int32)
    multipliers[:channels], shifts[:channels] = multiplier, shift
    words = np.ascontiguousarray(words).view(np.int32).reshape(blocks, kh, DELAYS * groups * vnni.LANES)
    return (np.full(16, zx, np.int8), words, start, multipliers, shifts, np.int32(bool(np.any(shift > 0))),
            np.int64(kw))


# -- an input row as operands --------------------------------------------------------------------------
@njit_inline
def _operand_row(x, pad, n, ih, pl, ops, o, windows, b0, b1):
    # ops[o + (m * (b1 - b0) + b - b0) * 16 ...] (16 words) = the operand of window m (columns
    # -pl + 4m .. -pl + 4m + 3 of input row ih of image n) and channels 16b .. 16b + 15, b0 <= b <
    # b1: byte t of lane j is x[n, ih, -pl + 4m + t, 16b + j] + 128, or z_x + 128 where that is
    # outside x (padding)
    _, h, wd, channels = x.shape
    row = (n * h + ih) * wd * channels
    inside = ih >= 0 and ih < h
    for m in range(windows):
        col = 4 * m - pl
        for b in range(b0, b1):
            count = min(16, channels - 16 * b)
            q = o + (m * (b1 - b0) + b - b0) * 16
            if inside and col >= 0 and col + 4 <= wd:
                store16(ops, q, columns4(x, row + col * channels + 16 * b, channels, count))
            else:
                p = row + col * channels + 16 * b
                i0 = p if inside and col >= 0 and col < wd else -1
                i1 = p + channels if inside and col + 1 >= 0 and col + 1 < wd else -1
                i2 = p + 2 * channels if inside and col + 2 >= 0 and col + 2 < wd else -1
                i3 = p + 3 * channels if inside and col + 3 >= 0 and col + 3 < wd else -1
                store16(ops, q, columns4_padded(x, pad, i0, i1, i2, i3, count))


# -- the sums of a block of pixels ---------------------------------------------------------------------
@njit_inline
def _block_row(ops, q, step, words, k, a0, a1, a2, a3, kw, sw, groups):
    # one kernel row for a block of 4 / sw pixels whose first window's operand is ops[q] (the next
    # windows `step` on), weight words of this row from words[k]: pixel e starts at byte d = e * sw
    # and takes window g where its taps reach it (d + KW > 4g), with the words of (d, g)
    for g in range(groups):
        v = load16(ops, q + g * step)
        w = k + g * 16
        if kw > 4 * g:
            a0 = dpbusd(a0, v, load16(words, w))
        if sw == 1:
            if kw + 1 > 4 * g:
                a1 = dpbusd(a1, v, load16(words, w + groups * 16))
            if kw + 2 > 4 * g:
                a2 = dpbusd(a2, v, load16(words, w + 2 * groups * 16))
            if kw + 3 > 4 * g:
                a3 = dpbusd(a3, v, load16(words, w + 3 * groups * 16))
        elif kw + 2 > 4 * g:
            a1 = dpbusd(a1, v, load16(words, w + 2 * groups * 16))
    return a0, a1, a2, a3


@njit_inline
def _row_blocks(ops, rows, c, step, words, b, m, s, left, zy, lo, hi, y, out, c0, count, kh, kw, sw, groups):
    # output row y.flat[out ...], channels c0 .. c0 + count - 1, from the operands of its KH input
    # rows (their first window's at ops[rows[i] + c], the next `step` on), block by block; pixels
    # past the row's end are not stored
    channels, wo = y.shape[3], y.shape[2]
    pixels = 4 // sw
    row_words = DELAYS * groups * 16
    k0 = c0 // 16 * kh * row_words
    r0, r1, r2, r3, r4 = (rows[0] + c, rows[min(1, kh - 1)] + c, rows[min(2, kh - 1)] + c, rows[min(3, kh - 1)] + c,
                          rows[min(4, kh - 1)] + c)
    for blk in range(-(-wo // pixels)):
        a0 = a1 = a2 = a3 = b
        q = blk * step
        if kh <= 5:                              # the kernel rows unrolled (3x3 and 5x5 literal)
            a0, a1, a2, a3 = _block_row(ops, r0 + q, step, words, k0, a0, a1, a2, a3, kw, sw, groups)
            if kh > 1:
                a0, a1, a2, a3 = _block_row(ops, r1 + q, step, words, k0 + row_words, a0, a1, a2, a3, kw, sw, groups)
            if kh > 2:
                a0, a1, a2, a3 = _block_row(ops, r2 + q, step, words, k0 + 2 * row_words, a0, a1, a2, a3, kw, sw,
                                            groups)
            if kh > 3:
                a0, a1, a2, a3 = _block_row(ops, r3 + q, step, words, k0 + 3 * row_words, a0, a1, a2, a3, kw, sw,
                                            groups)
            if kh > 4:
                a0, a1, a2, a3 = _block_row(ops, r4 + q, step, words, k0 + 4 * row_words, a0, a1, a2, a3, kw, sw,
                                            groups)
        else:
            for i in range(kh):
                a0, a1, a2, a3 = _block_row(ops, rows[i] + c + q, step, words, k0 + i * row_words, a0, a1, a2, a3, kw,
                                            sw, groups)
        ow = blk * pixels
        o = out + ow * channels
        store16_int8(y, o, requantize16_layer(a0, m, s, left, zy, lo, hi), count)
        if ow + 1 < wo:
            store16_int8(y, o + channels, requantize16_layer(a1, m, s, left, zy, lo, hi), count)
        if sw == 1:
            if ow + 2 < wo:
                store16_int8(y, o + 2 * channels, requantize16_layer(a2, m, s, left, zy, lo, hi), count)
            if ow + 3 < wo:
                store16_int8(y, o + 3 * channels, requantize16_layer(a3, m, s, left, zy, lo, hi), count)


@njit_inline
def _row(ops, rows, c, step, words, start, multipliers, shifts, left, zy, lo, hi, y, out, c0, kh, kw, sw, groups):
    # `_row_blocks` for channels c0.. (16, or the last ones): 3x3 and 5x5 kernels at strides 1 and
    # 2 on whole blocks of 16 channels have their own (unrolled) copies
    b, m, s = load16(start, c0), load16(multipliers, c0), load16(shifts, c0)
    if c0 + 16 <= y.shape[3] and kh == 3 and kw == 3 and groups == 2 and sw == 1:
        _row_blocks(ops, rows, c, step, words, b, m, s, left, zy, lo, hi, y, out, c0, 16, 3, 3, 1, 2)
    elif c0 + 16 <= y.shape[3] and kh == 3 and kw == 3 and groups == 2 and sw == 2:
        _row_blocks(ops, rows, c, step, words, b, m, s, left, zy, lo, hi, y, out, c0, 16, 3, 3, 2, 2)
    elif c0 + 16 <= y.shape[3] and kh == 5 and kw == 5 and groups == 2 and sw == 1:
        _row_blocks(ops, rows, c, step, words, b, m, s, left, zy, lo, hi, y, out, c0, 16, 5, 5, 1, 2)
    elif c0 + 16 <= y.shape[3] and kh == 5 and kw == 5 and groups == 2 and sw == 2:
        _row_blocks(ops, rows, c, step, words, b, m, s, left, zy, lo, hi, y, out, c0, 16, 5, 5, 2, 2)
    else:
        _row_blocks(ops, rows, c, step, words, b, m, s, left, zy, lo, hi, y, out, c0, min(16, y.shape[3] - c0), kh, kw,
                    sw, groups)


@njit_serial
def _depthwise_int8_vnni_block(x, pad, words, start, multipliers, shifts, left, kw, zy, lo, hi, sh, sw, pt, pl, y,
                               row_start, row_end, c_start, c_end):
    # x: (N, H, W, C) int8 -> y: (N, Ho, Wo, C) int8, output rows row_start..row_end-1 (n * Ho + oh)
    # and channels c_start..c_end-1 (c_start a multiple of 16; c_end too, or C), from `pack`'s
    # arguments; this call's last KH input rows as operands in `ops`, row ih in slot ih mod KH
    _, h, _, channels = x.shape
    ho, wo = y.shape[1], y.shape[2]
    kh, groups = words.shape[1], words.shape[2] // (DELAYS * 16)
    flat = words.reshape(words.size)
    b0, b1 = c_start // 16, -(-c_end // 16)
    windows = -(-wo // (4 // sw)) + groups - 1    # the blocks' first windows, and what the last one reaches
    step = (b1 - b0) * 16                         # one window on, in ops
    size = windows * step                         # one row's operands
    ops = np.empty(kh * size, np.int32)
    held = np.full((kh, 2), -1, np.int64)         # (n, ih) of the row in each slot (n = -1: none)
    rows = np.empty(kh, np.int64)
    for row in range(row_start, row_end):
        n, oh = row // ho, row % ho
        ih0 = oh * sh - pt
        for i in range(kh):
            ih = ih0 + i
            slot = ih % kh
            if held[slot, 0] != n or held[slot, 1] != ih:
                _operand_row(x, pad, n, ih, pl, ops, slot * size, windows, b0, b1)
                held[slot, 0], held[slot, 1] = n, ih
            rows[i] = slot * size
        out = (n * ho + oh) * wo * channels
        for c0 in range(c_start, c_end, 16):
            _row(ops, rows, c0 - c_start, step, flat, start, multipliers, shifts, left, zy, lo, hi, y, out + c0, c0, kh,
                 kw, sw, groups)


@njit_serial
def _depthwise_int8_vnni_rows(x, pad, words, start, multipliers, shifts, left, kw, zy, lo, hi, sh, sw, pt, pl, y,
                              row_start, row_end):
    # `_depthwise_int8_vnni_block` over every channel
    _depthwise_int8_vnni_block(x, pad, words, start, multipliers, shifts, left, kw, zy, lo, hi, sh, sw, pt, pl, y,
                               row_start, row_end, 0, y.shape[3])


@njit_parallel
def _depthwise_int8_vnni_parallel(x, pad, words, start, multipliers, shifts, left, kw, zy, lo, hi, sh, sw, pt, pl, y,
                                  chunks):
    rows = y.shape[0] * y.shape[1]
    for c in numba.prange(chunks):
        _depthwise_int8_vnni_rows(x, pad, words, start, multipliers, shifts, left, kw, zy, lo, hi, sh, sw, pt, pl, y,
                                  c * rows // chunks, (c + 1) * rows // chunks)


__all__ = ["DELAYS", "applies", "pack"]
