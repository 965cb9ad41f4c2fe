"""The Winograd input and output transforms on 16-channel vectors, as LLVM IR intrinsics for Numba kernels.

Why IR: a tile's transform reads (m+2)^2 vectors and writes as many; written as a Numba loop
over the 16 lanes, LLVM cannot prove that the input and the transformed buffer do not overlap
and leaves the loop scalar. Here every vector is an SSA value, and ``B^T`` and ``A^T`` of
:mod:`._transforms` are applied in Lavin and Gray's factorised form (shared sums, a fused
multiply-add per other coefficient).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .._activations import _fma, activate_any
from ..direct._simd import (
    _VEC,
    _activation_args,
    _as_i64,
    _counted_loop,
    _data,
    _is_f32_array,
    _lanes_below,
    _masked_load_store,
    _splat,
)
from ..direct._tiles import LANES
from ._transforms import TILE

_I64 = ir.IntType(64)


def _scaled(builder, v, c, total):
    """``total + c * v`` (one fused multiply-add)."""
    return _fma(builder, v, ir.Constant(_VEC, [c] * LANES), total)


def _input_rows4(builder, d):
    """``B^T d`` of F(4x4, 3x3) for six vectors, with the shared sums of Lavin and Gray's
    factorisation: 14 operations where the matrix's 22 non-zero terms took 22."""
    a, b = builder.fadd(d[3], d[4]), builder.fadd(d[1], d[2])
    c, e = builder.fsub(d[4], d[3]), builder.fsub(d[1], d[2])
    f, g = builder.fsub(d[4], d[2]), builder.fsub(d[3], d[1])
    return [_scaled(builder, d[0], 4.0, _scaled(builder, d[2], -5.0, d[4])), _scaled(builder, b, -4.0, a),
            _scaled(builder, e, 4.0, c), _scaled(builder, g, 2.0, f), _scaled(builder, g, -2.0, f),
            _scaled(builder, d[1], 4.0, _scaled(builder, d[3], -5.0, d[5]))]


def _output_rows4(builder, m):
    """``A^T m`` of F(4x4, 3x3) for six vectors, factorised likewise: 11 operations for 18 terms."""
    a, b = builder.fadd(m[1], m[2]), builder.fsub(m[1], m[2])
    c, d = builder.fadd(m[3], m[4]), builder.fsub(m[3], m[4])
    return [builder.fadd(builder.fadd(m[0], a), c), _scaled(builder, d, 2.0, b), _scaled(builder, c, 4.0, a),
            builder.fadd(_scaled(builder, d, 8.0, b), m[5])]


def _vector_at(builder, base, index):
    return builder.bitcast(builder.gep(base, [index]), _VEC.as_pointer())


def _input_transform(m: int):
    apply_bt = {4: _input_rows4}[m]  # B^T applied to six vectors
    a = m + 2

    def typer(typingctx, x, x_start, row_step, v, v_start, pos_step):
        """``V = B^T d B`` of the ``(m+2) x (m+2)`` tile of 16-channel pixels at ``x[x_start]`` (rows
        ``row_step`` floats apart, pixels 16), written to ``v[v_start + (i * (m+2) + j) * pos_step]``."""
        if not (_is_f32_array(x) and _is_f32_array(v)
                and all(isinstance(t, types.Integer) for t in (x_start, row_step, v_start, pos_step))):
            return None
        sig = types.void(x, x_start, row_step, v, v_start, pos_step)

        def codegen(context, builder, sig, args):
            xp, vp = _data(context, builder, sig.args[0], args[0]), _data(context, builder, sig.args[3], args[3])
            x_start, row_step, v_start, pos_step = (_as_i64(context, builder, args[i], sig.args[i]) for i in (1, 2, 4, 5))
            d = []
            for r in range(a):
                row = builder.add(x_start, builder.mul(row_step, ir.Constant(_I64, r)))
                loads = []
                for c in range(a):
                    value = builder.load(_vector_at(builder, xp, builder.add(row, ir.Constant(_I64, c * LANES))))
                    value.align = 4
                    loads.append(value)
                d.append(loads)
            columns = [apply_bt(builder, [d[r][c] for r in range(a)]) for c in range(a)]  # (c, i)
            for i in range(a):
                for j, value in enumerate(apply_bt(builder, [columns[c][i] for c in range(a)])):
                    index = builder.add(v_start, builder.mul(pos_step, ir.Constant(_I64, i * a + j)))
                    builder.store(value, _vector_at(builder, vp, index)).align = 4
            return context.get_dummy_value()

        return sig, codegen

    typer.__name__ = f"input_transform_{m}"
    return intrinsic(typer)


