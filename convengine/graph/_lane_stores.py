"""A per-lane affine step on blocked vectors, with streaming stores for arrays far larger than the caches.

Why: DenseNet's batch norm + ReLU steps read a block of its concatenation's buffer and write a
new blocked array, 2 x 100 MiB at batch 32 for its widest. Numba's loop over 16-lane pixels ran
at a third of the memory's rate (8 GB/s against ``np.copyto``'s 14). :func:`lanes_affine` is the
loop written as vectors, and it can write with *non-temporal* stores: an ordinary store first
reads the line it writes (a third stream through memory), a streaming one does not, and it
keeps a 100 MiB output from evicting what the caches hold. 256 channels at 56x56, batch 32, two
threads: 16 ms as Numba's loop, 7.9 ms as vectors, 4.6 ms streaming. Streaming is for outputs
that will not be in a cache when they are read anyway (the caller decides by size).
"""

from __future__ import annotations

from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..backends.direct._simd import _VEC, _as_i64, _counted_loop, _data, _is_f32_array, _splat
from ..core.layouts import BLOCK as LANES
from ..runtime.workspace import ALIGNMENT

#: Bytes a streaming store's address must be a multiple of (an AVX-512 vector, a cache line;
#: ``runtime.workspace.aligned_empty`` gives such arrays).
STREAM_ALIGNMENT = ALIGNMENT
#: Streaming stores are emitted on x86 only (``movntps``; with an ``sfence`` before the job ends).
STREAMS = binding.get_process_triple().startswith(("x86_64", "i686", "i386"))

_I64 = ir.IntType(64)


def _is_int(t) -> bool:
    return isinstance(t, (types.Integer, types.Boolean))


@intrinsic
def lanes_affine(typingctx, x, x_start, y, y_start, vectors, factor, shift, f_start, relu, stream):
    """``y[y_start + 16 v + j] = x[x_start + 16 v + j] * factor[f_start + j] + shift[f_start + j]`` for
    ``v < vectors``, ``j < 16`` (one FMA), then ``max(., 0)`` if ``relu`` (NaN kept: ``NaN < 0`` is false).

    With ``stream`` true and ``y``'s first element on a :data:`STREAM_ALIGNMENT` boundary, the stores
    are non-temporal and fenced at the end, so that what a worker wrote is in memory when the
    parallel region joins; otherwise ordinary stores."""
    if not (_is_f32_array(x) and _is_f32_array(y) and _is_f32_array(factor) and _is_f32_array(shift)
            and all(_is_int(t) for t in (x_start, y_start, vectors, f_start, relu, stream))):
        return None
    sig = types.void(x, x_start, y, y_start, vectors, factor, shift, f_start, relu, stream)

    def codegen(context, builder, sig, args):
        xp, yp, fp, sp = (_data(context, builder, sig.args[i], args[i]) for i in (0, 2, 5, 6))
        x0, y0, n, f0 = (_as_i64(context, builder, args[i], sig.args[i]) for i in (1, 3, 4, 7))
        relu_on, stream_on = (builder.icmp_signed("!=", _as_i64(context, builder, args[i], sig.args[i]), ir.Constant(_I64, 0))
                              for i in (8, 9))

        def vector_at(base, index):
            return builder.bitcast(builder.gep(base, [index]), _VEC.as_pointer())

        f, s = builder.load(vector_at(fp, f0), align=4), builder.load(vector_at(sp, f0), align=4)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), f"llvm.fma.v{LANES}f32")
        zero = ir.Constant(_VEC, [0.0] * LANES)
        clip = _splat(builder, relu_on)

        def loop(streaming: bool):
            def body(v, _):
                at = builder.mul(v, ir.Constant(_I64, LANES))
                value = builder.call(fma, [builder.load(vector_at(xp, builder.add(x0, at)), align=4), f, s])
                value = builder.select(builder.and_(clip, builder.fcmp_ordered("<", value, zero)), zero, value)
                store = builder.store(value, vector_at(yp, builder.add(y0, at)), align=STREAM_ALIGNMENT if streaming else 4)
                if streaming:
                    store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
                return []

            _counted_loop(builder, n, [], body)

        if not STREAMS:
            loop(False)
            return context.get_dummy_value()
        address = builder.ptrtoint(builder.gep(yp, [y0]), _I64)
        aligned = builder.icmp_unsigned("==", builder.and_(address, ir.Constant(_I64, STREAM_ALIGNMENT - 1)),
                                        ir.Constant(_I64, 0))
        with builder.if_else(builder.and_(stream_on, aligned)) as (streamed, cached):
            with streamed:
                loop(True)
                fence = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                       "llvm.x86.sse.sfence")
                builder.call(fence, [])
            with cached:
                loop(False)
        return context.get_dummy_value()

    return sig, codegen
