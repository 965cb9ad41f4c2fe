"""Numba kernels for max and average pooling and global average pooling; imported when such a node first runs.

One pass over the input with out-of-range taps skipped: no padded copy (numpy needs one,
and it cost more than the pooling itself on ResNet's stem), NaN propagated as
``np.maximum`` does, and windows that lie entirely in the padding give ``-inf`` as ONNX's
reference implementation does.

Two habits keep the inner loops vectorised (measured 3x on one 352k-element pass):
index with the bare loop variable, never ``a[i - w]`` or ``a[i + offset]`` (Numba then
checks each index for wrap-around, and LLVM gives up on the loop), so the shifted operands
are slices taken once outside the loop; and take no slice per row inside a plane loop (each
costs a reference count update). The planes are split into ``chunks`` contiguous runs, one
per thread, each with its scratch allocated once; ``chunks == 1`` starts no parallel region
at all (waking the other thread costs more than a small pool).
"""

import numba
import numpy as np
from numba import prange

from ._blocked_rows import pixel_taps


@numba.njit(inline="always")
def _max(a, v):
    """``max(a, v)`` propagating NaN from either side, as ``np.maximum``; a branch-free select."""
    return a if (a >= v or a != a) else v


@numba.njit(inline="always")
def _combine(a, v, average):
    """``a + v`` (a sum of window taps) or ``max(a, v)`` (NaN propagated)."""
    return a + v if average else _max(a, v)


@numba.njit(inline="always")
def _combine3(out, a, b, c, average):
    """``out[k] = a[k] (+|max) b[k] (+|max) c[k]``: one vectorised loop over equal-length slices."""
    if average:
        for k in range(out.shape[0]):
            out[k] = a[k] + b[k] + c[k]
    else:
        for k in range(out.shape[0]):
            out[k] = _max(_max(a[k], b[k]), c[k])


