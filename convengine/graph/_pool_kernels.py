"""Numba kernel for max pooling; imported when a MaxPool node first runs.

One pass over the input with the window's bounds checked per tap: no padded copy (numpy
needs one, and it cost more than the pooling itself on ResNet's stem), NaN propagated as
``np.maximum`` does, and windows that lie entirely in the padding give ``-inf`` as ONNX's
reference implementation does.
"""

import numba
import numpy as np
from numba import prange


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
                        a = row[ox]
                        v = line[ox * sw + offset]
                        row[ox] = a if (a >= v or a != a) else v
