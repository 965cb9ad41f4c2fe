"""Numba kernels of the ``grouped`` backend: depthwise and small-group convolutions on register tiles.

Per job (one image, one group, one band of output rows) a thread

1. copies the group's input rows of the band into its own buffer, zero-padded and split
   into ``stride_h x stride_w`` *phase planes* (plane ``(a, b)`` holds padded rows ``a, a +
   sh, ...`` and columns ``b, b + sw, ...``), so that every kernel tap of every output pixel
   reads a contiguous run: output ``(i, j)``, tap ``(p, q)`` reads phase plane
   ``(p*dh % sh, q*dw % sw)`` at row ``i + p*dh // sh``, column ``j + q*dw // sw``. Each
   tap is then one fixed offset (``taps``) from the output's own index in a plane flattened
   with the phase planes' width ``wq``: the whole band is one long run of pixels, computed
   in vectors of 16 (the ``wq - out_w`` columns past each row's end are computed and dropped,
   which keeps 7x7 planes' vectors full instead of 7/16 used);
2. runs the register tile (:func:`group_tile`) over that run: up to ``MB`` output channels
   of the group x ``nv`` vectors of 16 pixels held in registers while the reduction (the
   group's input channels x the kernel taps) streams past, each loaded input vector used by
   every output channel of the tile, each weight broadcast to every pixel vector;
3. writes the band's rows to the NCHW output with bias, residual and the activation applied
   (:func:`convengine.backends._activations.finish`), from the tile's flat buffer.

Inputs and outputs are plain NCHW float32; nothing is re-laid-out per call but the band copy,
which stays in the core's caches.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._activations import finish
from ._grouped_tiles import CHANNEL_BLOCKS, MAX_VECTORS
from .direct._kernels import _U, _compiled_width
from .direct._simd import (
    Tile,
    _as_i64,
    _counted_loop,
    _data,
    _is_f32_array,
    copy_floats,
    pack_block,
    tile_store_nchw,
    tile_store_rows,
    tile_zero,
    zero_floats,
)
from .direct._tiles import LANES, TILE_WIDTHS
from .direct._worksharing import job_claims, next_job

# Numba's cache is keyed on this file's text, not on direct._simd's: after an edit to the intrinsics
# there or in ``._activations``, change this line so that cached kernels are compiled again (GELU; blocked depthwise;
# stores unswitched on the common activations; width 12).

_FLOAT = ir.FloatType()
_VEC = ir.VectorType(_FLOAT, LANES)
_I64 = ir.IntType(64)


def _is_i64_vector(t) -> bool:
    return isinstance(t, types.Array) and t.dtype == types.int64 and t.ndim == 1


@intrinsic
def group_tile(typingctx, buf, b_start, c_step, c_count, taps, t_count, w, w_start, out, o_start, o_step,
               mb, nv, accumulate):
    """One register tile: for ``m < mb``, ``v < nv`` and lane ``l`` (``k = v*16 + l``)::

        out[o_start + m*o_step + k] (+)= sum over c < c_count, t < t_count of
            w[w_start + (c*t_count + t)*mb + m] * buf[b_start + c*c_step + taps[t] + k]

    ``+=`` when ``accumulate``, else ``=``. ``mb`` must be one of :data:`CHANNEL_BLOCKS` and
    ``1 <= nv <= MAX_VECTORS[mb]`` (any other pair leaves ``out`` untouched): each pair is a
    loop nest of its own, its accumulators in registers. Whole vectors are read and written:
    the caller leaves slack past its buffers' ends. No bounds checks.
    """
    arrays_ok = _is_f32_array(buf) and _is_f32_array(w) and _is_f32_array(out) and _is_i64_vector(taps)
    ints = (b_start, c_step, c_count, t_count, w_start, o_start, o_step, mb, nv)
    if not (arrays_ok and all(isinstance(t, types.Integer) for t in ints) and isinstance(accumulate, types.Boolean)):
        return None
    sig = types.void(buf, b_start, c_step, c_count, taps, t_count, w, w_start, out, o_start, o_step, mb, nv, accumulate)

    def codegen(context, builder, sig, args):
        bp, tp, wp, op = (_data(context, builder, sig.args[i], args[i]) for i in (0, 4, 6, 8))
        b_start, c_step, c_count, t_count, w_start, o_start, o_step, mb, nv = (
            _as_i64(context, builder, args[i], sig.args[i]) for i in (1, 2, 3, 5, 7, 9, 10, 11, 12))
        accumulate = args[13]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), f"llvm.fma.v{LANES}f32")
        zero = ir.Constant(_VEC, [0.0] * LANES)

        def vector_at(base, index):
            return builder.bitcast(builder.gep(base, [index]), _VEC.as_pointer())

        def splat(scalar):
            lanes = builder.insert_element(ir.Constant(_VEC, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(lanes, ir.Constant(_VEC, ir.Undefined),
                                          ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))

        def nest(channels, vectors):
            def channel(c, accs):
                x_c = builder.add(b_start, builder.mul(c, c_step))
                w_c = builder.add(w_start, builder.mul(builder.mul(c, t_count), ir.Constant(_I64, channels)))

                def tap(t, accs):
                    x_at = builder.add(x_c, builder.load(builder.gep(tp, [t])))
                    xs = [builder.load(vector_at(bp, builder.add(x_at, ir.Constant(_I64, v * LANES))), align=4)
                          for v in range(vectors)]
                    w_at = builder.add(w_c, builder.mul(t, ir.Constant(_I64, channels)))
                    out = []
                    for m in range(channels):
                        wm = splat(builder.load(builder.gep(wp, [builder.add(w_at, ir.Constant(_I64, m))])))
                        out.extend(builder.call(fma, [wm, xs[v], accs[m * vectors + v]]) for v in range(vectors))
                    return out

                return _counted_loop(builder, t_count, accs, tap)

            accs = _counted_loop(builder, c_count, [zero] * (channels * vectors), channel)
            for m in range(channels):
                row = builder.add(o_start, builder.mul(o_step, ir.Constant(_I64, m)))
                for v in range(vectors):
                    ptr = vector_at(op, builder.add(row, ir.Constant(_I64, v * LANES)))
                    value = accs[m * vectors + v]
                    with builder.if_then(accumulate):
                        builder.store(builder.fadd(value, builder.load(ptr, align=4)), ptr, align=4)
                    with builder.if_then(builder.not_(accumulate)):
                        builder.store(value, ptr, align=4)

        done = builder.append_basic_block("group.done")
        key = builder.add(builder.mul(mb, ir.Constant(_I64, 16)), nv)
        switch = builder.switch(key, done)
        for channels in CHANNEL_BLOCKS:
            for vectors in range(1, MAX_VECTORS[channels] + 1):
                case = builder.append_basic_block(f"group.m{channels}v{vectors}")
                switch.add_case(ir.Constant(_I64, channels * 16 + vectors), case)
                builder.position_at_end(case)
                nest(channels, vectors)
                builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def depthwise_tile(typingctx, tile, x, x_start, row_step, col_step, px_step, rows, cols, w, w_start, width):
    """Return ``tile`` plus, for pixel ``t < width`` and each of the 16 channel lanes::

        sum over p < rows, q < cols of w[w_start + (p*cols + q)*16 : +16] * x[x_start + p*row_step + q*col_step + t*px_step : +16]

    A depthwise convolution with channels in the vector lanes (``x`` blocked: 16 channels per
    pixel): one weight vector per tap, one whole-vector load per pixel and tap, no shuffles.
    ``width`` must be one of direct's ``TILE_WIDTHS`` (any other leaves the tile untouched).
    """
    ints = (x_start, row_step, col_step, px_step, rows, cols, w_start, width)
    if not (isinstance(tile, Tile) and _is_f32_array(x) and _is_f32_array(w)
            and all(isinstance(t, types.Integer) for t in ints)):
        return None
    sig = tile(tile, x, x_start, row_step, col_step, px_step, rows, cols, w, w_start, width)

    def codegen(context, builder, sig, args):
        acc, xp, wp = args[0], _data(context, builder, sig.args[1], args[1]), _data(context, builder, sig.args[8], args[8])
        x_start, row_step, col_step, px_step, rows, cols, w_start, width = (
            _as_i64(context, builder, args[i], sig.args[i]) for i in (2, 3, 4, 5, 6, 7, 9, 10))
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * 3), f"llvm.fma.v{LANES}f32")
        lanes = ir.Constant(_I64, LANES)

        def vector_at(base, index):
            return builder.load(builder.bitcast(builder.gep(base, [index]), _VEC.as_pointer()), align=4)

        def nest(n):
            def row(p, regs):
                x_row = builder.add(x_start, builder.mul(p, row_step))
                w_row = builder.add(w_start, builder.mul(builder.mul(p, cols), lanes))

                def tap(q, regs):
                    wv = vector_at(wp, builder.add(w_row, builder.mul(q, lanes)))
                    x_at = builder.add(x_row, builder.mul(q, col_step))
                    return [builder.call(fma, [wv, vector_at(xp, builder.add(x_at, builder.mul(px_step, ir.Constant(_I64, t)))),
                                               reg]) for t, reg in enumerate(regs)]

                return _counted_loop(builder, cols, regs, tap)

            return _counted_loop(builder, rows, [builder.extract_value(acc, t) for t in range(n)], row)

        done = builder.append_basic_block("dw.done")
        switch = builder.switch(width, done)
        results = [(acc, builder.block)]
        for n in TILE_WIDTHS:
            case = builder.append_basic_block(f"dw.w{n}")
            switch.add_case(ir.Constant(_I64, n), case)
            builder.position_at_end(case)
            out = acc
            for t, total in enumerate(nest(n)):
                out = builder.insert_value(out, total, t)
            results.append((out, builder.block))
            builder.branch(done)
        builder.position_at_end(done)
        merged = builder.phi(acc.type)
        for value, block in results:
            merged.add_incoming(value, block)
        return merged

    return sig, codegen


def precompile_kernels() -> list:
    """The signature the backend calls :func:`grouped_conv` with (see :mod:`convengine.runtime.precompile`)."""
    from ..runtime.precompile import Kernel

    def f32(ndim):
        return types.Array(types.float32, ndim, "C")

    i64 = types.int64
    epilogue = (f32(1), f32(4), types.boolean, i64, types.float64, types.float64)  # bias, residual, activation
    grouped = (f32(4), f32(4), f32(1), types.Array(i64, 1, "C")) + epilogue + (i64,) * 17 + (f32(2), f32(2))
    depthwise = (f32(4), f32(4), f32(1)) + epilogue + (i64,) * 12 + (f32(2), i64, types.boolean, types.boolean)
    return [Kernel(__name__, "grouped_conv", grouped, 4.0), Kernel(__name__, "depthwise_conv", depthwise, 3.0)]


U = _U  # indices below are unsigned (see direct._kernels._U)


@numba.njit(cache=True, nogil=True)
def _fill_band(x_flat, height, width, c0, channels, r0, rows_q, top, left, sh, sw, wq, plane, buf):
    """The phase planes of input channels ``c0 .. c0 + channels`` (of the flat NCHW input, image
    included in ``c0``) for the band starting at output row ``r0``: the first ``rows_q`` rows of
    each plane, zero where padding. Channel ``c``'s plane ``(a, b)`` starts at
    ``(c*sh*sw + a*sw + b) * plane`` in ``buf``.
    """
    zero = np.float32(0.0)
    for c in range(channels):
        for a in range(sh):
            for b in range(sw):
                base = ((c * sh + a) * sw + b) * plane
                # columns k with 0 <= k*sw + b - left < width are copied, the others are padding
                first = min(wq, max(0, (left - b + sw - 1) // sw))
                last = max(first, min(wq, (width - 1 + left - b) // sw + 1))
                for r in range(rows_q):
                    row = U(base + r * wq)
                    h = (r0 + r) * sh + a - top
                    if h < 0 or h >= height:
                        for k in range(wq):
                            buf[row + U(k)] = zero
                        continue
                    for k in range(first):
                        buf[row + U(k)] = zero
                    src = U(((c0 + c) * height + h) * width + first * sw + b - left)  # column `first`
                    n = last - first
                    dst = row + U(first)
                    if sw == 1:
                        for k in range(n):
                            buf[dst + U(k)] = x_flat[src + U(k)]
                    else:
                        for k in range(n):
                            buf[dst + U(k)] = x_flat[src + U(k * sw)]
                    for k in range(last, wq):
                        buf[row + U(k)] = zero


@numba.njit(cache=True, nogil=True)  # a call per job: compiled on its own, its loops vectorise (inside prange they did not)
def _band(x, y, w, taps, bias, residual, has_residual, act, p0, p1, n, g0, g1, r0, rows,
          in_per_group, out_per_group, mb, top, left, sh, sw, wq, plane, hq_extra, chunk, vectors, buf, acc, o_step):
    """One job of :func:`grouped_conv`: image ``n``, groups ``g0 .. g1``, output rows ``r0 .. r0 + rows``."""
    n_taps = taps.shape[0]
    m_blocks = (out_per_group + mb - 1) // mb
    c_step = sh * sw * plane
    out_channels, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    run = rows * wq  # the band's flat output positions (row pitch wq)
    y_flat, res_flat = y.reshape(-1), residual.reshape(-1)
    for g in range(g0, g1):
        _fill_band(x.reshape(-1), x.shape[2], x.shape[3], n * x.shape[1] + g * in_per_group, in_per_group, r0,
                   rows + hq_extra, top, left, sh, sw, wq, plane, buf)
        for blk in range(m_blocks):
            for c0 in range(0, in_per_group, chunk):
                w_start = ((g * m_blocks + blk) * in_per_group + c0) * n_taps * mb
                for k0 in range(0, run, vectors * LANES):
                    nv = min(vectors, (run - k0 + LANES - 1) // LANES)
                    group_tile(buf, c0 * c_step + k0, c_step, min(chunk, in_per_group - c0), taps, n_taps, w, w_start,
                               acc, k0, o_step, mb, nv, c0 > 0)
            for m in range(min(mb, out_per_group - blk * mb)):
                co = g * out_per_group + blk * mb + m
                _finish_rows(acc, m * o_step, wq, y_flat, res_flat, ((n * out_channels + co) * out_h + r0) * out_w,
                             rows, out_w, bias[co], has_residual, act, p0, p1)


@numba.njit(inline="always")
def _finish_rows(acc, src, pitch, y_flat, res_flat, dst, rows, out_w, b, has_residual, act, p0, p1):
    """``y = act(acc + b (+ residual))`` for ``rows`` output rows of ``out_w`` pixels, contiguous in ``y``
    from ``dst``, at row pitch ``pitch`` in ``acc`` from ``src``.

    Narrow rows (7 and 14 pixels: too short for a vector loop) are first gathered into ``y``,
    then finished in one loop over the whole run, which vectorises.
    """
    if out_w >= 2 * LANES:
        for i in range(rows):
            s, d = U(src + i * pitch), U(dst + i * out_w)
            if has_residual:
                for j in range(out_w):
                    y_flat[d + U(j)] = finish(acc[s + U(j)] + b + res_flat[d + U(j)], act, p0, p1)
            else:
                for j in range(out_w):
                    y_flat[d + U(j)] = finish(acc[s + U(j)] + b, act, p0, p1)
        return
    for i in range(rows):  # (the residual is read here, before its element of y is written: it may be y)
        s, d = U(src + i * pitch), U(dst + i * out_w)
        if has_residual:
            for j in range(out_w):
                y_flat[d + U(j)] = acc[s + U(j)] + res_flat[d + U(j)]
        else:
            for j in range(out_w):
                y_flat[d + U(j)] = acc[s + U(j)]
    d = U(dst)
    for k in range(rows * out_w):
        y_flat[d + U(k)] = finish(y_flat[d + U(k)] + b, act, p0, p1)


@numba.njit(parallel=True, cache=True, nogil=True)
def grouped_conv(x, y, w, taps, bias, residual, has_residual, act, p0, p1,
                 groups, in_per_group, out_per_group, mb, top, left, sh, sw, wq, plane, band_rows, hq_extra,
                 chunk, o_step, vectors, group_block, workers, in_scratch, out_scratch):
    """``y = act(conv(x, w) + bias (+ residual))`` for a grouped convolution; see the module docstring.

    ``w`` is packed ``(groups, ceil(out_per_group / mb), in_per_group, kernel taps, mb)``
    (zero-padded), flattened; ``taps`` holds each kernel tap's offset into a channel's phase
    planes, each ``plane`` floats (``band_rows + hq_extra`` rows of ``wq``). Jobs are (image,
    ``group_block`` groups, band of ``band_rows`` output rows); thread ``me`` works in row
    ``me`` of ``in_scratch`` and ``out_scratch`` (the tile's output, ``o_step`` floats per
    channel). ``chunk`` input channels are summed in registers at a time; ``vectors`` is the
    widest tile (``MAX_VECTORS[mb]``). ``act``, ``p0``, ``p1``: ``Epilogue.kernel_activation()``.
    """
    n_images, out_h = x.shape[0], y.shape[2]
    n_bands = (out_h + band_rows - 1) // band_rows
    n_blocks = (groups + group_block - 1) // group_block
    claims = job_claims(n_images * n_blocks * n_bands, workers)
    for thread in prange(claims.shape[0]):
        me = np.int64(thread)
        while True:
            job = next_job(claims, me)
            if job < 0:
                break
            r0 = job % n_bands * band_rows
            g0 = (job // n_bands) % n_blocks * group_block
            _band(x, y, w, taps, bias, residual, has_residual, act, p0, p1, job // (n_blocks * n_bands),
                  g0, min(groups, g0 + group_block), r0, min(band_rows, out_h - r0), in_per_group, out_per_group, mb,
                  top, left, sh, sw, wq, plane, hq_extra, chunk, vectors, in_scratch[me], out_scratch[me], o_step)


# -- depthwise, multiplier 1: channels in the vector lanes ---------------------------------------


@numba.njit(cache=True, nogil=True)
def _fill_blocked_band(x_flat, n, channels, height, width, c0, row0, rows_in, top, left, wp, buf, x_blocked):
    """Rows ``row0 .. row0 + rows_in`` of the zero-padded input (padded coordinates) of channels
    ``c0 .. c0 + 16`` of image ``n``, blocked: ``buf[(r*wp + col)*16 + lane]``, lanes past the
    last channel zero. From NCHW, sixteen pixels of sixteen channels move through one register
    transpose; from NCHW16c (``x_blocked``: ``x_flat`` is ``(N, C/16, H, W, 16)`` flattened, its
    padding lanes zero) each row is one contiguous copy."""
    block = min(LANES, channels - c0)
    row_floats = wp * LANES
    for r in range(rows_in):
        base = r * row_floats
        h = row0 + r - top
        if h < 0 or h >= height:
            zero_floats(buf, base, row_floats)
            continue
        zero_floats(buf, base, left * LANES)
        zero_floats(buf, base + (left + width) * LANES, row_floats - (left + width) * LANES)
        if x_blocked:
            at = ((n * ((channels + LANES - 1) // LANES) + c0 // LANES) * height + h) * width * LANES
            copy_floats(buf, base + left * LANES, x_flat, at, width * LANES)
            continue
        at = ((n * channels + c0) * height + h) * width
        for w0 in range(0, width, LANES):
            pack_block(x_flat, at + w0, height * width, block, min(LANES, width - w0), buf, base + (left + w0) * LANES)


@numba.njit(cache=True, nogil=True)  # a call per job, compiled on its own
def _depthwise_band(x, y, w, bias, residual, has_residual, act, p0, p1, n, cb, r0, rows,
                    kh, kw, sh, sw, dh, dw, top, left, wp, tile_width, buf, channels, x_blocked, y_blocked):
    """One job of :func:`depthwise_conv`: image ``n``, channels ``16*cb ..``, output rows ``r0 .. r0 + rows``."""
    height, width = x.shape[2], x.shape[3] // (LANES if x_blocked else 1)
    out_h, out_w = y.shape[2], y.shape[3] // (LANES if y_blocked else 1)
    rows_in = (rows - 1) * sh + (kh - 1) * dh + 1
    _fill_blocked_band(x.reshape(-1), n, channels, height, width, cb * LANES, r0 * sh, rows_in, top, left, wp, buf,
                       x_blocked)
    y_flat, res_flat = y.reshape(-1), residual.reshape(-1)
    n_tiles = (out_w + tile_width - 1) // tile_width
    tile = (out_w + n_tiles - 1) // n_tiles  # balanced: no 1-pixel tail tile
    stored_channels = min(LANES, channels - cb * LANES)
    c_blocks = (channels + LANES - 1) // LANES
    for i in range(rows):
        for j0 in range(0, out_w, tile):
            stored = min(tile, out_w - j0)
            acc = depthwise_tile(tile_zero(), buf, (i * sh * wp + j0 * sw) * LANES, dh * wp * LANES, dw * LANES,
                                 sw * LANES, kh, kw, w, cb * kh * kw * LANES, _compiled_width(stored))
            if y_blocked:  # each pixel's 16 channels as the tile holds them; padding lanes written 0
                tile_store_rows(acc, y_flat, (((n * c_blocks + cb) * out_h + r0 + i) * out_w + j0) * LANES,
                                out_h * out_w * LANES, LANES, stored_channels, 0, stored, bias, cb * LANES, res_flat,
                                has_residual, act, p0, p1, True)
            else:
                tile_store_nchw(acc, y_flat, ((n * channels + cb * LANES) * out_h + r0 + i) * out_w + j0, out_h * out_w,
                                stored_channels, 0, stored, bias, cb * LANES, res_flat, has_residual, act, p0, p1)


@numba.njit(parallel=True, cache=True, nogil=True)
def depthwise_conv(x, y, w, bias, residual, has_residual, act, p0, p1,
                   kh, kw, sh, sw, dh, dw, top, left, wp, band_rows, tile_width, workers, scratch,
                   channels, x_blocked, y_blocked):
    """``y = act(depthwise(x, w) + bias (+ residual))``, one output channel per input channel (``channels``).

    ``w`` is packed ``(ceil(C / 16), kh, kw, 16)`` (channels past C zero), flattened. Jobs are
    (image, block of 16 channels, band of ``band_rows`` output rows): the band's input rows
    (``wp`` padded pixels each) are copied blocked (:func:`_fill_blocked_band`) into row ``me`` of ``scratch``, then each output
    row is swept in register tiles of up to ``tile_width`` pixels x 16 channels
    (:func:`depthwise_tile`), written with the epilogue by direct's ``tile_store_nchw`` (NCHW) or
    ``tile_store_rows`` (``y_blocked``). ``x`` and ``y`` are NCHW, or blocked ``(N, C/16, H, W * 16)``
    where ``x_blocked`` / ``y_blocked`` (the residual as ``y``): then the copy is a row copy and
    the store no transpose. The rows need slack past their end: a tile rounded up to a compiled
    width reads a few pixels more (computed, not stored).
    """
    n_images = x.shape[0]
    out_h = y.shape[2]
    c_blocks = (channels + LANES - 1) // LANES
    n_bands = (out_h + band_rows - 1) // band_rows
    claims = job_claims(n_images * c_blocks * n_bands, workers)
    for thread in prange(claims.shape[0]):
        me = np.int64(thread)
        while True:
            job = next_job(claims, me)
            if job < 0:
                break
            r0 = job % n_bands * band_rows
            _depthwise_band(x, y, w, bias, residual, has_residual, act, p0, p1, job // (c_blocks * n_bands),
                            (job // n_bands) % c_blocks, r0, min(band_rows, out_h - r0), kh, kw, sh, sw, dh, dw,
                            top, left, wp, tile_width, scratch[me], channels, x_blocked, y_blocked)
