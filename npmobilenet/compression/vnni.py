"""AVX-512 VNNI for the int8 pointwise kernel: a 16-lane int32 vector type, the few intrinsics
that use it, and the packed weight layout they read; and a 64-lane int8 type for the table
lookups of AVX-512 VBMI (`lookup64`: hard-swish and hard-sigmoid in four registers).

`vpdpbusd` (LLVM's `llvm.x86.avx512.vpdpbusd.512`) adds to each of 16 int32 lanes the sum of 4
products of unsigned bytes of `a` with signed bytes of `b`: 64 multiply-adds in one instruction.
Numba has no vector type, so `int32x16` is one: a Numba type whose LLVM value is `<16 x i32>`, a
register once LLVM promotes the kernel's locals. The intrinsics load, broadcast, multiply-add,
requantize (the integers of `qkernels._requantize_store`, 16 lanes at a time) and store such
vectors; the kernel (`qkernels._pointwise_int8_vnni_rows`) is written with them. All but
`dpbusd` are LLVM's generic vector instructions, which every CPU runs (in narrower registers
where it has no 512-bit ones): the depthwise and add kernels use them on any CPU.

vpdpbusd multiplies unsigned by signed bytes, so the kernel feeds it x + 128 (the int8 input with
its sign bit flipped) and the weights as they are, and corrects the sum by the column sums:

    sum_ci (x - z_x) w[ci, c] = sum_ci (x + 128) w[ci, c] - (128 + z_x) colsum[c]

Every sum is int32 arithmetic modulo 2^32 (vpdpbusd does not saturate), as the portable kernel's
is, so the two give the same accumulators bit for bit, in any order.

Packed layout: w (Cin, Cout) int8 -> (ceil(Cin/4), ceil(Cout/16)*16, 4) int8, zero padded, read
as int32 words: word [k, c] holds w[4k:4k+4, c], so one 64-byte load gives 16 output channels of 4
input channels. Zero weights make the padding input channels contribute nothing.

Without VNNI, on AVX2 (`pairs_enabled()`), the same kernels run on pairs of int16 instead: `dpwssd`
(two `vpmaddwd`, 16 exact products each, and an add) on words holding w[2k:2k+2, c] (`pack_pairs`)
and x itself (the start corrected by z_x colsum alone), and `lookup32` looks up 32 bytes a step.
`vpmaddubsw`, AVX2's byte instruction, saturates its pairs' sums and could not give these
integers.
"""
import os
import weakref

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, datamodel
from numba.extending import intrinsic

from npmobilenet.config import cpu_features, njit_inline

LANES = 16  # int32 lanes of a 512-bit register: output channels per vector
GROUP = 4   # input channels in each lane's dot product


# -- the CPU ----------------------------------------------------------------------------------------
def has_vnni():
    """Whether the CPU has AVX-512 VNNI (and BW, for the byte loads)."""
    return {"avx512f", "avx512bw", "avx512vnni"} <= cpu_features()


def has_vbmi():
    """Whether the CPU has AVX-512 VBMI (`vpermi2b`: 64 byte lookups in a 128-byte table per
    instruction)."""
    return {"avx512f", "avx512bw", "avx512vbmi"} <= cpu_features()


def pairs_enabled():
    """Whether the int16-pair kernels (`dpwssd`: AVX2's vpmaddwd) run in VNNI's place: on a CPU with
    AVX2 where `vnni_enabled()` is false, unless NPMOBILENET_NO_PAIRS is set (not 0), which forces
    the portable kernels, e.g. to test them on such a CPU."""
    return (os.environ.get("NPMOBILENET_NO_PAIRS", "0") in ("", "0") and "avx2" in cpu_features()
            and not vnni_enabled())


def packed_enabled():
    """Whether int8 pointwise layers and standard convolutions run a kernel on a packed weight
    (VNNI's or the pairs'), which reads receptive fields in place and fuses a residual add."""
    return vnni_enabled() or pairs_enabled()


def vnni_enabled():
    """VNNI kernels run when the CPU has VNNI and NPMOBILENET_NO_VNNI is unset (or 0); the
    variable forces the portable kernels, e.g. to test them on a VNNI machine."""
    return os.environ.get("NPMOBILENET_NO_VNNI", "0") in ("", "0") and has_vnni()


# -- the vector type --------------------------------------------------------------------------------
class Int32x16(types.Type):
    """16 int32 lanes, held in one 512-bit register."""

    def __init__(self):
        super().__init__(name="int32x16")


int32x16 = Int32x16()
_VECTOR = ir.VectorType(ir.IntType(32), LANES)


