"""Numba kernel of the im2col unfold; imported only when the backend runs."""

import numba
from numba import prange


@numba.njit(parallel=True, cache=True, nogil=True)
def unfold(x, cols, kh, kw, sh, sw, dh, dw, top, left, row0, out_w):
    """Fill ``cols`` with output rows ``row0 ..`` of one image's column matrix.

    ``cols[(c*kh + p)*kw + q, (i - row0)*out_w + j] = x[c, i*sh + p*dh - top, j*sw + q*dw - left]``,
    zero where that falls outside ``x``: padding is applied here, never by copying the input.
    Parallel over the rows of ``cols`` (one per channel and kernel tap).
    """
    c_in, h, w = x.shape
    rows = cols.shape[1] // out_w
    for r in prange(c_in * kh * kw):
        c = r // (kh * kw)
        p = (r // kw) % kh
        q = r % kw
        for i in range(rows):
            y = (row0 + i) * sh + p * dh - top
            dst = cols[r, i * out_w:(i + 1) * out_w]
            if y < 0 or y >= h:
                dst[:] = 0
                continue
            src = x[c, y]
            for j in range(out_w):
                xx = j * sw + q * dw - left
                dst[j] = src[xx] if 0 <= xx < w else 0
