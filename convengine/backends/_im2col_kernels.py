"""Numba kernel of the im2col unfold; imported only when the backend runs."""

import numba


@numba.njit(cache=True, nogil=True)
def unfold(x, cols, kh, kw, sh, sw, dh, dw, top, left, row0, out_w):
    """Fill ``cols`` with output rows ``row0 ..`` of one image's column matrix.

    ``cols[(c*kh + p)*kw + q, (i - row0)*out_w + j] = x[c, i*sh + p*dh - top, j*sw + q*dw - left]``,
    zero where that falls outside ``x``: padding is applied here, never by copying the input.

    On one thread, on purpose: a BLAS product follows at once, and the OpenMP worker of a
    parallel unfold keeps spinning after it (``runtime.threads``' ``GOMP_SPINCOUNT``, kept high
    for the graph executor's kernels), taking a core from the product. Measured (hot, 2 vCPUs):
    256->256 3x3 at 14x14 4.06 ms parallel, 1.35 serial (1.43 before the long spin); 1024->512
    1x1 at stride 2 2.95 against 0.37; 64->64 3x3 at 56x56 3.33 against 1.66 (asv continuous
    between c29bdb1 and the commit before this one found im2col 1.3-4.4x slower on 16 layers).
    """
    c_in, h, w = x.shape
    rows = cols.shape[1] // out_w
    for r in range(c_in * kh * kw):
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