@datamodel.register_default(Int32x16)
class _Int32x16Model(datamodel.models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


def _int32_array(a):
    return isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == types.int32


def _element(context, builder, signature, array, i):
    """A pointer to element i (flat, C order; no bounds check, no wraparound) of the intrinsic's
    first argument, a C-contiguous array, i its second."""
    data = context.make_array(signature.args[0])(context, builder, array).data
    return builder.gep(data, [context.cast(builder, i, signature.args[1], types.intp)])


def _splat(builder, value, element_type):
    """A 16-lane vector of one scalar (truncated or sign-extended to element_type)."""
    if value.type.width > element_type.width:
        value = builder.trunc(value, element_type)
    elif value.type.width < element_type.width:
        value = builder.sext(value, element_type)
    vector = ir.VectorType(element_type, LANES)
    lane0 = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(lane0, ir.Constant(vector, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))


def _const(element_type, value):
    return ir.Constant(ir.VectorType(element_type, LANES), [value] * LANES)


def _smin(builder, a, b):
    return builder.select(builder.icmp_signed("<", a, b), a, b)


def _smax(builder, a, b):
    return builder.select(builder.icmp_signed(">", a, b), a, b)


# -- the intrinsics ---------------------------------------------------------------------------------
@intrinsic
def load16(typingctx, array, index):
    """array[index:index + 16] as a vector: array 1-D C-contiguous int32 (any alignment)."""
    if not (_int32_array(array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        element = _element(context, builder, signature, *args)
        return builder.load(builder.bitcast(element, _VECTOR.as_pointer()), typ=_VECTOR, align=4)

    return int32x16(array, index), codegen


@intrinsic
def load16_part(typingctx, array, index, count):
    """array[index + j] for j < count (<= 16), 0 in the other lanes, which are not read: array
    1-D C-contiguous int32."""
    if not (_int32_array(array) and isinstance(index, types.Integer) and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array, index, count = args
        element = builder.bitcast(_element(context, builder, signature, array, index), _VECTOR.as_pointer())
        mask = builder.icmp_signed("<", ir.Constant(_VECTOR, list(range(LANES))), _splat(builder, count, ir.IntType(32)))
        fnty = ir.FunctionType(_VECTOR, [element.type, ir.IntType(32), mask.type, _VECTOR])
        load = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.load.v16i32.p0")
        return builder.call(load, [element, ir.Constant(ir.IntType(32), 4), mask, _const(ir.IntType(32), 0)])

    return int32x16(array, index, count), codegen


@intrinsic
def broadcast16(typingctx, array, index):
    """array[index] in all 16 lanes: array 1-D C-contiguous int32."""
    if not (_int32_array(array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        word = builder.load(_element(context, builder, signature, *args), typ=ir.IntType(32), align=4)
        return _splat(builder, word, ir.IntType(32))

    return int32x16(array, index), codegen


@intrinsic
def dpbusd(typingctx, acc, a, b):
    """acc + (per lane) the sum of the 4 products of a's unsigned bytes and b's signed bytes."""
    if not (acc == int32x16 and a == int32x16 and b == int32x16):
        return None

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_VECTOR, [_VECTOR] * 3)
        vpdpbusd = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(vpdpbusd, list(args))

    return int32x16(acc, a, b), codegen


def _lanes(indices):
    """A shufflevector mask: the lanes `indices`, in order."""
    return ir.Constant(ir.VectorType(ir.IntType(32), len(indices)), list(indices))


@intrinsic
def dpwssd(typingctx, acc, a, b):
    """acc + (per lane) the sum of the 2 products of a's int16 halves and b's: vpdpwssd's integers
    (no saturation), by AVX2's vpmaddwd (two per 16 lanes) and an add. Exact: a product of int16s
    is at most 2^30, a pair's sum at most 2^31 (only -32768 * -32768 twice reaches it; int8
    operands stay far below)."""
    if not (acc == int32x16 and a == int32x16 and b == int32x16):
        return None

    def codegen(context, builder, signature, args):
        acc_value, a_value, b_value = args
        halves = ir.VectorType(ir.IntType(16), 16)
        fnty = ir.FunctionType(ir.VectorType(ir.IntType(32), 8), [halves, halves])
        vpmaddwd = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx2.pmadd.wd")
        a16 = builder.bitcast(a_value, ir.VectorType(ir.IntType(16), 32))
        b16 = builder.bitcast(b_value, ir.VectorType(ir.IntType(16), 32))
        low_half, high_half, whole = _lanes(range(16)), _lanes(range(16, 32)), _lanes(range(16))
        low = builder.call(vpmaddwd, [builder.shuffle_vector(a16, a16, low_half),
                                      builder.shuffle_vector(b16, b16, low_half)])
        high = builder.call(vpmaddwd, [builder.shuffle_vector(a16, a16, high_half),
                                       builder.shuffle_vector(b16, b16, high_half)])
        return builder.add(acc_value, builder.shuffle_vector(low, high, whole))

    return int32x16(acc, a, b), codegen


@intrinsic
def lookup32(typingctx, table, x, y, i):
    """y[i + j] = table[x[i + j] + 128] for j < 32 (int8 1-D C-contiguous arrays; table has 256
    entries) with AVX2: the table as 16 sub-tables of 16 entries, each looked up by `vpshufb` on the
    index's low nibble and kept where its high nibble names it (16 shuffles, compares and selects
    per 32 values, where the scalar loop loads and stores each)."""
    if not (_int8_array(table) and _int8_array(x) and _int8_array(y) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        table_value, x_value, y_value, i_value = args
        i8 = ir.IntType(8)
        bytes32, bytes16 = ir.VectorType(i8, 32), ir.VectorType(i8, 16)

        def at(position, index, index_type, vector):
            data = context.make_array(signature.args[position])(context, builder, args[position]).data
            return builder.bitcast(builder.gep(data, [context.cast(builder, index, index_type, types.intp)]),
                                   vector.as_pointer())

        index = builder.xor(builder.load(at(1, i_value, signature.args[3], bytes32), align=1),
                            ir.Constant(bytes32, [-128] * 32))               # x + 128, as an unsigned byte
        low = builder.and_(index, ir.Constant(bytes32, [15] * 32))
        high = builder.lshr(index, ir.Constant(bytes32, [4] * 32))
        fnty = ir.FunctionType(bytes32, [bytes32, bytes32])
        vpshufb = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx2.pshuf.b")
        result = ir.Constant(bytes32, [0] * 32)
        for h in range(16):
            part = builder.load(at(0, ir.Constant(ir.IntType(64), 16 * h), types.int64, bytes16), align=1)
            both = builder.shuffle_vector(part, part, _lanes(list(range(16)) * 2))    # in both 128-bit halves
            found = builder.call(vpshufb, [both, low])
            result = builder.select(builder.icmp_unsigned("==", high, ir.Constant(bytes32, [h] * 32)), found, result)
        builder.store(result, at(2, i_value, signature.args[3], bytes32), align=1)
        return context.get_dummy_value()

    return types.void(table, x, y, i), codegen


@intrinsic
def store16(typingctx, array, index, vector):
    """array[index:index + 16] = vector: array 1-D C-contiguous int32 (any alignment)."""
    if not (_int32_array(array) and isinstance(index, types.Integer) and vector == int32x16):
        return None

    def codegen(context, builder, signature, args):
        element = _element(context, builder, signature, args[0], args[1])
        builder.store(args[2], builder.bitcast(element, _VECTOR.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(array, index, vector), codegen


def _multiply(builder, acc, multiplier, shift, left_shift=True):
    """acc * M per lane, M = multiplier * 2^(shift - 31), rounded: the integers of
    `qkernels.multiply_by_quantized_multiplier` in vector instructions (LLVM's generic vector IR).
    gemmlowp rounds twice, a rounding doubling high multiply then a rounding right shift by
    r = max(-shift, 0):

        v    = clamp(acc * 2^max(shift, 0), int32)                       saturating left shift
        high = floor((v * multiplier + 2^30) / 2^31)                     (saturated at 2^31 - 1)
        q    = floor((high + e) / 2^r),  e = 2^(r-1) (high >= 0), 2^(r-1) - 1 (high < 0), 0 (r = 0)
                                                                         half away from zero

    and since floor((floor(a / 2^31) + e) / 2^r) = floor((a + e 2^31) / 2^(31 + r)) for integers,
    both are one rounding of the 64-bit product t = v * multiplier:

        q = (t + 2^30 + e 2^31) >> (31 + r)

    with high < 0 read as t < 0 (for -2^30 <= t < 0, high = 0 and either e gives q = 0). The
    saturations (of v, and of high's one overflow, v = multiplier = -2^31 with r = 0) are clamps
    to int32. So 64-bit lanes (vpmuldq, vpsravq) up to a saturating narrowing, no 32-bit rounding
    steps after it. Without `left_shift` (every shift <= 0, as when every M < 1) v is acc."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    v64 = ir.VectorType(i64, LANES)
    int32_min, int32_max = _const(i64, -(1 << 31)), _const(i64, (1 << 31) - 1)
    right = builder.zext(_smax(builder, builder.sub(_const(i32, 0), shift), _const(i32, 0)), v64)
    v = builder.sext(acc, v64)
    if left_shift:
        v = builder.shl(v, builder.zext(_smax(builder, shift, _const(i32, 0)), v64))
        v = _smin(builder, _smax(builder, v, int32_min), int32_max)
    t = builder.mul(v, builder.sext(multiplier, v64))
    e = builder.lshr(builder.shl(_const(i64, 1), right), _const(i64, 1))          # 2^(r-1), or 0
    nudge = builder.add(builder.shl(e, _const(i64, 31)), _const(i64, 1 << 30))
    # high < 0: e is one less where r > 0, the nudge 2^31 less (a constant per lane, like nudge)
    nudge_negative = builder.sub(nudge, builder.shl(builder.zext(builder.icmp_unsigned("!=", e, _const(i64, 0)), v64),
                                                    _const(i64, 31)))
    nudge = builder.select(builder.icmp_signed("<", t, _const(i64, 0)), nudge_negative, nudge)
    q = builder.ashr(builder.add(t, nudge), builder.add(right, _const(i64, 31)))
    return builder.trunc(_smin(builder, _smax(builder, q, int32_min), int32_max), _VECTOR)


def _multiply_right(builder, acc, multiplier, shift):
    """`_multiply` without its left shift (every shift <= 0), in gemmlowp's two roundings, both
    exact in 32-bit lanes but the product: high = (t + 2^30) >> 31 of t = acc * multiplier is its
    low 32 bits, a logical shift by a constant (the products of even and odd lanes apart, in
    place: vpmuldq; its one overflow, acc = multiplier = -2^31, saturated by a compare); then
    the rounding divide by 2^r, r = -shift <= 31 (quantize_multiplier makes shifts >= -31; r is
    clamped there), as gemmlowp's RoundingDivideByPOT: (high >> r) + 1 where the remainder
    high & (2^r - 1) passes half of 2^r (half and more for high < 0 not: ties away from zero).
    The same integers as `_multiply`'s one rounding of t; on AVX2, which has no 64-bit variable
    arithmetic shift and no 64-bit min or max, 16.2 -> 9.5 ns per 16 lanes (a loop of them alone)."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    pairs = ir.VectorType(i64, LANES // 2)
    nudge, shift32 = ir.Constant(pairs, [1 << 30] * (LANES // 2)), ir.Constant(pairs, [32] * (LANES // 2))
    # lanes 2k and 2k+1 as one 64-bit lane: each half sign-extended in place (vpmuldq's operands)
    a, m = builder.bitcast(acc, pairs), builder.bitcast(multiplier, pairs)
    even = builder.mul(builder.ashr(builder.shl(a, shift32), shift32), builder.ashr(builder.shl(m, shift32), shift32))
    odd = builder.mul(builder.ashr(a, shift32), builder.ashr(m, shift32))
    # (t + 2^30) >> 31: into the low half of the even products, the high half of the odd ones
    by31, by1 = ir.Constant(pairs, [31] * (LANES // 2)), ir.Constant(pairs, [1] * (LANES // 2))
    high_even = builder.bitcast(builder.lshr(builder.add(even, nudge), by31), _VECTOR)
    high_odd = builder.bitcast(builder.shl(builder.add(odd, nudge), by1), _VECTOR)
    high = builder.shuffle_vector(high_even, high_odd, _lanes([k + LANES * (k % 2) for k in range(LANES)]))
    int32_min = _const(i32, -(1 << 31))
    overflow = builder.and_(builder.icmp_signed("==", acc, int32_min), builder.icmp_signed("==", multiplier, int32_min))
    high = builder.select(overflow, _const(i32, (1 << 31) - 1), high)
    r = _smin(builder, _smax(builder, builder.sub(_const(i32, 0), shift), _const(i32, 0)), _const(i32, 31))
    mask = builder.sub(builder.shl(_const(i32, 1), r), _const(i32, 1))
    negative = builder.zext(builder.icmp_signed("<", high, _const(i32, 0)), _VECTOR)
    threshold = builder.add(builder.lshr(mask, _const(i32, 1)), negative)
    up = builder.zext(builder.icmp_signed(">", builder.and_(high, mask), threshold), _VECTOR)
    return builder.add(builder.ashr(high, r), up)


def _clamp_offset(builder, q, zy, lo, hi):
    """clamp(q + zy, lo, hi), computed as clamp(q, lo - zy, hi - zy) + zy: q + zy can pass 2^31 - 1."""
    i32 = ir.IntType(32)
    zy, lo, hi = (_splat(builder, a, i32) for a in (zy, lo, hi))
    q = _smin(builder, _smax(builder, q, builder.sub(lo, zy)), builder.sub(hi, zy))
    return builder.add(q, zy)


def _requantize_intrinsic(name, left_shift):
    def requantize(typingctx, acc, multiplier, shift, zy, lo, hi):
        if not (acc == int32x16 and multiplier == int32x16 and shift == int32x16
                and all(isinstance(a, types.Integer) for a in (zy, lo, hi))):
            return None

        def codegen(context, builder, signature, args):
            acc, multiplier, shift, zy, lo, hi = args
            q = (_multiply(builder, acc, multiplier, shift) if left_shift
                 else _multiply_right(builder, acc, multiplier, shift))
            return _clamp_offset(builder, q, zy, lo, hi)

        return int32x16(acc, multiplier, shift, zy, lo, hi), codegen

    requantize.__name__ = requantize.__qualname__ = name
    return requantize


requantize16 = intrinsic(_requantize_intrinsic("requantize16", True))
requantize16.__doc__ = """clamp(z_y + M * acc, lo, hi) per lane, M = multiplier * 2^(shift - 31): the integers of
    `qkernels._requantize_store` (see `_multiply`)."""
requantize16_right = intrinsic(_requantize_intrinsic("requantize16_right", False))
requantize16_right.__doc__ = """`requantize16` for shifts that are all <= 0 (M < 1 in every lane; the
    caller checks): no left shift, so no 64-bit saturation, and the rounding in 32-bit lanes
    (`_multiply_right`): fewer instructions per lane."""


@njit_inline
def requantize16_layer(acc, multiplier, shift, left, zy, lo, hi):
    """`requantize16` for a layer with some shift > 0 (`left`), else `requantize16_right`."""
    if left:
        return requantize16(acc, multiplier, shift, zy, lo, hi)
    return requantize16_right(acc, multiplier, shift, zy, lo, hi)


@intrinsic
def multiply16(typingctx, acc, multiplier, shift):
    """acc * M per lane, not offset or clamped (`_multiply`): the rescaling steps of a quantized add."""
    if not (acc == int32x16 and multiplier == int32x16 and shift == int32x16):
        return None

    def codegen(context, builder, signature, args):
        return _multiply(builder, *args)

    return int32x16(acc, multiplier, shift), codegen


@intrinsic
def splat16(typingctx, value):
    """value (an integer, truncated to int32) in all 16 lanes."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return _splat(builder, args[0], ir.IntType(32))

    return int32x16(value), codegen


def _binary(name, operation):
    def typer(typingctx, a, b):
        if not (a == int32x16 and b == int32x16):
            return None

        def codegen(context, builder, signature, args):
            return getattr(builder, operation)(*args)

        return int32x16(a, b), codegen

    typer.__name__ = typer.__qualname__ = name
    return typer


add16 = intrinsic(_binary("add16", "add"))
sub16 = intrinsic(_binary("sub16", "sub"))
mul16 = intrinsic(_binary("mul16", "mul"))  # low 32 bits of each lane's product


@intrinsic
def load16_int8(typingctx, array, index, count):
    """array[index + j] (int8, sign-extended to int32) for j < count (<= 16), 0 in the other lanes,
    which are not read: array C-contiguous int8 (any shape, flat index)."""
    if not (isinstance(array, types.Array) and array.layout == "C" and array.dtype == types.int8
            and isinstance(index, types.Integer) and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array, index, count = args
        return builder.sext(_load_bytes(builder, _element(context, builder, signature, array, index), count), _VECTOR)

    return int32x16(array, index, count), codegen


@intrinsic
def store16_int8(typingctx, array, index, vector, count):
    """array[index + j] = vector[j] (as int8) for j < count (<= 16), the other lanes masked off:
    array C-contiguous int8 (any shape, flat index)."""
    if not (isinstance(array, types.Array) and array.layout == "C" and array.dtype == types.int8
            and isinstance(index, types.Integer) and vector == int32x16 and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array, index, vector, count = args
        element = _element(context, builder, signature, array, index)
        i8x16 = ir.VectorType(ir.IntType(8), LANES)
        bytes_ = builder.trunc(vector, i8x16)
        whole = builder.icmp_signed(">=", count, ir.Constant(count.type, LANES))
        with builder.if_else(whole, likely=True) as (then, otherwise):
            with then:     # a plain store (no masked byte store without AVX-512 BW: see _load_bytes)
                builder.store(bytes_, builder.bitcast(element, i8x16.as_pointer()), align=1)
            with otherwise:
                lanes = ir.Constant(_VECTOR, list(range(LANES)))
                mask = builder.icmp_signed("<", lanes, _splat(builder, count, ir.IntType(32)))
                fnty = ir.FunctionType(ir.VoidType(), [i8x16, element.type, ir.IntType(32), mask.type])
                store = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.store.v16i8.p0")
                builder.call(store, [bytes_, element, ir.Constant(ir.IntType(32), 1), mask])
        return context.get_dummy_value()

    return types.void(array, index, vector, count), codegen


# -- 64 int8 lanes: the lookup tables (hard-swish, hard-sigmoid) with VBMI --------------------------
class Int8x64(types.Type):
    """64 int8 lanes, held in one 512-bit register."""

    def __init__(self):
        super().__init__(name="int8x64")


int8x64 = Int8x64()
_BYTES = ir.VectorType(ir.IntType(8), 64)


@datamodel.register_default(Int8x64)
class _Int8x64Model(datamodel.models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _BYTES)


def _int8_array(a):
    return isinstance(a, types.Array) and a.layout == "C" and a.dtype == types.int8


def _interleave4(builder, columns):
    """Four <16 x i8> columns as one operand of a depthwise vpdpbusd: byte 4j + t holds column t's
    channel j, plus 128 (the sign bit flipped)."""
    i32 = ir.IntType(32)
    low = builder.shuffle_vector(columns[0], columns[1], ir.Constant(ir.VectorType(i32, 32), list(range(32))))
    high = builder.shuffle_vector(columns[2], columns[3], ir.Constant(ir.VectorType(i32, 32), list(range(32))))
    order = [16 * t + j for j in range(LANES) for t in range(GROUP)]   # element 16t + j of (low, high)
    interleaved = builder.shuffle_vector(low, high, ir.Constant(ir.VectorType(i32, 64), order))
    return builder.bitcast(builder.xor(interleaved, ir.Constant(_BYTES, [-128] * 64)), _VECTOR)


def _load_bytes(builder, pointer, count):
    """The first count (<= 16) bytes at pointer, zeros after them (a masked load where count < 16:
    those bytes are not read). A plain load where count is 16: without AVX-512 BW there is no
    masked byte load, and LLVM makes one of sixteen tested byte loads (the portable depthwise
    kernel ran V2's layers 3x slower so on the Zen 3 machine)."""
    i8x16, i32 = ir.VectorType(ir.IntType(8), LANES), ir.IntType(32)
    pointer = builder.bitcast(pointer, ir.IntType(8).as_pointer())
    whole = builder.icmp_signed(">=", count, ir.Constant(count.type, LANES))
    with builder.if_else(whole, likely=True) as (then, otherwise):
        with then:
            plain = builder.load(builder.bitcast(pointer, i8x16.as_pointer()), align=1)
            plain_block = builder.block
        with otherwise:
            mask = builder.icmp_signed("<", ir.Constant(_VECTOR, list(range(LANES))), _splat(builder, count, i32))
            fnty = ir.FunctionType(i8x16, [pointer.type, i32, mask.type, i8x16])
            load = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.load.v16i8.p0")
            masked = builder.call(load, [pointer, ir.Constant(i32, 1), mask, ir.Constant(i8x16, [0] * LANES)])
            masked_block = builder.block
    loaded = builder.phi(i8x16)
    loaded.add_incoming(plain, plain_block)
    loaded.add_incoming(masked, masked_block)
    return loaded


@intrinsic
def columns4(typingctx, x, index, step, count):
    """The operand of a depthwise vpdpbusd: the four int8 vectors x[i : i + count], i = index +
    t * step (t = 0..3: 16 channels of four neighbouring input columns), interleaved so that lane
    j holds channel j of the four, byte t from column t, each as x + 128 (vpdpbusd's unsigned
    bytes; lanes past count: 0 + 128). x C-contiguous int8, flat indices."""
    if not (_int8_array(x) and all(isinstance(a, types.Integer) for a in (index, step, count))):
        return None

    def codegen(context, builder, signature, args):
        x, index, step, count = (context.cast(builder, a, t, types.intp) if i > 0 else a
                                 for i, (a, t) in enumerate(zip(args, signature.args)))
        data = context.make_array(signature.args[0])(context, builder, x).data
        columns = []
        for t in range(GROUP):
            offset = builder.add(index, builder.mul(step, ir.Constant(index.type, t)))
            columns.append(_load_bytes(builder, builder.gep(data, [offset]), count))
        return _interleave4(builder, columns)

    return int32x16(x, index, step, count), codegen


@intrinsic
def columns4_padded(typingctx, x, pad, i0, i1, i2, i3, count):
    """`columns4` for the border: columns x[i_t : i_t + count] at any four indices, an index below
    0 reading `pad` (16 bytes holding z_x, the padding's value) instead."""
    if not (_int8_array(x) and _int8_array(pad) and isinstance(count, types.Integer)
            and all(isinstance(i, types.Integer) for i in (i0, i1, i2, i3))):
        return None

    def codegen(context, builder, signature, args):
        x, pad, *indices, count = args
        count = context.cast(builder, count, signature.args[6], types.intp)
        x_data = context.make_array(signature.args[0])(context, builder, x).data
        pad_data = context.make_array(signature.args[1])(context, builder, pad).data
        columns = []
        for index, argtype in zip(indices, signature.args[2:6]):
            index = context.cast(builder, index, argtype, types.intp)
            inside = builder.icmp_signed(">=", index, ir.Constant(index.type, 0))
            columns.append(_load_bytes(builder, builder.select(inside, builder.gep(x_data, [index]), pad_data), count))
        return _interleave4(builder, columns)

    return int32x16(x, pad, i0, i1, i2, i3, count), codegen


def _byte_mask(builder, count):
    count = builder.trunc(count, ir.IntType(32)) if count.type.width > 32 else builder.sext(count, ir.IntType(32))
    lanes = ir.Constant(ir.VectorType(ir.IntType(32), 64), list(range(64)))
    splat = builder.shuffle_vector(
        builder.insert_element(ir.Constant(ir.VectorType(ir.IntType(32), 64), ir.Undefined), count, ir.Constant(ir.IntType(32), 0)),
        ir.Constant(ir.VectorType(ir.IntType(32), 64), ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), 64), [0] * 64))
    return builder.icmp_signed("<", lanes, splat)


@intrinsic
def load64_int8(typingctx, array, index, count):
    """array[index + j] for j < count (<= 64), 0 in the other lanes, which are not read."""
    if not (_int8_array(array) and isinstance(index, types.Integer) and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        element = builder.bitcast(_element(context, builder, signature, args[0], args[1]), _BYTES.as_pointer())
        fnty = ir.FunctionType(_BYTES, [element.type, ir.IntType(32), ir.VectorType(ir.IntType(1), 64), _BYTES])
        load = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.load.v64i8.p0")
        return builder.call(load, [element, ir.Constant(ir.IntType(32), 1), _byte_mask(builder, args[2]),
                                   ir.Constant(_BYTES, [0] * 64)])

    return int8x64(array, index, count), codegen


@intrinsic
def store64_int8(typingctx, array, index, vector, count):
    """array[index + j] = vector[j] for j < count (<= 64); the other lanes are not written."""
    if not (_int8_array(array) and isinstance(index, types.Integer) and vector == int8x64
            and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        element = builder.bitcast(_element(context, builder, signature, args[0], args[1]), _BYTES.as_pointer())
        fnty = ir.FunctionType(ir.VoidType(), [_BYTES, element.type, ir.IntType(32), ir.VectorType(ir.IntType(1), 64)])
        store = cgutils.get_or_insert_function(builder.module, fnty, "llvm.masked.store.v64i8.p0")
        builder.call(store, [args[2], element, ir.Constant(ir.IntType(32), 1), _byte_mask(builder, args[3])])
        return context.get_dummy_value()

    return types.void(array, index, vector, count), codegen


@intrinsic
def unsigned64(typingctx, v):
    """v + 128 in each of 64 int8 lanes (the sign bit flipped): int8 values as vpdpbusd's unsigned
    bytes."""
    if v != int8x64:
        return None

    def codegen(context, builder, signature, args):
        return builder.xor(args[0], ir.Constant(_BYTES, [-128] * 64))

    return int8x64(v), codegen


@intrinsic
def copy16_unsigned(typingctx, dst, d, src, s):
    """dst[d:d + 16] = src[s:s + 16] + 128 (the sign bit flipped), int8 arrays, flat indices: one
    plain 16-byte load and store, for copies whose bytes past the ones wanted may be overwritten
    and read (both ranges inside their arrays: the caller checks)."""
    if not (_int8_array(dst) and _int8_array(src) and isinstance(d, types.Integer) and isinstance(s, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        i8x16 = ir.VectorType(ir.IntType(8), LANES)
        dst_at = builder.bitcast(_element(context, builder, signature, args[0], args[1]), i8x16.as_pointer())
        src_data = context.make_array(signature.args[2])(context, builder, args[2]).data
        src_at = builder.bitcast(builder.gep(src_data, [context.cast(builder, args[3], signature.args[3], types.intp)]),
                                 i8x16.as_pointer())
        value = builder.load(src_at, typ=i8x16, align=1)
        builder.store(builder.xor(value, ir.Constant(i8x16, [-128] * LANES)), dst_at, align=1)
        return context.get_dummy_value()

    return types.void(dst, d, src, s), codegen


@intrinsic
def splat64(typingctx, value):
    """An int8 value in all 64 lanes."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        byte = context.cast(builder, args[0], signature.args[0], types.int8)
        lane0 = builder.insert_element(ir.Constant(_BYTES, ir.Undefined), byte, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(lane0, ir.Constant(_BYTES, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), 64), [0] * 64))

    return int8x64(value), codegen


@intrinsic
def lookup64(typingctx, t0, t1, t2, t3, x):
    """table[x + 128] in each of 64 lanes, the 256-entry table given as its four 64-byte quarters:
    x < 0 (entries 0..127) from t0, t1 and x >= 0 (128..255) from t2, t3, each by one `vpermi2b`,
    which indexes 128 bytes by the low 7 bits of x (x + 128 and x agree on them)."""
    if not all(v == int8x64 for v in (t0, t1, t2, t3, x)):
        return None

    def codegen(context, builder, signature, args):
        t0, t1, t2, t3, x = args
        fnty = ir.FunctionType(_BYTES, [_BYTES] * 3)
        permute = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.vpermi2var.qi.512")
        negative = builder.call(permute, [t0, x, t1])
        positive = builder.call(permute, [t2, x, t3])
        return builder.select(builder.icmp_signed("<", x, ir.Constant(_BYTES, [0] * 64)), negative, positive)

    return int8x64(t0, t1, t2, t3, x), codegen


# -- packed weights ---------------------------------------------------------------------------------
def pack_weight(w):
    """w (Cin, Cout) int8 -> (words, colsum): words int32 (ceil(Cin/4) * width,), word k * width + c
    holding w[4k:4k+4, c] (zero padded; width = Cout rounded up to 16, plus 16 where that is a
    multiple of 1024), colsum int32 (width,).

    A row of words is never a multiple of 4 KiB: the kernel loads one 64-byte vector from each
    row in turn, and rows 4 KiB apart all fall in one set of the L1 cache, which then holds 12
    of them (with 4 KiB rows the one-pixel path had run V3-Small's 576 -> 1024 classifier 2.7x
    slower than the 8-row tile; padded, 0.55x the tile's time)."""
    cin, cout = w.shape
    groups, width = -(-cin // GROUP), -(-cout // LANES) * LANES
    width += LANES if width % 1024 == 0 else 0
    padded = np.zeros((groups * GROUP, width), np.int8)
    padded[:cin, :cout] = w
    # x86 is little-endian: byte j of word [k, c] is w[4k + j, c]
    words = np.ascontiguousarray(padded.reshape(groups, GROUP, width).transpose(0, 2, 1)).view(np.int32)
    return words.reshape(-1), padded.astype(np.int32).sum(axis=0, dtype=np.int32)


def pack_pairs(w):
    """w (Cin, Cout) int8 -> (words, colsum) for the int16-pair kernel (`dpwssd`): words int32
    (ceil(Cin/2) * width,), word k * width + c holding w[2k, c] (its low half) and w[2k+1, c]
    (its high half) as int16, zero padded; width and colsum as `pack_weight`'s."""
    cin, cout = w.shape
    pairs, width = -(-cin // 2), -(-cout // LANES) * LANES
    width += LANES if width % 1024 == 0 else 0       # rows of words not 4 KiB apart: `pack_weight`
    padded = np.zeros((pairs * 2, width), np.int16)
    padded[:cin, :cout] = w
    # little-endian: half j of word [k, c] is w[2k + j, c]
    words = np.ascontiguousarray(padded.reshape(pairs, 2, width).transpose(0, 2, 1)).view(np.int32)
    return words.reshape(-1), padded.astype(np.int32).sum(axis=0, dtype=np.int32)


_PACKED = {}  # (id(w), pack) -> (weak reference to w, its data pointer, its shape, pack(w))


def packed_weight(w, pack=pack_weight):
    """pack(w) (`pack_weight`, or `pack_pairs`), computed once per weight array.

    The caller, `QConv.run` (qops.py), hands `pointwise_int8` the same weight array on every call
    and keeps no per-kernel state, so the packed copy is kept here, keyed by the array's id and
    checked against the array itself: a weak reference drops the entry when the array is freed
    (a later array that reuses the id is packed afresh), and the data pointer and shape must
    still match. Weights are read as constants, as QConv's are: writing into a weight array after
    it has run is not seen. (The bias and z_x are call arguments, so their correction is folded
    into the accumulators' start by the kernel, Cout operations per call.)
    """
    key = (id(w), pack)
    entry = _PACKED.get(key)
    if entry is not None:
        ref, pointer, shape, packed = entry
        if ref() is w and pointer == w.ctypes.data and shape == w.shape:
            return packed
    packed = pack(w)
    _PACKED[key] = (weakref.ref(w, lambda _, key=key: _PACKED.pop(key, None)), w.ctypes.data, w.shape, packed)
    return packed


__all__ = ["GROUP", "LANES", "add16", "broadcast16", "columns4", "columns4_padded", "dpbusd", "dpwssd",
           "lookup32", "pack_pairs", "packed_enabled", "pairs_enabled", "has_vbmi", "has_vnni", "int32x16", "int8x64", "load16",
           "load16_int8", "load16_part", "load64_int8", "lookup64", "store64_int8",
           "mul16", "multiply16", "pack_weight", "splat64", "packed_weight", "requantize16", "requantize16_layer", "requantize16_right", "splat16",
           "store16", "store16_int8", "sub16", "unsigned64", "vnni_enabled"]
