"""Arrays over a flat buffer, by offset and shape: how the op table names its tensors.

`view(buffer, offset, shape)` is the C-contiguous array of `shape` whose first element is
`buffer[offset]`, made in a few instructions: no bounds or size check (the op table's offsets and
shapes are checked when the plan is made) and no reference count (like `numba.carray`: the view
borrows the buffer, which the plan holds for as long as the table runs). Slicing and `reshape`
did the same with checks and reference counting, about 30 times over in the op table's tile
dispatch, which made it one of the costlier functions to compile (1.8 s of a cold start).
A shape with a zero gives an empty array (an "absent" tensor, whatever its offset).
"""
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array


@intrinsic
def view(typingctx, buffer, offset, shape):
    """buffer: 1-D C-contiguous array; offset: int (elements); shape: a tuple of ints."""
    if not (isinstance(buffer, types.Array) and buffer.ndim == 1 and buffer.layout == "C"
            and isinstance(offset, types.Integer) and isinstance(shape, types.BaseTuple)
            and len(shape) > 0 and all(isinstance(d, types.Integer) for d in shape)):
        return None
    result = types.Array(buffer.dtype, len(shape), "C")
    sig = result(buffer, offset, shape)

    def codegen(context, builder, signature, args):
        buffer_value, offset_value, shape_value = args
        intp = context.get_value_type(types.intp)
        source = make_array(signature.args[0])(context, builder, buffer_value)
        first = builder.sext(offset_value, intp) if offset_value.type.width < intp.width else offset_value
        data = builder.gep(source.data, [first])
        dims = [context.cast(builder, builder.extract_value(shape_value, i), signature.args[2][i], types.intp)
                for i in range(len(signature.args[2]))]
        itemsize = context.get_abi_sizeof(context.get_data_type(signature.return_type.dtype))
        strides, stride = [], intp(itemsize)
        for dim in reversed(dims):          # C order: the last axis is contiguous
            strides.insert(0, stride)
            stride = builder.mul(stride, dim)
        out = make_array(signature.return_type)(context, builder)
        populate_array(out, data=data, shape=cgutils.pack_array(builder, dims, intp),
                       strides=cgutils.pack_array(builder, strides, intp), itemsize=intp(itemsize), meminfo=None)
        return out._getvalue()

    return sig, codegen


__all__ = ["view"]
