"""Calling a compiled Numba function through its address, passed as data.

Why: when one Numba function calls another, Numba links the callee's whole compiled module into
the caller's and optimises and compiles the result again, at every level of calls. The op table
(`program.py`) sat on top of every convolution tile and their row helpers, so each tile's code was
optimised and turned into machine code four or five times (the table loop, its tile dispatch,
the parallel region and its outlined body): a cold start of MobileNetV2 spent most of its 51 s
there. Called through an address, a tile is compiled once, in its own module; the caller's
module holds an indirect call only. The address is an ordinary int64 argument (like the BLAS
addresses of `ops/blas.py`), so the caller's machine code stays valid in Numba's on-disk cache.

`CompiledCall(dispatcher, argtypes)` fixes one signature of one dispatcher: `.address()`
compiles (or loads from the cache) that specialisation and returns its entry point, and `.call`
is an intrinsic, `call(address, (arg0, arg1, ...))`, which compiles only for arguments of exactly
those types (so an address can never be called with arguments it was not compiled for) and
propagates an exception the callee raises. The callee returns nothing.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.callconv import excinfo_t
from numba.core.errors import TypingError
from numba.extending import intrinsic


class CompiledCall:
    """One signature of one Numba dispatcher, called by address (see the module docstring)."""

    def __init__(self, dispatcher, argtypes):
        self.dispatcher = dispatcher
        self.argtypes = tuple(argtypes)
        self.call = _make_caller(dispatcher.py_func.__qualname__, self.argtypes)
        self._address = None

    def address(self):
        """The entry point of the dispatcher's build for `argtypes` (compiled on first use)."""
        if self._address is None:
            self.dispatcher.compile(self.argtypes)
            result = self.dispatcher.overloads[self.argtypes]
            if result.signature.return_type != types.none:
                raise TypeError(f"{self.dispatcher.py_func.__qualname__} must return nothing to be called by address, "
                                f"it returns {result.signature.return_type}")
            self._address = int(result.library.get_pointer_to_function(result.fndesc.llvm_func_name))
        return self._address


def _make_caller(name, argtypes):
    @intrinsic
    def call(typingctx, address, arguments):
        if not isinstance(address, types.Integer):
            return None
        if not isinstance(arguments, types.BaseTuple) or tuple(arguments.types) != argtypes:
            got = tuple(arguments.types) if isinstance(arguments, types.BaseTuple) else arguments
            raise TypingError(f"{name} by address takes arguments {argtypes}, got {got}")
        sig = types.none(address, arguments)

        def codegen(context, builder, signature, args):
            address_value, packed = args
            call_conv = context.call_conv
            function_type = call_conv.get_function_type(types.none, argtypes)
            callee = builder.inttoptr(context.cast(builder, address_value, signature.args[0], types.int64),
                                      function_type.as_pointer())
            values = [builder.extract_value(packed, i) for i in range(len(argtypes))]
            # Numba's calling convention (CPUCallConv.call_function, with a pointer as the callee):
            # a slot for the return value, one for exception info, then the arguments flattened
            return_slot = cgutils.alloca_once(builder, call_conv.get_return_type(types.none).pointee)
            builder.store(cgutils.get_null_value(return_slot.type.pointee), return_slot)
            excinfo = cgutils.alloca_once(builder, ir.PointerType(excinfo_t), name="excinfo")
            flat = list(call_conv._get_arg_packer(argtypes).as_arguments(builder, values))
            code = builder.call(callee, [return_slot, excinfo] + flat)
            status = call_conv._get_return_status(builder, code, builder.load(excinfo))
            with cgutils.if_unlikely(builder, status.is_error):
                call_conv.return_status_propagate(builder, status)
            return context.get_dummy_value()

        return sig, codegen

    return call


__all__ = ["CompiledCall"]
