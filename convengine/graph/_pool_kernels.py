"""Numba kernels for max pooling and global average pooling; imported when such a node first runs.

One pass over the input with the window's bounds checked per tap: no padded copy (numpy
needs one, and it cost more than the pooling itself on ResNet's stem), NaN propagated as
``np.maximum`` does, and windows that lie entirely in the padding give ``-inf`` as ONNX's
reference implementation does.
"""

import numba
import numpy as np
from numba import prange


@numba.njit(inline="always")
def _max(a, v):
    """``max(a, v)`` propagating NaN from either side, as ``np.maximum``; a branch-free select."""
    return a if (a >= v or a != a) else v


@numba.njit(parallel=True, cache=True, nogil=True)
def max_pool(x, y, kh, kw, sh, sw, dh, dw, top, left):
    """``y[n, c, i, j]`` = max over the window's taps inside ``x``, a row of outputs per tap at a time.

    The update is a branch-free select (vectorisable), and sticky for NaN: a NaN already in
    ``row`` stays (``a != a``), a NaN tap replaces it (``a >= NaN`` is false).
    """
    n_images, channels, h, w = x.shape
    out_h, out_w = y.shape[2], y.shape[3]
    for job in prange(n_images * channels):
        src = x[job // channels, job % channels]
        dst = y[job // channels, job % channels]
        for oy in range(out_h):
            row = dst[oy]
            for ox in range(out_w):
                row[ox] = -np.inf
            for p in range(kh):
                yy = oy * sh + p * dh - top
                if yy < 0 or yy >= h:
                    continue
                line = src[yy]
                for q in range(kw):
                    offset = q * dw - left
                    # the outputs whose tap column ox * sw + offset lies in [0, w)
                    lo = max(0, (-offset + sw - 1) // sw)
                    hi = min(out_w, (w - 1 - offset) // sw + 1)
                    for ox in range(lo, hi):
                        row[ox] = _max(row[ox], line[ox * sw + offset])


@numba.njit(inline="always")
def _edge_max(line, j, k):
    """Max of ``line[j:j + k]`` over the indices inside ``line`` (-inf if none)."""
    m = -np.inf
    for q in range(k):
        if 0 <= j + q < line.shape[0]:
            m = _max(m, line[j + q])
    return m


@numba.njit(parallel=True, cache=True, nogil=True)
def max_pool_3x3_s2(x, y, top, left):
    """The 3x3 stride-2 max-pool of ResNet and AlexNet (any padding), separably.

    Per output row, the three input rows are reduced first (contiguous, so it vectorises,
    and only the rows an output needs), then the pairs of neighbouring columns (contiguous
    again), leaving one strided max per output. Taps outside ``x`` are skipped, as the
    padding is ``-inf``. ResNet-50's stem pool: 0.22-0.25 ms against 0.40-0.66 ms for the
    columns-first order this replaced (2 threads, 2-vCPU Zen 4).
    """
    n_images, channels = x.shape[0], x.shape[1]
    for job in prange(n_images * channels):
        _pool_plane_3x3_s2(x[job // channels, job % channels], y[job // channels, job % channels], top, left)


@numba.njit(cache=True, nogil=True)  # a call per plane, not the prange body: it compiled in 3 s inline
def _pool_plane_3x3_s2(src, dst, top, left):
    h, w = src.shape
    out_h, out_w = dst.shape
    # outputs whose three taps are all inside the plane: ox in [x_lo, x_hi)
    x_lo = min(out_w, (left + 1) // 2)
    x_hi = max(x_lo, min(out_w, (w - 3 + left) // 2 + 1))
    vmax = np.empty(w, src.dtype)  # the window's rows, reduced
    pair = np.empty(w, src.dtype)  # max of vmax[j], vmax[j + 1]
    for oy in range(out_h):
        i = 2 * oy - top
        if i >= 0 and i + 2 < h:
            a, b, c = src[i], src[i + 1], src[i + 2]
            for j in range(w):
                vmax[j] = _max(_max(a[j], b[j]), c[j])
        else:
            vmax[:] = -np.inf
            for p in range(3):
                if 0 <= i + p < h:
                    r = src[i + p]
                    for j in range(w):
                        vmax[j] = _max(vmax[j], r[j])
        for j in range(w - 1):
            pair[j] = _max(vmax[j], vmax[j + 1])
        row = dst[oy]
        for ox in range(x_lo, x_hi):
            j = 2 * ox - left
            row[ox] = _max(pair[j], vmax[j + 2])
        for ox in range(0, x_lo):
            row[ox] = _edge_max(vmax, 2 * ox - left, 3)
        for ox in range(x_hi, out_w):
            row[ox] = _edge_max(vmax, 2 * ox - left, 3)


@numba.njit(parallel=True, cache=True, nogil=True)
def max_pool_s1(x, y, w, out_w, kh, kw, top, left):
    """Stride-1, undilated ``kh x kw`` max pooling (any padding), separably: exact, as max is.

    GoogLeNet's branch pools (3x3, stride 1, padding 1). ``x`` is ``(planes, h * w)``, ``y``
    ``(planes, out_h * out_w)``: each plane is walked flat, so the rows' max and then the
    columns' are long vectorised loops even on 7x7 planes (a row at a time, a 14-wide plane
    spent more on loop starts than on maxima). Taps outside the input are skipped, as the
    padding is ``-inf``. The general :func:`max_pool` took 1.4-2.3 ms per GoogLeNet branch
    pool here (runtime strides defeat vectorisation).
    """
    for plane in prange(x.shape[0]):
        _pool_plane_s1(x[plane], y[plane], w, out_w, kh, kw, top, left, False)


@numba.njit(parallel=True, cache=True, nogil=True)
def sum_pool_s1(x, y, w, out_w, kh, kw, top, left):
    """The windows' sums, as :func:`max_pool_s1` walks them (the padding 0): average pooling's numerators.

    Inception-v3's branch pools (3x3, stride 1, padding 1); the caller divides. A window's sum
    is taken rows first, so it rounds differently from a tap-by-tap sum (float32: ~1e-7).
    """
    for plane in prange(x.shape[0]):
        _pool_plane_s1(x[plane], y[plane], w, out_w, kh, kw, top, left, True)


@numba.njit(cache=True, nogil=True)
def _pool_plane_s1(src, dst, w, out_w, kh, kw, top, left, average):
    h, out_h = src.shape[0] // w, dst.shape[0] // out_w
    acc = np.empty(out_h * w, src.dtype)  # per output row, the window's input rows reduced
    # output rows whose kh input rows all exist, [y_lo, y_hi): src shifted by whole rows, reduced
    y_lo = min(out_h, top)
    y_hi = max(y_lo, min(out_h, h - kh + top + 1))
    if y_hi > y_lo:  # (then y_lo == top: every index below is inside src)
        lo, hi = y_lo * w, y_hi * w
        acc[lo:hi] = src[lo - top * w:hi - top * w]
        for p in range(1, kh):
            _reduce_into(acc[lo:hi], src[lo + (p - top) * w:hi + (p - top) * w], average)
    for oy in range(out_h):
        if y_lo <= oy < y_hi:
            continue
        row = acc[oy * w:(oy + 1) * w]
        row[:] = 0 if average else -np.inf  # the padding's value
        for r in range(max(0, oy - top), min(h, oy - top + kh)):
            _reduce_into(row, src[r * w:(r + 1) * w], average)
    # then the columns: outputs whose kw taps all lie in the row, [x_lo, x_hi)
    x_lo = min(out_w, left)
    x_hi = max(x_lo, min(out_w, w - kw + left + 1))
    if x_hi > x_lo and out_w == w:  # same-size padding: one flat pass, its wrapped-around edges redone below
        lo, hi = x_lo, out_h * w - (w - x_hi)
        dst[lo:hi] = acc[lo - left:hi - left]
        for q in range(1, kw):
            _reduce_into(dst[lo:hi], acc[lo - left + q:hi - left + q], average)
    elif x_hi > x_lo:
        for oy in range(out_h):
            row, line = dst[oy * out_w:(oy + 1) * out_w], acc[oy * w:(oy + 1) * w]
            row[x_lo:x_hi] = line[x_lo - left:x_hi - left]
            for q in range(1, kw):
                _reduce_into(row[x_lo:x_hi], line[x_lo - left + q:x_hi - left + q], average)
    for oy in range(out_h):
        row, line = dst[oy * out_w:(oy + 1) * out_w], acc[oy * w:(oy + 1) * w]
        for ox in range(0, x_lo):
            row[ox] = _edge_reduce(line, ox - left, kw, average)
        for ox in range(x_hi, out_w):
            row[ox] = _edge_reduce(line, ox - left, kw, average)


@numba.njit(inline="always")
def _reduce_into(acc, taps, average):
    """``acc = acc + taps`` or ``max(acc, taps)`` (NaN propagated) elementwise: one vectorised loop."""
    if average:
        for k in range(acc.shape[0]):
            acc[k] = acc[k] + taps[k]
    else:
        for k in range(acc.shape[0]):
            acc[k] = _max(acc[k], taps[k])


@numba.njit(inline="always")
def _edge_reduce(line, j, k, average):
    """The sum or max of ``line[j:j + k]`` over the indices inside ``line`` (the padding: 0 or -inf)."""
    if average:
        total = 0.0  # (float64: a few taps, summed exactly enough)
        for q in range(k):
            if 0 <= j + q < line.shape[0]:
                total += line[j + q]
        return total
    return _edge_max(line, j, k)


@numba.njit(parallel=True, cache=True, nogil=True)
def pool_2x2_s2(x, y, average):
    """2x2 windows at stride 2 that lie inside the input (no padding), the max or the mean; ``(planes, h, w)``.

    DenseNet's transition average pools and GoogLeNet's last max pool. Per output row the two
    input rows are combined first (contiguous, vectorised), then neighbouring pairs; an odd
    last row or column is left out, as the floor mode does. NaN propagates either way.
    """
    for plane in prange(x.shape[0]):
        _pool_plane_2x2_s2(x[plane], y[plane], average)


@numba.njit(cache=True, nogil=True)
def _pool_plane_2x2_s2(src, dst, average):
    out_h, out_w = dst.shape
    pair = np.empty(2 * out_w, src.dtype)  # the two rows, combined
    for oy in range(out_h):
        a, b, row = src[2 * oy], src[2 * oy + 1], dst[oy]
        if average:
            for j in range(2 * out_w):
                pair[j] = a[j] + b[j]
            for ox in range(out_w):
                row[ox] = (pair[2 * ox] + pair[2 * ox + 1]) * 0.25  # (exact: a power of two)
        else:
            for j in range(2 * out_w):
                pair[j] = _max(a[j], b[j])
            for ox in range(out_w):
                row[ox] = _max(pair[2 * ox], pair[2 * ox + 1])


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def plane_means(rows, y):
    """``y[n, c] = mean(rows[n, c, :])``: global average pooling of ``(N, C, H*W)``.

    One thread and no parallel start: ResNet-50's 2048 planes of 49 take ~8 us this way,
    against ~70 us for ``numpy.mean`` over two axes. Reassociated, so the sum runs in vector
    lanes (float32 partial sums, as numpy's pairwise float32 mean); NaN propagates.
    """
    n_images, channels, size = rows.shape
    scale = 1.0 / size
    for n in range(n_images):
        for c in range(channels):
            row = rows[n, c]
            total = row[0]  # (the element type: a float32 sum stays in float32 lanes)
            for k in range(1, size):
                total += row[k]
            y[n, c] = total * scale


def precompile_kernels(function: str, dtype: str) -> list:
    """The signature ``function`` is called with on ``dtype`` activations (see :mod:`convengine.runtime.precompile`)."""
    from numba import types

    from ..runtime.precompile import Kernel

    plane = types.Array(getattr(types, dtype), 4, "C")
    if function == "plane_means":
        return [Kernel(__name__, function, (types.Array(getattr(types, dtype), 3, "C"),
                                            types.Array(getattr(types, dtype), 2, "C")), cost=0.3)]
    if function == "max_pool_3x3_s2":
        return [Kernel(__name__, function, (plane, plane, types.int64, types.int64), cost=2.2)]
    if function == "pool_2x2_s2":
        planes = types.Array(getattr(types, dtype), 3, "C")
        return [Kernel(__name__, function, (planes, planes, types.boolean), cost=1.0)]
    if function in ("max_pool_s1", "sum_pool_s1"):
        planes = types.Array(getattr(types, dtype), 2, "C")
        return [Kernel(__name__, function, (planes, planes) + (types.int64,) * 6, cost=2.5)]
    return [Kernel(__name__, function, (plane, plane) + (types.int64,) * 8, cost=1.5)]