def _output_transform(m: int):
    apply_at = {4: _output_rows4}[m]  # A^T applied to six vectors
    a = m + 2

    def typer(typingctx, mb, m_start, pos_step, y, y_start, row_step, pixel_step, lane_step, written, rows, cols,
              channels, bias, b_start, residual, has_residual, act, act_a, act_b):
        """``Y = A^T M A`` of the products ``mb[m_start + (i * (m+2) + j) * pos_step]`` (16 output
        channels), plus ``bias[b_start:]`` (and the residual read where ``y`` is written), activated,
        stored for the first ``rows`` x ``cols`` of its m x m pixels and the first ``channels`` lanes:
        pixel (r, c)'s lane ``l`` at ``y[y_start + r * row_step + c * pixel_step + l * lane_step]``.
        ``lane_step`` 1 (NCHW16c, or NCHW planes of one pixel): one masked vector store a pixel of
        its first ``written`` lanes, those past ``channels`` written as 0 (a blocked tensor's padding
        channels: ``written`` 16); otherwise one float a lane (NCHW planes)."""
        ints = (m_start, pos_step, y_start, row_step, pixel_step, lane_step, written, rows, cols, channels, b_start)
        if not (_is_f32_array(mb) and _is_f32_array(y) and _is_f32_array(bias) and _is_f32_array(residual)
                and all(isinstance(t, types.Integer) for t in ints) and isinstance(has_residual, types.Boolean)):
            return None
        sig = types.void(mb, m_start, pos_step, y, y_start, row_step, pixel_step, lane_step, written, rows, cols,
                         channels, bias, b_start, residual, has_residual, act, act_a, act_b)

        def codegen(context, builder, sig, args):
            mp, yp = _data(context, builder, sig.args[0], args[0]), _data(context, builder, sig.args[3], args[3])
            bp, rp = _data(context, builder, sig.args[12], args[12]), _data(context, builder, sig.args[14], args[14])
            (m_start, pos_step, y_start, row_step, pixel_step, lane_step, written, rows, cols, channels,
             b_start) = (_as_i64(context, builder, args[i], sig.args[i]) for i in (1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 13))
            has_residual = args[15]
            act, p0, p1 = _activation_args(context, builder, sig, args, 16)
            load, store = _masked_load_store(builder)
            i32 = ir.IntType(32)
            zeros = ir.Constant(_VEC, [0.0] * LANES)
            mask = _lanes_below(builder, channels)
            bias = builder.call(load, [_vector_at(builder, bp, b_start), ir.Constant(i32, 4), mask, zeros])
            products = []
            for i in range(a):
                for j in range(a):
                    index = builder.add(m_start, builder.mul(pos_step, ir.Constant(_I64, i * a + j)))
                    value = builder.load(_vector_at(builder, mp, index))
                    value.align = 4
                    products.append(value)
            columns = [apply_at(builder, [products[i * a + j] for i in range(a)]) for j in range(a)]  # (j, k)
            # the m x m results through a stack array: the epilogue below is emitted once, not m * m times
            out = cgutils.alloca_once(builder, _VEC, size=m * m)  # (in the entry block: this code runs in loops)
            for k in range(m):
                for c, value in enumerate(apply_at(builder, [columns[j][k] for j in range(a)])):
                    builder.store(builder.fadd(value, bias), builder.gep(out, [ir.Constant(_I64, k * m + c)]))

            def pixel(k, c):
                value = builder.load(builder.gep(out, [builder.add(builder.mul(k, ir.Constant(_I64, m)), c)]))
                at_ = builder.add(y_start, builder.add(builder.mul(k, row_step), builder.mul(c, pixel_step)))
                vector_path = builder.icmp_signed("==", lane_step, ir.Constant(_I64, 1))
                with builder.if_else(vector_path) as (blocked, planes):
                    with blocked:
                        ptr = _vector_at(builder, yp, at_)
                        read = builder.and_(mask, _splat(builder, has_residual))
                        with_res = builder.fadd(value, builder.call(load, [_vector_at(builder, rp, at_), ir.Constant(i32, 4),
                                                                           read, zeros]))
                        v = builder.select(has_residual, with_res, value)
                        v = builder.select(mask, activate_any(builder, v, act, p0, p1), zeros)
                        builder.call(store, [v, ptr, ir.Constant(i32, 4), _lanes_below(builder, written)])
                    with planes:
                        res = _gather_lanes(builder, rp, at_, lane_step, channels, has_residual)
                        v = activate_any(builder, builder.fadd(value, res), act, p0, p1)
                        for lane in range(LANES):
                            inside = builder.icmp_signed(">", channels, ir.Constant(_I64, lane))
                            index = builder.add(at_, builder.mul(lane_step, ir.Constant(_I64, lane)))
                            with builder.if_then(inside):
                                builder.store(builder.extract_element(v, ir.Constant(i32, lane)), builder.gep(yp, [index]))

            _loop(builder, rows, lambda k: _loop(builder, cols, lambda c: pixel(k, c)))
            return context.get_dummy_value()

        return sig, codegen

    typer.__name__ = f"output_transform_{m}"
    return intrinsic(typer)


