"""Numba kernels for squeeze-and-excitation: the two small dense layers on the channel means, and the scaling.

With numpy the dense part was a dozen calls per block (two vector-matrix products, two bias
additions, two activations of three ufuncs each): about 1.1 ms of EfficientNet-B0's run at
batch 1 went to their call overhead, for a few hundred thousand multiply-adds. :func:`excite`
does it in one call, the activations by :func:`convengine.backends._activations.finish`
(the same code the convolution epilogues use). :func:`channel_scale` multiplies each plane
by its image's and channel's factor in one pass, in place when the executor allows (in parallel
jobs for tensors of a million elements and more).
"""

import numba
import numpy as np
from numba import prange

from ..backends._activations import finish
from ..runtime.threads import parallel_chunks, serial_or_parallel

# Numba's cache is keyed on this file's text, not on backends._activations's: after an edit to the activations
# there, change this line so that cached kernels are compiled again (GELU).

#: Arrays of fewer elements are scaled on the calling thread. The step before (the global pool)
#: runs on one thread, so the workers are asleep and the tensor sits in this core's cache:
#: measured in EfficientNet-B0 at batch 1 (its largest is 401K elements), the 16 scalings took
#: 0.53 ms a run on one thread, 1.28 ms in parallel jobs from 65536 elements, 0.73 from 400000.
PARALLEL_MIN = 1 << 20


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def excite(means, w1, b1, act, a0, a1, w2, b2, gate, g0, g1, hidden, scale):
    """``scale[n] = gate(act(means[n] @ w1 + b1) @ w2 + b2)`` for ``means`` ``(N, C)``, ``w1`` ``(C, R)``,
    ``w2`` ``(R, C)``; ``hidden`` is scratch of length ``R``. ``act``/``gate`` with their parameters are
    :meth:`~convengine.core.epilogue.Epilogue.kernel_activation` codes. Products summed in input order."""
    for n in range(means.shape[0]):
        for r in range(hidden.shape[0]):
            hidden[r] = b1[r]
        for c in range(w1.shape[0]):
            m = means[n, c]
            row = w1[c]
            for r in range(row.shape[0]):
                hidden[r] += m * row[r]
        for r in range(hidden.shape[0]):
            hidden[r] = finish(hidden[r], act, a0, a1)
        out = scale[n]
        for c in range(out.shape[0]):
            out[c] = b2[c]
        for r in range(w2.shape[0]):
            h = hidden[r]
            row = w2[r]
            for c in range(row.shape[0]):
                out[c] += h * row[c]
        for c in range(out.shape[0]):
            out[c] = finish(out[c], gate, g0, g1)


@numba.njit(cache=True, nogil=True)
def _scale_plane(src, dst, s):
    if src.ctypes.data == dst.ctypes.data:  # (in place: one array in the loop, so LLVM vectorises it)
        for i in range(dst.shape[0]):
            dst[i] *= s
    else:
        for i in range(src.shape[0]):
            dst[i] = src[i] * s


@numba.njit(cache=True, nogil=True)
def channel_scale_serial(x, y, scale):
    """``y[n, c, :] = x[n, c, :] * scale[n, c]`` for ``(N, C, S)`` arrays (``y`` may be ``x``), on the calling thread."""
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            _scale_plane(x[n, c], y[n, c], scale[n, c])


@numba.njit(parallel=True, cache=True, nogil=True)
def channel_scale_parallel(x, y, scale):
    """:func:`channel_scale_serial`, a plane per parallel job."""
    channels = x.shape[1]
    for job in prange(x.shape[0] * channels):
        n, c = job // channels, job % channels
        _scale_plane(x[n, c], y[n, c], scale[n, c])


def channel_scale(x: np.ndarray, scale: np.ndarray, in_place: bool) -> np.ndarray:
    """``x * scale`` per image and channel (``x`` ``(N, C, ...)``, ``scale`` ``(N, C)`` C-contiguous, same dtype);
    written over ``x`` when ``in_place`` and ``x`` is C-contiguous, else into a new array."""
    source = np.ascontiguousarray(x)
    y = source if (in_place or source is not x) else np.empty_like(source)
    view = (x.shape[0], x.shape[1], -1)
    if x.size:
        kernel = serial_or_parallel(x.size, PARALLEL_MIN, channel_scale_serial, channel_scale_parallel)
        kernel(source.reshape(view), y.reshape(view), scale)
    return y


