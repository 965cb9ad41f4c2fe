"""Numba kernels for layer normalisation over the last axis: ConvNeXt's 23, on channels-last rows.

numpy spends about ten passes over the tensor on it (mean, centring, squares, their mean,
the reciprocal square root, two scalings, the shift, and temporaries for each); here each
row is read three times while it sits in cache (its sum, the centred squares, the output)
and written once, rows in parallel jobs. Sums run in float32 vector lanes (reassociated, as
numpy's pairwise float32 sums are not sequential either).
"""

import numba
import numpy as np
from numba import prange

from ..runtime.threads import numba_threads

#: Elements per parallel job (whole rows), and fewer in all run on the calling thread.
BLOCK = 16384
PARALLEL_MIN = 65536


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def layer_norm_serial(x, y, scale, bias, epsilon):
    """``y[r] = (x[r] - mean) / sqrt(var + epsilon) * scale + bias`` per row of ``(rows, C)`` arrays (``y`` may be ``x``)."""
    n = x.shape[1]
    consts = np.empty(2, x.dtype)  # 1 and n in the element type: the arithmetic stays in it
    consts[0], consts[1] = 1, n
    one, size = consts[0], consts[1]
    for r in range(x.shape[0]):
        src, dst = x[r], y[r]
        total = src[0]
        for k in range(1, n):
            total += src[k]
        mean = total / size
        d = src[0] - mean
        squares = d * d
        for k in range(1, n):
            d = src[k] - mean
            squares += d * d
        inv_std = one / np.sqrt(squares / size + epsilon)
        for k in range(n):
            dst[k] = (src[k] - mean) * inv_std * scale[k] + bias[k]


@numba.njit(parallel=True, cache=True, nogil=True)
def layer_norm_parallel(x, y, scale, bias, epsilon):
    """:func:`layer_norm_serial` in parallel jobs of about :data:`BLOCK` elements."""
    rows = x.shape[0]
    step = max(1, BLOCK // max(1, x.shape[1]))
    for job in prange((rows + step - 1) // step):
        lo, hi = job * step, min(rows, (job + 1) * step)
        layer_norm_serial(x[lo:hi], y[lo:hi], scale, bias, epsilon)


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, epsilon: float) -> np.ndarray:
    """Layer normalisation of ``x`` (float32 or float64) over its last axis, into a new array;
    ``scale`` and ``bias`` of the last axis' length and ``x``'s dtype."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    if x.size:
        rows = x.reshape(-1, x.shape[-1])
        eps = x.dtype.type(epsilon)
        if x.size >= PARALLEL_MIN:
            numba_threads()
            layer_norm_parallel(rows, y.reshape(rows.shape), scale, bias, eps)
        else:
            layer_norm_serial(rows, y.reshape(rows.shape), scale, bias, eps)
    return y


def precompile_kernels(dtype: str) -> list:
    """The kernels :func:`layer_norm` calls on ``dtype`` activations (see :mod:`convengine.runtime.precompile`)."""
    from numba import types

    from ..runtime.precompile import Kernel

    element = getattr(types, dtype)
    rows, vector = types.Array(element, 2, "C"), types.Array(element, 1, "C")
    return [Kernel(__name__, f"layer_norm_{form}", (rows, rows, vector, vector, element), cost=1.2)
            for form in ("serial", "parallel")]