def _gather_lanes(builder, base, start, lane_step, channels, has_residual):
    """The vector of ``base[start + l * lane_step]`` for lanes ``l < channels`` (0 elsewhere, and
    everywhere without a residual): one float a lane, through a stack vector."""
    i32 = ir.IntType(32)
    slot = cgutils.alloca_once(builder, _VEC)
    builder.store(ir.Constant(_VEC, [0.0] * LANES), slot)
    lanes = builder.bitcast(slot, ir.FloatType().as_pointer())
    with builder.if_then(has_residual):
        for lane in range(LANES):
            with builder.if_then(builder.icmp_signed(">", channels, ir.Constant(_I64, lane))):
                value = builder.load(builder.gep(base, [builder.add(start, builder.mul(lane_step, ir.Constant(_I64, lane)))]))
                builder.store(value, builder.gep(lanes, [ir.Constant(i32, lane)]))
    return builder.load(slot)


def _loop(builder, n, body):
    """``for i < n: body(i)`` (``n`` an i64)."""
    def step(i, _):
        body(i)
        return []

    _counted_loop(builder, n, [], step)


@intrinsic
def any_nonfinite(typingctx, x, start, count):
    """Whether ``x[start:start + count]`` (``count`` a multiple of 16) holds a NaN or an Inf: the sum
    of every vector times 0 is NaN exactly then. One pass over a row just copied (in the
    first-level cache), where a separate check of the input (``core.arrays.all_finite``) would
    read it from memory again."""
    if not (_is_f32_array(x) and isinstance(start, types.Integer) and isinstance(count, types.Integer)):
        return None
    sig = types.boolean(x, start, count)

    def codegen(context, builder, sig, args):
        xp = _data(context, builder, sig.args[0], args[0])
        start, count = (_as_i64(context, builder, args[i], sig.args[i]) for i in (1, 2))
        zeros = ir.Constant(_VEC, [0.0] * LANES)

        def step(i, carried):
            value = builder.load(_vector_at(builder, xp, builder.add(start, builder.mul(i, ir.Constant(_I64, LANES)))))
            value.align = 4
            return [builder.fadd(carried[0], builder.fmul(value, zeros))]

        total = _counted_loop(builder, builder.sdiv(count, ir.Constant(_I64, LANES)), [zeros], step)[0]
        lanes = builder.fcmp_unordered("uno", total, total)
        bits = builder.bitcast(lanes, ir.IntType(LANES))
        return builder.icmp_unsigned("!=", bits, ir.Constant(ir.IntType(LANES), 0))

    return sig, codegen


#: The intrinsics of F(TILE x TILE, 3 x 3).
input_transform = _input_transform(TILE)
output_transform = _output_transform(TILE)