#: Floats (64 pixels of 16 lanes) of the repeated factors :func:`channel_scale_blocked` multiplies runs by.
BLOCKED_RUN = 1024


@numba.njit(cache=True, nogil=True)
def _scale_blocked_plane(src, dst, lanes, factors):
    """``dst = src * lanes`` over one channel block's plane (pixels of 16 lanes): ``factors`` (scratch) is
    filled with the 16 factors repeated, so that each run is one contiguous loop that vectorises."""
    size, run = src.shape[0], min(src.shape[0], factors.shape[0])
    for i in range(run):
        factors[i] = lanes[i % 16]
    in_place = src.ctypes.data == dst.ctypes.data  # (one array in the loop, so LLVM vectorises it)
    for start in range(0, size, run):
        n = min(run, size - start)
        a, b, f = src[start:start + n], dst[start:start + n], factors[:n]
        if in_place:
            for i in range(n):
                b[i] *= f[i]
        else:
            for i in range(n):
                b[i] = a[i] * f[i]


@numba.njit(parallel=True, cache=True, nogil=True)
def channel_scale_blocked(x, y, scale, chunks):
    """``y[p] = x[p] * scale[p]`` per lane for channel-blocked planes ``(planes, H*W*16)`` (``y`` may be ``x``),
    ``scale`` ``(planes, 16)``; ``chunks`` contiguous runs of planes, one per thread."""
    planes = x.shape[0]
    for t in prange(chunks):
        factors = np.empty(BLOCKED_RUN, x.dtype)
        for p in range(planes * t // chunks, planes * (t + 1) // chunks):
            _scale_blocked_plane(x[p], y[p], scale[p], factors)


def channel_scale_of_blocks(x: np.ndarray, scale: np.ndarray, in_place: bool) -> np.ndarray:
    """``x * scale`` per image and channel for a channel-blocked ``x`` ``(N, C/16, H, W, 16)`` and ``scale``
    ``(N, C)``; padding lanes stay 0. Written over ``x`` when ``in_place``, else into a new array."""
    n, blocks, h, w, lanes = x.shape
    source = np.ascontiguousarray(x)
    y = source if (in_place or source is not x) else np.empty_like(source)
    padded = np.zeros((n, blocks * lanes), x.dtype)
    padded[:, :scale.shape[1]] = scale
    if x.size:
        channel_scale_blocked(source.reshape(n * blocks, -1), y.reshape(n * blocks, -1), padded.reshape(n * blocks, lanes),
                              parallel_chunks(x.size, PARALLEL_MIN, n * blocks))
    return y


def precompile_kernels(dtype: str) -> list:
    """The kernels a float32 or float64 squeeze-and-excitation step calls (see :mod:`convengine.runtime.precompile`)."""
    from numba import types

    from ..runtime.precompile import Kernel

    element = getattr(types, dtype)
    vector, matrix, planes = (types.Array(element, d, "C") for d in (1, 2, 3))
    code, parameter = types.int64, types.float64
    dense = (matrix, matrix, vector, code, parameter, parameter, matrix, vector, code, parameter, parameter, vector, matrix)
    return [Kernel(__name__, "excite", dense, cost=1.5)] + [
        Kernel(__name__, f"channel_scale_{form}", (planes, planes, matrix), cost=0.8) for form in ("serial", "parallel")]


def precompile_blocked_kernels(dtype: str) -> list:
    """The kernels a squeeze-and-excitation step on channel-blocked activations calls (pool, dense part, scaling)."""
    from numba import types

    from ..runtime.precompile import Kernel
    from ._pool_kernels import precompile_kernels as pool_kernels

    matrix = types.Array(getattr(types, dtype), 2, "C")
    return (pool_kernels("blocked_plane_means", dtype) + precompile_kernels(dtype)[:1]
            + [Kernel(__name__, "channel_scale_blocked", (matrix, matrix, matrix, types.int64), cost=0.8)])
