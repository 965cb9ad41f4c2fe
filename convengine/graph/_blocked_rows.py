"""Pixel-vector loops over rows of channel-blocked activations, written as LLVM IR: what the pools' last pass needs.

Why: a blocked row holds each pixel's 16 channels as 16 contiguous floats, and a pool's
column taps combine whole pixels: a loop over a pixel's 16 lanes is one vector operation,
but Numba's loops over it did not vectorise (stride 2 picked every other pixel lane by
lane: Inception-v3's 147x147 max pool spent 0.5 us a row there, 0.1 us as vectors).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ..backends.direct._simd import _as_i64, _counted_loop, _data, _splat
from ..backends.direct._tiles import LANES

_I64 = ir.IntType(64)


def _element_type(dtype):
    """The LLVM type of a float32 or float64 element."""
    return ir.FloatType() if dtype == types.float32 else ir.DoubleType()


@intrinsic
def pixel_taps(typingctx, out, o_start, src, s_start, pixels, step, taps, tap_step, average, factors, per_pixel):
    """``out[o_start + 16*i : +16]`` = the ``taps`` vectors ``src[s_start + i*step + t*tap_step : +16]``, ``t < taps``,
    combined, for ``i < pixels``: their maximum (NaN propagated as ``np.maximum`` does, first tap first), or
    (``average``) their sum, in tap order, times ``factors[0]`` or, ``per_pixel``, times ``factors[16*i : +16]``.

    ``taps`` >= 1; float32 or float64, all three arrays alike; no bounds checks: the caller guarantees them.
    """
    arrays = (out, src, factors)
    if not (all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" and a.dtype == out.dtype for a in arrays)
            and out.dtype in (types.float32, types.float64)
            and all(isinstance(t, types.Integer) for t in (o_start, s_start, pixels, step, taps, tap_step))
            and isinstance(average, types.Boolean) and isinstance(per_pixel, types.Boolean)):
        return None
    sig = types.void(out, o_start, src, s_start, pixels, step, taps, tap_step, average, factors, per_pixel)

    vec = ir.VectorType(_element_type(out.dtype), LANES)

    def codegen(context, builder, sig, args):
        op, sp, fp = (_data(context, builder, sig.args[i], args[i]) for i in (0, 2, 9))
        o_start, s_start, pixels, step, taps, tap_step = (
            _as_i64(context, builder, args[i], sig.args[i]) for i in (1, 3, 4, 5, 6, 7))
        average, per_pixel = args[8], args[10]
        lanes = ir.Constant(_I64, LANES)
        scale = cgutils.alloca_once(builder, vec, name="pool.scale")

        def vector(p, at):
            value = builder.load(builder.bitcast(builder.gep(p, [at]), vec.as_pointer()))
            value.align = 4
            return value

        def pixel(i, _):
            first = builder.add(s_start, builder.mul(i, step))

            def tap(t, carried):
                (a,) = carried
                v = vector(sp, builder.add(first, builder.mul(builder.add(t, ir.Constant(_I64, 1)), tap_step)))
                keep = builder.or_(builder.fcmp_ordered(">=", a, v), builder.fcmp_unordered("uno", a, a))
                return [builder.select(average, builder.fadd(a, v), builder.select(keep, a, v))]

            (a,) = _counted_loop(builder, builder.sub(taps, ir.Constant(_I64, 1)), [vector(sp, first)], tap)
            with builder.if_then(average):  # the scale read only where there is one, as much of it as there is
                with builder.if_else(per_pixel) as (each, one):
                    with each:
                        builder.store(vector(fp, builder.mul(i, lanes)), scale)
                    with one:
                        builder.store(_splat(builder, builder.load(fp)), scale)
            a = builder.select(average, builder.fmul(a, builder.load(scale)), a)
            store = builder.store(a, builder.bitcast(builder.gep(op, [builder.add(o_start, builder.mul(i, lanes))]),
                                                     vec.as_pointer()))
            store.align = 4
            return []

        _counted_loop(builder, pixels, [], pixel)
        return context.get_dummy_value()

    return sig, codegen
