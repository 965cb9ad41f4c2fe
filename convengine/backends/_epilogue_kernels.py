"""Numba kernel applying bias, residual and the activation in one pass over a convolution's output.

Imported only when a backend runs. One pass instead of three, with each (image, channel)
plane's bias held in a register; the activation is any of the epilogue's
(:mod:`convengine.backends._activations`). For the unfused engine path see ``convengine.core.epilogue``.
"""

import numba
import numpy as np
from numba import prange

from ._activations import finish

# Numba's cache is keyed on this file's text, not on ._activations's: after an edit to the activations
# there, change this line so that cached kernels are compiled again (GELU).


@numba.njit(parallel=True, cache=True, nogil=True)
def bias_residual_activation(y, bias, residual, has_residual, act, p0, p1):
    """``y[n, c] = act(y[n, c] + bias[c] (+ residual[n, c]))`` in place; ``y`` is ``(N, C, HW)``.

    ``residual`` has ``y``'s shape (pass ``y`` itself when ``has_residual`` is False); ``act``,
    ``p0``, ``p1`` are ``Epilogue.kernel_activation()``.
    """
    n_images, channels, size = y.shape
    for job in prange(n_images * channels):
        _finish_plane(y[job // channels, job % channels], bias[job % channels],
                      residual[job // channels, job % channels], has_residual, act, p0, p1)


@numba.njit(cache=True, nogil=True)  # compiled on its own: inside prange the loop did not vectorise
def _finish_plane(row, b, res, has_residual, act, p0, p1):
    # unsigned indices: no wrap-around check on each access, which kept the loop scalar
    if has_residual:
        for k in range(row.shape[0]):
            row[np.uint64(k)] = finish(row[np.uint64(k)] + b + res[np.uint64(k)], act, p0, p1)
    else:
        for k in range(row.shape[0]):
            row[np.uint64(k)] = finish(row[np.uint64(k)] + b, act, p0, p1)
