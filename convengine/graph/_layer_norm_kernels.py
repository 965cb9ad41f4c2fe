"""Numba kernels for layer normalisation over the channels: ConvNeXt's 23, on channels-last rows or NCHW tiles.

numpy spends about ten passes over the tensor on it (mean, centring, squares, their mean,
the reciprocal square root, two scalings, the shift, and temporaries for each); here each
row is read three times while it sits in cache (its sum, the centred squares, the output)
and written once, rows in parallel jobs. Sums run in float32 vector lanes (reassociated, as
numpy's pairwise float32 sums are not sequential either).
"""

import numba
import numpy as np
from numba import prange

from ..runtime.threads import serial_or_parallel

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


#: Pixels per tile of :func:`channels_first_layer_norm`: a cache line of each channel's row.
PIXELS = 16


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _pixels_layer_norm(x, y, scale, bias, epsilon, n, p0, channels_last):
    """Pixels ``p0 .. p0 + PIXELS`` of image ``n``: ``x`` ``(N, C, P)`` in, ``y`` ``(N, P, C)`` out if
    ``channels_last``, else ``(N, C, P)`` like ``x`` (it may be ``x``: a tile is read whole before it is written)."""
    channels, p1 = x.shape[1], min(x.shape[2], p0 + PIXELS)
    width = p1 - p0
    consts = np.empty(2, x.dtype)  # 1 and C in the element type: the arithmetic stays in it
    consts[0], consts[1] = 1, channels
    one, size = consts[0], consts[1]
    mean = np.zeros(PIXELS, x.dtype)
    squares = np.zeros(PIXELS, x.dtype)
    for c in range(channels):  # sums along the channels, PIXELS lanes at a time
        row = x[n, c, p0:p1]
        for j in range(width):
            mean[j] += row[j]
    for j in range(width):
        mean[j] /= size
    for c in range(channels):
        row = x[n, c, p0:p1]
        for j in range(width):
            d = row[j] - mean[j]
            squares[j] += d * d
    for j in range(width):
        squares[j] = one / np.sqrt(squares[j] / size + epsilon)  # (now the inverse deviation)
    tile = np.empty((channels, PIXELS), x.dtype)  # normalised along the rows (vectorised), then written across
    for c in range(channels):
        row, out = x[n, c, p0:p1], tile[c]
        s, b = scale[c], bias[c]
        for j in range(width):
            out[j] = (row[j] - mean[j]) * squares[j] * s + b
    if channels_last:
        for j in range(width):
            dst = y[n, p0 + j]
            for c in range(channels):
                dst[c] = tile[c, j]
    else:
        for c in range(channels):
            dst, row = y[n, c, p0:p1], tile[c]
            for j in range(width):
                dst[j] = row[j]


@numba.njit(cache=True, nogil=True)
def channels_first_serial(x, y, scale, bias, epsilon, channels_last):
    """Layer normalisation over the channels of ``x`` ``(N, C, P)`` into channels-last ``y`` ``(N, P, C)``
    (``channels_last``) or ``y`` ``(N, C, P)``."""
    for n in range(x.shape[0]):
        for p0 in range(0, x.shape[2], PIXELS):
            _pixels_layer_norm(x, y, scale, bias, epsilon, n, p0, channels_last)


@numba.njit(parallel=True, cache=True, nogil=True)
def channels_first_parallel(x, y, scale, bias, epsilon, channels_last):
    """:func:`channels_first_serial`, a tile of :data:`PIXELS` pixels per parallel job."""
    tiles = (x.shape[2] + PIXELS - 1) // PIXELS
    for job in prange(x.shape[0] * tiles):
        _pixels_layer_norm(x, y, scale, bias, epsilon, job // tiles, (job % tiles) * PIXELS, channels_last)


def channels_first_layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, epsilon: float,
                              channels_last: bool = True) -> np.ndarray:
    """``layer_norm(x.transpose(0, 2, 3, 1), ...)`` for ``x`` ``(N, C, H, W)`` (float32 or float64), into a new
    ``(N, H, W, C)`` array: ConvNeXt's ``permute -> LayerNorm`` without the permuted copy; with
    ``channels_last=False``, permuted back to ``(N, C, H, W)`` (its ``LayerNorm2d``, permutes on both sides).
    The tensor is read in tiles of :data:`PIXELS` pixels by all channels, which stay in cache for the three passes."""
    n, c, h, w = x.shape
    source = np.ascontiguousarray(x).reshape(n, c, h * w)
    y = np.empty((n, h, w, c) if channels_last else (n, c, h, w), x.dtype)
    if x.size:
        eps = x.dtype.type(epsilon)
        kernel = serial_or_parallel(x.size, PARALLEL_MIN, channels_first_serial, channels_first_parallel)
        kernel(source, y.reshape((n, h * w, c) if channels_last else (n, c, h * w)), scale, bias, eps, channels_last)
    return y


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, epsilon: float) -> np.ndarray:
    """Layer normalisation of ``x`` (float32 or float64) over its last axis, into a new array;
    ``scale`` and ``bias`` of the last axis' length and ``x``'s dtype."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    if x.size:
        rows = x.reshape(-1, x.shape[-1])
        eps = x.dtype.type(epsilon)
        kernel = serial_or_parallel(x.size, PARALLEL_MIN, layer_norm_serial, layer_norm_parallel)
        kernel(rows, y.reshape(rows.shape), scale, bias, eps)
    return y


def precompile_kernels(dtype: str, channels_first: bool = False) -> list:
    """The kernels :func:`layer_norm` (:func:`channels_first_layer_norm` if ``channels_first``) calls on ``dtype``
    activations (see :mod:`convengine.runtime.precompile`)."""
    from numba import types

    from ..runtime.precompile import Kernel

    element = getattr(types, dtype)
    vector = types.Array(element, 1, "C")
    if channels_first:
        planes = types.Array(element, 3, "C")
        return [Kernel(__name__, f"channels_first_{form}", (planes, planes, vector, vector, element, types.boolean),
                       cost=1.2)
                for form in ("serial", "parallel")]
    rows = types.Array(element, 2, "C")
    return [Kernel(__name__, f"layer_norm_{form}", (rows, rows, vector, vector, element), cost=1.2)
            for form in ("serial", "parallel")]
