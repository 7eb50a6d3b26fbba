"""Atomic integer operations for Numba kernels (LLVM's `atomicrmw` and atomic loads).

Numba has no atomics; `program.py` needs two to let threads share out the tiles of a network
without a lock: a fetch-and-add that hands each thread the next tile, and an acquiring load that
waits until the tiles a layer depends on are finished (sequentially consistent add, acquire load:
the writes of a finished tile are visible to the thread that sees it counted).
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _int64_vector(a):
    return isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.int64


@intrinsic
def atomic_add(typingctx, counters, index, value):
    """counters[index] += value, atomically; returns the value before the add."""
    if not (_int64_vector(counters) and isinstance(index, types.Integer) and isinstance(value, types.Integer)):
        return None
    sig = types.int64(counters, index, value)

    def codegen(context, builder, signature, args):
        array, i, v = args
        data = context.make_array(signature.args[0])(context, builder, array).data
        i = context.cast(builder, i, signature.args[1], types.int64)
        v = context.cast(builder, v, signature.args[2], types.int64)
        return builder.atomic_rmw("add", builder.gep(data, [i]), v, "seq_cst")

    return sig, codegen


@intrinsic
def atomic_load(typingctx, counters, index):
    """counters[index], read atomically (acquire)."""
    if not (_int64_vector(counters) and isinstance(index, types.Integer)):
        return None
    sig = types.int64(counters, index)

    def codegen(context, builder, signature, args):
        array, i = args
        data = context.make_array(signature.args[0])(context, builder, array).data
        i = context.cast(builder, i, signature.args[1], types.int64)
        return builder.load_atomic(builder.gep(data, [i]), "acquire", 8)

    return sig, codegen


@intrinsic
def cpu_relax(typingctx):
    """A spin-wait hint (x86 `pause`: the waiting thread yields the core's pipeline to its
    sibling hyperthread and leaves the loop without a memory-order flush); nothing elsewhere."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if "x86" in (builder.module.triple or "") or "i686" in (builder.module.triple or ""):
            fnty = ir.FunctionType(ir.VoidType(), [])
            pause = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pause")
            builder.call(pause, [])
        return context.get_dummy_value()

    return sig, codegen


__all__ = ["atomic_add", "atomic_load", "cpu_relax"]
