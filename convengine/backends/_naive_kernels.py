"""The ``naive`` backend's Numba kernel: the convolution sum as plain loops; imported only when the backend runs.

(Named ``loop_conv``, not after the algorithm, so that it is not mistaken for the ``direct`` backend's
register-tiled ``tiled_conv``.)
"""

import numba
from numba import prange


@numba.njit(parallel=True, cache=True, nogil=True)
def loop_conv(xp, w, bias, out, sh, sw, dh, dw, groups):
    """Cross-correlation, by its definition, of a zero-padded input ``xp`` into ``out`` (overwritten).

    Parallel over (image, output channel) pairs; the innermost loop walks an output row
    so that for stride 1 it is a contiguous, vectorisable multiply-add.
    """
    n_images = xp.shape[0]
    c_out, c_group, kh, kw = w.shape
    out_h, out_w = out.shape[2], out.shape[3]
    out_per_group = c_out // groups
    for job in prange(n_images * c_out):
        n = job // c_out
        o = job % c_out
        g = o // out_per_group
        acc = out[n, o]
        acc[:, :] = bias[o]
        for c in range(c_group):
            src = xp[n, g * c_group + c]
            for p in range(kh):
                for q in range(kw):
                    weight = w[o, c, p, q]
                    for i in range(out_h):
                        row = src[i * sh + p * dh]
                        col0 = q * dw
                        for j in range(out_w):
                            acc[i, j] += weight * row[col0 + j * sw]