@numba.njit(parallel=True, cache=True, nogil=True)
def max_pool(x, y, kh, kw, sh, sw, dh, dw, top, left):
    """``y[n, c, i, j]`` = max over the window's taps inside ``x``, a row of outputs per tap at a time.

    The general case (any stride and dilation); the update is a branch-free select, sticky
    for NaN: a NaN already in ``row`` stays (``a != a``), a NaN tap replaces it.
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


# -- channel-blocked (NCHW16c) activations, any window ------------------------------------------


@numba.njit(parallel=True, cache=True, nogil=True)
def blocked_pool(x, y, kh, kw, sh, sw, dh, dw, top, left, average, scale, chunks):
    """Pooling of channel-blocked tensors: ``x`` ``(planes, h, w * 16)``, ``y`` ``(planes, out_h, out_w * 16)``.

    Why its own kernel: the executor keeps a convolution's blocked output blocked through a
    pool into the next convolution (:mod:`.blocking`) instead of converting it to NCHW and
    back. Any window, stride, dilation and padding: taps outside the input read the padding's
    neutral value, so a window entirely in the padding gives ``-inf`` (max) as the NCHW
    kernels do; averages are the sum times ``scale`` (one value, or one per output pixel and
    lane: ``out_h * out_w * 16``).

    Per output row: the window's input rows are reduced into one row (three in one pass)
    placed ``left`` pixels into a row of the neutral value, so that every output, edges
    included, reads its column taps at fixed offsets; then each output pixel combines its
    column taps as 16-lane vectors, scale applied in the same pass
    (:func:`._blocked_rows.pixel_taps`: Numba's loops over a pixel's lanes did not vectorise;
    at stride 2 the kernel combined every column position, then kept every other pixel lane
    by lane, and Inception-v3's 147x147 max pool took 0.20 ms hot, 0.14 ms with vectors).
    """
    planes, w = x.shape[0], x.shape[2] // 16
    out_h, out_w = y.shape[1], y.shape[2] // 16
    per_pixel = scale.shape[0] > 1
    start = 0.0 if average else -np.inf
    span = (out_w - 1) * sw + 1  # column positions the taps are combined at
    width = max(left + w, span + (kw - 1) * dw)  # the neutral-padded row: every tap of every output inside
    n_out = out_w * 16
    for t in prange(chunks):
        padded = np.full(width * 16, start, x.dtype)
        body = padded[left * 16:(left + w) * 16]
        for p in range(planes * t // chunks, planes * (t + 1) // chunks):
            for oy in range(out_h):
                _window_rows(x[p], body, oy * sh - top, kh, dh, start, average)
                # each output pixel's column taps, one 16-lane vector each, scale applied
                pixel_taps(y[p, oy], 0, padded, 0, out_w, sw * 16, kw, dw * 16, average, scale[oy * n_out:] if per_pixel
                           else scale, per_pixel)


@numba.njit(inline="always")
def _window_rows(plane, rows, first, kh, dh, start, average):
    """``rows`` = the window's input rows ``first``, ``first + dh``, ... of ``plane`` (those inside it) combined."""
    h = plane.shape[0]
    if kh == 3 and first >= 0 and first + 2 * dh < h:  # one pass, one store per element
        _combine3(rows, plane[first], plane[first + dh], plane[first + 2 * dh], average)
        return
    rows[:] = start
    for a in range(kh):
        if 0 <= first + a * dh < h:
            _combine_into(rows, plane[first + a * dh], average)


@numba.njit(inline="always")
def _combine_into(a, b, average):
    """``a[k] = a[k] (+|max) b[k]`` over equal-length runs: one vectorised loop."""
    if average:
        for k in range(a.shape[0]):
            a[k] += b[k]
    else:
        for k in range(a.shape[0]):
            a[k] = _max(a[k], b[k])


# -- 3x3 windows at stride 2 (max) ---------------------------------------------------------------


@numba.njit(parallel=True, cache=True, nogil=True)
def max_pool_3x3_s2(x, y, top, left, chunks):
    """The 3x3 stride-2 max pool of ResNet, GoogLeNet, Inception, SqueezeNet, AlexNet (any padding, ceil mode).

    ``x`` is ``(planes, h, w)``, ``y`` ``(planes, out_h, out_w)``. Per output row the three
    input rows are reduced first (contiguous), written ``left`` places in (the padding
    ``-inf`` on both sides); that row is split into its even and odd columns, and each
    output is then ``max(even[ox], odd[ox], even[ox + 1])``, three contiguous operands: no
    strided gather. ResNet-50's stem pool, one thread: 0.38 -> 0.16 ms (docs/performance.md, Session 8).
    """
    planes = x.shape[0]
    if chunks == 1:
        _planes_3x3_s2(x, y, top, left, 0, planes)
    else:
        for t in prange(chunks):
            _planes_3x3_s2(x, y, top, left, planes * t // chunks, planes * (t + 1) // chunks)


@numba.njit(cache=True, nogil=True)
def _planes_3x3_s2(x, y, top, left, p0, p1):
    h, w = x.shape[1], x.shape[2]
    out_h, out_w = y.shape[1], y.shape[2]
    half = (max(w + left, 2 * out_w + 1) + 1) // 2  # even/odd columns the outputs read
    rows = np.full(2 * half, -np.inf, x.dtype)  # the window's rows reduced, shifted right by `left`
    inside = rows[left:left + w]
    even = np.empty(half, x.dtype)
    odd = np.empty(half, x.dtype)
    e0, o0, e1 = even[:out_w], odd[:out_w], even[1:out_w + 1]
    for p in range(p0, p1):
        for oy in range(out_h):
            i = 2 * oy - top
            if i >= 0 and i + 2 < h:
                for j in range(w):
                    inside[j] = _max(_max(x[p, i, j], x[p, i + 1, j]), x[p, i + 2, j])
            else:
                for j in range(w):
                    inside[j] = -np.inf
                for r in range(max(i, 0), min(i + 3, h)):
                    for j in range(w):
                        inside[j] = _max(inside[j], x[p, r, j])
            for k in range(half):
                even[k] = rows[2 * k]
                odd[k] = rows[2 * k + 1]
            for ox in range(out_w):
                y[p, oy, ox] = _max(_max(e0[ox], o0[ox]), e1[ox])


# -- stride 1 (max, and the sums of average pooling) -----------------------------------------------


@numba.njit(parallel=True, cache=True, nogil=True)
def pool_s1(x, y, kh, kw, top, left, average, scale, chunks):
    """Stride-1, undilated ``kh x kw`` pooling (any padding): the max, or the sum times ``scale``.

    ``x`` is ``(planes, h, w)``, ``y`` ``(planes, out_h, out_w)``; ``scale`` (average only) is
    the reciprocal of each window's divisor, ``(1,)`` when all windows share one, else
    ``(out_h * out_w,)``. GoogLeNet's branch max pools and Inception-v3's average pools
    (3x3, padding 1, same size) walk blocks of whole planes as one flat vector, rows first
    then columns, and redo the first and last row and column of each plane, which the flat
    walk took from the neighbouring plane or row; other windows go plane by plane.
    Taps outside the input are skipped (the padding is ``-inf``, or 0 for a sum).
    A window's sum is taken rows first, so it rounds differently from a tap-by-tap sum
    (float32: ~1e-7), and ``sum * (1 / count)`` differs from ``sum / count`` by an ulp.
    """
    planes = x.shape[0]
    if chunks == 1:
        _planes_s1(x, y, kh, kw, top, left, average, scale, 0, planes)
    else:
        for t in prange(chunks):
            _planes_s1(x, y, kh, kw, top, left, average, scale, planes * t // chunks, planes * (t + 1) // chunks)


#: Elements per block of planes walked flat: the block and its row sums stay in L2.
BLOCK_ELEMENTS = 16384


@numba.njit(cache=True, nogil=True)
def _planes_s1(x, y, kh, kw, top, left, average, scale, p0, p1):
    h, w = x.shape[1], x.shape[2]
    out_h, out_w = y.shape[1], y.shape[2]
    same_3x3 = kh == 3 and kw == 3 and top == 1 and left == 1 and out_h == h and out_w == w
    if same_3x3 and h >= 2 and w >= 2:
        block = max(1, BLOCK_ELEMENTS // (h * w))
        acc = np.empty(block * h * w, x.dtype)
        for b in range(p0, p1, block):
            n = min(block, p1 - b)
            _same_3x3_block(x[b:b + n], y[b:b + n], acc[:n * h * w], average, scale)
        return
    acc = np.empty((out_h, w), x.dtype)
    for p in range(p0, p1):
        _plane_s1(x[p], y[p], acc, kh, kw, top, left, average)
        if average:
            _apply_scale(y[p].reshape(-1), scale)


@numba.njit(cache=True, nogil=True)
def _same_3x3_block(x, y, acc, average, scale):
    """3x3, padding 1, stride 1 on ``n`` whole planes (``h, w >= 2``), flat: rows, then columns."""
    n, h, w = x.shape
    size = n * h * w
    xf, yf = x.reshape(-1), y.reshape(-1)
    # rows: acc[i] = x[i - w] (.) x[i] (.) x[i + w], right for all but each plane's first and last row
    _combine3(acc[w:size - w], xf[:size - 2 * w], xf[w:size - w], xf[2 * w:], average)
    a3 = acc.reshape(n, h, w)
    for p in range(n):
        for j in range(w):
            a3[p, 0, j] = _combine(x[p, 0, j], x[p, 1, j], average)
            a3[p, h - 1, j] = _combine(x[p, h - 2, j], x[p, h - 1, j], average)
    # columns, the same way: right for all but each row's first and last column
    uniform = average and scale.shape[0] == 1
    if uniform:
        s = scale[0]
        a, b, c, out = acc[:size - 2], acc[1:size - 1], acc[2:], yf[1:size - 1]
        for k in range(size - 2):
            out[k] = (a[k] + b[k] + c[k]) * s
    else:
        _combine3(yf[1:size - 1], acc[:size - 2], acc[1:size - 1], acc[2:], average)
    for p in range(n):
        for r in range(h):
            first = _combine(a3[p, r, 0], a3[p, r, 1], average)
            last = _combine(a3[p, r, w - 2], a3[p, r, w - 1], average)
            if uniform:
                first, last = first * s, last * s
            y[p, r, 0] = first
            y[p, r, w - 1] = last
    if average and not uniform:
        for p in range(n):
            _apply_scale(y[p].reshape(-1), scale)


@numba.njit(inline="always")
def _apply_scale(values, scale):
    """``values *= scale`` elementwise (``scale`` as long as ``values``), or by ``scale[0]`` when it is one value."""
    if scale.shape[0] == 1:
        s = scale[0]
        for k in range(values.shape[0]):
            values[k] = values[k] * s
    else:
        for k in range(values.shape[0]):
            values[k] = values[k] * scale[k]


@numba.njit(cache=True, nogil=True)
def _plane_s1(src, dst, acc, kh, kw, top, left, average):
    """Any stride-1 window on one plane: ``acc`` (out_h, w) holds the rows reduced, then the columns."""
    h, w = src.shape
    out_h, out_w = dst.shape
    pad = 0.0 if average else -np.inf
    for oy in range(out_h):
        r0 = oy - top
        for j in range(w):
            acc[oy, j] = pad
        for r in range(max(0, r0), min(h, r0 + kh)):
            for j in range(w):
                acc[oy, j] = _combine(acc[oy, j], src[r, j], average)
    # the outputs whose kw taps all lie in the row: ox in [x_lo, x_hi), tap column ox - left + q
    x_lo = min(out_w, left)
    x_hi = max(x_lo, min(out_w, w - kw + left + 1))
    for oy in range(out_h):
        line, row = acc[oy], dst[oy]
        inner = row[x_lo:x_hi]
        taps = line[x_lo - left:x_hi - left]
        for k in range(inner.shape[0]):
            inner[k] = taps[k]
        for q in range(1, kw):
            taps = line[x_lo - left + q:x_hi - left + q]
            for k in range(inner.shape[0]):
                inner[k] = _combine(inner[k], taps[k], average)
        for ox in range(0, x_lo):
            row[ox] = _edge_reduce(line, ox - left, kw, average)
        for ox in range(x_hi, out_w):
            row[ox] = _edge_reduce(line, ox - left, kw, average)


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


# -- 2x2 windows at stride 2, inside the input ------------------------------------------------------


@numba.njit(parallel=True, cache=True, nogil=True)
def pool_2x2_s2(x, y, average, chunks):
    """2x2 windows at stride 2 that lie inside the input (no padding), the max or the mean; ``(planes, h, w)``.

    DenseNet's transition average pools, VGG's and GoogLeNet's last max pools. The max: per
    output row the two input rows are combined first (contiguous), split into even and odd
    columns, then those are combined (contiguous again); the mean sums each window's four
    taps in one loop. An odd last row or column is left out, as the floor mode does. NaN
    propagates either way.
    """
    planes = x.shape[0]
    if chunks == 1:
        _planes_2x2_s2(x, y, average, 0, planes)
    else:
        for t in prange(chunks):
            _planes_2x2_s2(x, y, average, planes * t // chunks, planes * (t + 1) // chunks)


@numba.njit(cache=True, nogil=True)
def _planes_2x2_s2(x, y, average, p0, p1):
    out_h, out_w = y.shape[1], y.shape[2]
    pair = np.empty(2 * out_w, x.dtype)  # the two rows, combined
    even = np.empty(out_w, x.dtype)
    odd = np.empty(out_w, x.dtype)
    for p in range(p0, p1):
        for oy in range(out_h):
            i = 2 * oy
            if average:  # one loop over the four taps: DenseNet's 128x56x56 0.064 -> 0.037 ms (in cache)
                for ox in range(out_w):
                    y[p, oy, ox] = ((x[p, i, 2 * ox] + x[p, i + 1, 2 * ox])
                                    + (x[p, i, 2 * ox + 1] + x[p, i + 1, 2 * ox + 1])) * 0.25  # (exact: a power of two)
                continue
            # (the max that way was slower: 512x28x28 0.17 against 0.10 ms)
            for j in range(2 * out_w):
                pair[j] = _max(x[p, i, j], x[p, i + 1, j])
            for k in range(out_w):
                even[k] = pair[2 * k]
                odd[k] = pair[2 * k + 1]
            for ox in range(out_w):
                y[p, oy, ox] = _max(even[ox], odd[ox])


# -- global average ----------------------------------------------------------------------------------


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


#: Floats (64 pixels of 16 lanes) :func:`blocked_plane_means` adds a plane's runs onto at a time.
MEANS_RUN = 1024


@numba.njit(cache=True, nogil=True)
def blocked_plane_means(x, y):
    """``y[p] = mean over pixels of x[p]``: global average pooling of channel-blocked ``(planes, H*W*16)``
    rows into ``(planes, 16)``.

    One pass per plane: runs of up to :data:`MEANS_RUN` floats (64 pixels) are added onto one
    accumulator run, each addition one contiguous loop that vectorises (a loop over a pixel's 16
    lanes did not); then that run's pixels are summed pairwise into one. NaN propagates. (A first
    version copied each plane and halved it pass by pass: MobileNetV2's 80 blocks of 49 pixels
    ~0.03 ms against numpy's 0.11, but EfficientNet-B0's 112x112 planes several passes each.)
    """
    planes, size = x.shape
    pixels = size // 16
    scale = 1.0 / pixels
    run = min(size, MEANS_RUN)
    rows = np.empty(run, x.dtype)
    for p in range(planes):
        source = x[p]
        head = source[:run]
        for k in range(run):
            rows[k] = head[k]
        for start in range(run, size, run):
            n = min(run, size - start)
            part, into = source[start:start + n], rows[:n]
            for k in range(n):
                into[k] += part[k]
        n = run // 16
        while n > 1:
            half = n // 2
            low, high = rows[:half * 16], rows[(n - half) * 16:n * 16]
            for k in range(half * 16):
                low[k] += high[k]
            n -= half
        for lane in range(16):
            y[p, lane] = rows[lane] * scale


def precompile_kernels(function: str, dtype: str) -> list:
    """The signature ``function`` is called with on ``dtype`` activations (see :mod:`convengine.runtime.precompile`)."""
    from numba import types

    from ..runtime.precompile import Kernel

    element = getattr(types, dtype)
    planes = types.Array(element, 3, "C")
    if function == "plane_means":
        return [Kernel(__name__, function, (planes, types.Array(element, 2, "C")), cost=0.3)]
    if function == "blocked_plane_means":
        return [Kernel(__name__, function, (types.Array(element, 2, "C"),) * 2, cost=0.3)]
    if function == "max_pool_3x3_s2":
        return [Kernel(__name__, function, (planes, planes) + (types.int64,) * 3, cost=2.2)]
    if function == "pool_2x2_s2":
        return [Kernel(__name__, function, (planes, planes, types.boolean, types.int64), cost=1.0)]
    if function == "pool_s1":
        return [Kernel(__name__, function, (planes, planes) + (types.int64,) * 4
                       + (types.boolean, types.Array(element, 1, "C", readonly=True), types.int64), cost=2.5)]
    if function == "blocked_pool":
        return [Kernel(__name__, function, (planes, planes) + (types.int64,) * 8
                       + (types.boolean, types.Array(element, 1, "C", readonly=True), types.int64), cost=2.0)]
    plane = types.Array(element, 4, "C")
    return [Kernel(__name__, function, (plane, plane) + (types.int64,) * 8, cost=1.5)]
