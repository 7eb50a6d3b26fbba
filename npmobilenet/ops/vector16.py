"""float32 vectors in AVX-512 registers (16 lanes, and 8 for narrow remainders): Numba types and the
few intrinsics that use them.

Numba has no vector type, so `float32x16` is one: a Numba type whose LLVM value is
`<16 x float>` (`float32x8`: `<8 x float>`, half a register, half the work on CPUs that run
512-bit instructions in two halves), kept in a register once LLVM promotes the kernel's locals.
With it a kernel names its register tile (`matmul_avx512.py`: 8 pixels by 32 output channels, 16 accumulators) and
LLVM allocates exactly that; written as plain loops, the same product was left to the vectoriser,
which keeps no tile in registers. The intrinsics are LLVM's generic vector instructions (loads,
masked loads and stores, broadcast, `llvm.fma`, add, multiply, min, max); a CPU without 512-bit
registers would run them in halves and spill the tile, so the kernels that use them run only where
`has_avx512()`; with AVX2 (`has_avx2()`) the matrix product runs a tile of 8-lane vectors
(`matmul_avx2.py`), and the rest keep their portable or OpenBLAS path.

Arrays are passed whole (C-contiguous float32, any rank) with a flat element index; no bounds
check, no wraparound: the kernels compute their indices. `load`, `load_part`, `broadcast` and
`splat` make 16-lane vectors (`splat8` an 8-lane one); their `_like` forms make a vector of the
type of their first argument (16 or 8 lanes), so that one kernel compiles for both widths; the
rest take either.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils, datamodel
from numba.extending import intrinsic

from npmobilenet.config import cpu_features

LANES = 16

def has_avx512():
    """Whether the CPU Numba compiles for has AVX-512 F (`config.cpu_features`)."""
    return "avx512f" in cpu_features()


def has_avx2():
    """Whether it has AVX2 and FMA: 8-lane vectors (`float32x8`) in 16 registers, fused multiply-add."""
    return {"avx2", "fma"} <= cpu_features()


class Float32Vector(types.Type):
    """`lanes` float32 values in (part of) one 512-bit register."""

    def __init__(self, lanes):
        self.lanes = lanes
        super().__init__(name=f"float32x{lanes}")


float32x16, float32x8 = Float32Vector(16), Float32Vector(8)
_FLOAT = ir.FloatType()
_I32 = ir.IntType(32)


@datamodel.register_default(Float32Vector)
class _Float32VectorModel(datamodel.models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, ir.VectorType(_FLOAT, fe_type.lanes))


def _vector(lanes):
    return ir.VectorType(_FLOAT, lanes)


def _float32_array(a):
    return isinstance(a, types.Array) and a.layout == "C" and a.dtype == types.float32


def _pointer(context, builder, signature, args, lanes):
    """args[0] (a C-contiguous array) at flat element args[1], as a pointer to `lanes` floats."""
    data = context.make_array(signature.args[0])(context, builder, args[0]).data
    element = builder.gep(data, [context.cast(builder, args[1], signature.args[1], types.intp)])
    return builder.bitcast(element, _vector(lanes).as_pointer())


def _splat_value(builder, value, lanes):
    lane0 = builder.insert_element(ir.Constant(_vector(lanes), ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(lane0, ir.Constant(_vector(lanes), ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes))


def _mask(builder, count, lanes):
    """Lanes j < count (an integer value) on, as a <lanes x i1> mask."""
    count = builder.trunc(count, _I32) if count.type.width > 32 else builder.sext(count, _I32)
    vector = ir.VectorType(_I32, lanes)
    splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vector, ir.Undefined), count, ir.Constant(_I32, 0)),
                                   ir.Constant(vector, ir.Undefined), ir.Constant(vector, [0] * lanes))
    return builder.icmp_signed("<", ir.Constant(vector, list(range(lanes))), splat)


def _load(context, builder, signature, args, lanes):
    return builder.load(_pointer(context, builder, signature, args, lanes), typ=_vector(lanes), align=4)


def _load_part(context, builder, signature, args, lanes):
    pointer = _pointer(context, builder, signature, args, lanes)
    mask = _mask(builder, args[2], lanes)
    fnty = ir.FunctionType(_vector(lanes), [pointer.type, _I32, mask.type, _vector(lanes)])
    masked_load = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.masked.load.v{lanes}f32.p0")
    return builder.call(masked_load, [pointer, ir.Constant(_I32, 4), mask, ir.Constant(_vector(lanes), [0.0] * lanes)])


def _broadcast(context, builder, signature, args, lanes):
    data = context.make_array(signature.args[0])(context, builder, args[0]).data
    element = builder.gep(data, [context.cast(builder, args[1], signature.args[1], types.intp)])
    return _splat_value(builder, builder.load(element, typ=_FLOAT, align=4), lanes)


def _splat(context, builder, signature, args, lanes):
    return _splat_value(builder, context.cast(builder, args[0], signature.args[0], types.float32), lanes)


def _index_args(array, index):
    return _float32_array(array) and isinstance(index, types.Integer)


def _index_count_args(array, index, count):
    return _index_args(array, index) and isinstance(count, types.Integer)


def _maker(name, build, check, doc):
    """An intrinsic making a 16-lane vector from its arguments (one to three: a value, or an
    array, an index and maybe a count), and its `_like` form making one of the type of its first
    argument. (Numba's intrinsics take no *args: one typer per arity.)"""
    def typed(args, like=None):
        if not check(*args) or (like is not None and not isinstance(like, Float32Vector)):
            return None
        lanes = 16 if like is None else like.lanes

        def codegen(context, builder, signature, values):
            if like is not None:
                signature, values = signature.replace(args=signature.args[1:]), values[1:]
            return build(context, builder, signature, values, lanes)

        vector = float32x16 if like is None else like
        return (vector(*args) if like is None else vector(like, *args)), codegen

    typers = {1: (lambda typingctx, a: typed((a,)), lambda typingctx, like, a: typed((a,), like)),
              2: (lambda typingctx, a, b: typed((a, b)), lambda typingctx, like, a, b: typed((a, b), like)),
              3: (lambda typingctx, a, b, c: typed((a, b, c)), lambda typingctx, like, a, b, c: typed((a, b, c), like))}
    arity = check.__code__.co_argcount
    made = []
    for typer, suffix in zip(typers[arity], ("", "_like")):
        typer.__name__ = typer.__qualname__ = name + suffix
        typer.__doc__ = doc
        made.append(intrinsic(typer))
    return made


load, load_like = _maker("load", _load, _index_args, "array.flat[index:index + lanes] as a vector (any alignment).")
load_part, load_part_like = _maker("load_part", _load_part, _index_count_args,
                                   "array.flat[index + j] for lanes j < count, 0 in the others, which are not read.")
broadcast, broadcast_like = _maker("broadcast", _broadcast, _index_args, "array.flat[index] in every lane.")
splat, splat_like = _maker("splat", _splat, lambda value: isinstance(value, types.Float),
                           "A float (made float32) in every lane.")


@intrinsic
def splat8(typingctx, value):
    """A float (made float32) in all 8 lanes of a `float32x8`."""
    if not isinstance(value, types.Float):
        return None

    def codegen(context, builder, signature, args):
        return _splat(context, builder, signature, args, 8)

    return float32x8(value), codegen


@intrinsic
def store(typingctx, array, index, vector):
    """array.flat[index:index + lanes] = vector (any alignment)."""
    if not (_index_args(array, index) and isinstance(vector, Float32Vector)):
        return None

    def codegen(context, builder, signature, args):
        builder.store(args[2], _pointer(context, builder, signature, args, vector.lanes), align=4)
        return context.get_dummy_value()

    return types.void(array, index, vector), codegen


@intrinsic
def store_part(typingctx, array, index, vector, count):
    """array.flat[index + j] = vector[j] for lanes j < count; the others are not written. A plain
    store when count covers every lane: on this AMD Zen 4 CPU a masked store, even of all lanes,
    slowed the layers that read those outputs next (V2 with 3x3 depthwise register blocks, not
    kept: 1.00-1.06x the loop tile's time with masked stores, 0.97-1.04x with plain ones)."""
    if not (_index_count_args(array, index, count) and isinstance(vector, Float32Vector)):
        return None

    def codegen(context, builder, signature, args):
        lanes = vector.lanes
        pointer = _pointer(context, builder, signature, args, lanes)
        count_value = context.cast(builder, args[3], signature.args[3], types.intp)
        every_lane = builder.icmp_signed(">=", count_value, ir.Constant(count_value.type, lanes))
        with builder.if_else(every_lane, likely=True) as (whole, part):
            with whole:
                builder.store(args[2], pointer, align=4)
            with part:
                mask = _mask(builder, args[3], lanes)
                fnty = ir.FunctionType(ir.VoidType(), [_vector(lanes), pointer.type, _I32, mask.type])
                masked_store = cgutils.get_or_insert_function(builder.module, fnty,
                                                              f"llvm.masked.store.v{lanes}f32.p0")
                builder.call(masked_store, [args[2], pointer, ir.Constant(_I32, 4), mask])
        return context.get_dummy_value()

    return types.void(array, index, vector, count), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c per lane, rounded once (`llvm.fma`: vfmadd)."""
    if not (isinstance(a, Float32Vector) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        vector = _vector(a.lanes)
        fnty = ir.FunctionType(vector, [vector] * 3)
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fma.v{a.lanes}f32"), list(args))

    return a(a, b, c), codegen


@intrinsic
def fence(typingctx, a):
    """a, unchanged, as a barrier LLVM's fast-math rewriting does not cross (`llvm.arithmetic.fence`):
    an epilogue computed through it rounds the same way wherever it is inlined (without it, the
    hard-swish of the one-row product's second 8-lane halves differed from the 6-row block's in
    the last bit: tests/test_inference_kernels.py, the packed linear at every batch size)."""
    if not isinstance(a, Float32Vector):
        return None

    def codegen(context, builder, signature, args):
        vector = _vector(a.lanes)
        fnty = ir.FunctionType(vector, [vector])
        return builder.call(cgutils.get_or_insert_function(builder.module, fnty, f"llvm.arithmetic.fence.v{a.lanes}f32"),
                            list(args))

    return a(a), codegen


def _binary(name, build):
    def typer(typingctx, a, b):
        if not (isinstance(a, Float32Vector) and a == b):
            return None

        def codegen(context, builder, signature, args):
            return build(builder, *args)

        return a(a, b), codegen

    typer.__name__ = typer.__qualname__ = name
    return intrinsic(typer)


add = _binary("add", lambda builder, a, b: builder.fadd(a, b))
mul = _binary("mul", lambda builder, a, b: builder.fmul(a, b))
# a > b ? a : b and a < b ? a : b: the scalar epilogue's max and min (`ops/epilogue.py`)
maximum = _binary("maximum", lambda builder, a, b: builder.select(builder.fcmp_ordered(">", a, b), a, b))
minimum = _binary("minimum", lambda builder, a, b: builder.select(builder.fcmp_ordered("<", a, b), a, b))
