"""Numba kernel applying bias, residual and ReLU in one pass over a convolution's output.

Imported only when a backend runs. One pass instead of three, with each (image, channel)
plane's bias held in a register; for the unfused engine path see ``convengine.core.epilogue``.
"""

import numba
from numba import prange


@numba.njit(inline="always")
def _finish(v, r, has_residual, relu):
    if has_residual:
        v += r
    if relu and v < 0:  # NaN stays NaN, as with np.maximum
        v = v - v
    return v


@numba.njit(parallel=True, cache=True, nogil=True)
def bias_residual_relu(y, bias, residual, has_residual, relu):
    """``y[n, c] = act(y[n, c] + bias[c] (+ residual[n, c]))`` in place; ``y`` is ``(N, C, HW)``.

    ``residual`` has ``y``'s shape (pass ``y`` itself when ``has_residual`` is False).
    """
    n_images, channels, size = y.shape
    for job in prange(n_images * channels):
        n = job // channels
        c = job % channels
        b = bias[c]
        row = y[n, c]
        res = residual[n, c]
        for k in range(size):
            row[k] = _finish(row[k] + b, res[k], has_residual, relu)
