"""Atomic integer operations for Numba kernels (LLVM's `atomicrmw`, `cmpxchg`, atomic loads and
stores), a spin-wait hint and the CPU's cycle counter.

Numba has no atomics; `program.py` needs them to let threads share out the tiles of a network
without a lock: a compare-and-swap that hands a thread the next tile only while the run it
belongs to lasts, a fetch-and-add that counts finished tiles, and an acquiring load that waits
until the tiles a layer depends on are finished (sequentially consistent add and swap, acquire
load, release store: the writes of a finished tile are visible to the thread that sees it
counted). `workers.py` waits for work by spinning a bounded number of cycles.
"""
import time

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _int64_vector(a):
    return isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.int64


def _element(context, builder, signature, array, i):
    """A pointer to array[i] of the intrinsic's int64 vector argument (its first) at index i (its second)."""
    data = context.make_array(signature.args[0])(context, builder, array).data
    return builder.gep(data, [context.cast(builder, i, signature.args[1], types.int64)])


@intrinsic
def atomic_add(typingctx, counters, index, value):
    """counters[index] += value, atomically; returns the value before the add."""
    if not (_int64_vector(counters) and isinstance(index, types.Integer) and isinstance(value, types.Integer)):
        return None
    sig = types.int64(counters, index, value)

    def codegen(context, builder, signature, args):
        array, i, v = args
        element = _element(context, builder, signature, array, i)
        v = context.cast(builder, v, signature.args[2], types.int64)
        return builder.atomic_rmw("add", element, v, "seq_cst")

    return sig, codegen


@intrinsic
def atomic_load(typingctx, counters, index):
    """counters[index], read atomically (acquire)."""
    if not (_int64_vector(counters) and isinstance(index, types.Integer)):
        return None
    sig = types.int64(counters, index)

    def codegen(context, builder, signature, args):
        array, i = args
        element = _element(context, builder, signature, array, i)
        return builder.load_atomic(element, "acquire", 8)

    return sig, codegen


@intrinsic
def atomic_cas(typingctx, counters, index, expected, value):
    """If counters[index] == expected, set it to value; atomically. Returns whether it did."""
    if not (_int64_vector(counters) and isinstance(index, types.Integer) and isinstance(expected, types.Integer)
            and isinstance(value, types.Integer)):
        return None
    sig = types.boolean(counters, index, expected, value)

    def codegen(context, builder, signature, args):
        array, i, old, new = args
        element = _element(context, builder, signature, array, i)
        old = context.cast(builder, old, signature.args[2], types.int64)
        new = context.cast(builder, new, signature.args[3], types.int64)
        pair = builder.cmpxchg(element, old, new, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 1)

    return sig, codegen


@intrinsic
def atomic_store(typingctx, counters, index, value):
    """counters[index] = value, atomically (release: writes before it are visible to a thread
    that reads the value with `atomic_load`)."""
    if not (_int64_vector(counters) and isinstance(index, types.Integer) and isinstance(value, types.Integer)):
        return None
    sig = types.void(counters, index, value)

    def codegen(context, builder, signature, args):
        array, i, v = args
        element = _element(context, builder, signature, array, i)
        v = context.cast(builder, v, signature.args[2], types.int64)
        builder.store_atomic(v, element, "release", 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def cycle_counter(typingctx):
    """The CPU's cycle counter (x86 `rdtsc`; LLVM's `readcyclecounter`, 0 where there is none)."""
    sig = types.int64()

    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.IntType(64), [])
        read = cgutils.get_or_insert_function(builder.module, fnty, "llvm.readcyclecounter")
        return builder.call(read, [])

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


__all__ = ["atomic_add", "atomic_cas", "atomic_load", "atomic_store", "cpu_relax", "cycle_counter"]


_read_cycles = []


def cycle_rate(seconds=0.1):
    """Cycles of `cycle_counter` per second, counted over a sleep of `seconds` (what turns a traced
    run's cycle counts into time: `Program.trace_records`). Compiles its reader on first use."""
    if not _read_cycles:
        _read_cycles.append(numba.njit(lambda: cycle_counter()))
    read = _read_cycles[0]
    read()
    c0, t0 = read(), time.perf_counter()
    time.sleep(seconds)
    return (read() - c0) / (time.perf_counter() - t0)
