"""Numba kernels for elementwise steps: float32 ``erf``, GELU, batch norm + ReLU in one pass, ConvNeXt's block end.

``scipy.special.erf`` on float32 runs near 7 ns an element on one thread: ConvNeXt-Tiny's 18
GELUs spent 43% of its run in it. :func:`erf32` is arithmetic only (no library call), so
LLVM vectorises the loops that inline it:

- ``|x| < 0.921875``: ``x * P(x^2)``, ``P`` of degree 6;
- up to ``3.925``: ``1 - exp(S(|x|) - x^2)``, ``S`` of degree 6 (``log(erfc(x)) + x^2`` is
  smooth there), the ``exp`` by Cody-Waite reduction, a degree-6 polynomial and a power of two
  built from five selects (its exponent lies in ``[-27, 0]``);
- beyond: ``+-1`` (``erf(3.925)`` rounds to 1 in float32); NaN stays NaN.

The coefficients are weighted minimax fits (Lawson's iteration) whose float64 error is below
2e-9; evaluated in float32 the result is within 1.3e-7 of the float64 ``erf`` everywhere
(2.4 ulp; the tests check a dense grid), exactly odd, and exactly +-1 where the float32
``erf`` is.
"""

import numba
import numpy as np
from numba import prange

from ..backends._activations import ERF_LARGE, ERF_MID, ERF_P, ERF_S, ERF_SMALL  # the fits, shared with the fused GELU
from ..core.layouts import BLOCK as LANES  # channels a blocked pixel holds (BLOCK here: a parallel job's elements)
from ..runtime.hardware import l2_cache_bytes
from ..runtime.threads import serial_or_parallel
from ..runtime.workspace import aligned_empty
from ._lane_stores import lanes_affine

f32 = np.float32
_SMALL = f32(ERF_SMALL)  # below: the odd polynomial; above: 1 - exp(...)
_LARGE = f32(ERF_LARGE)  # erf is 1.0f from here on
_MID = f32(ERF_MID)  # S's argument is |x| - _MID (centred: better conditioned in float32)
_A0, _A1, _A2, _A3, _A4, _A5, _A6 = (f32(c) for c in ERF_P)
_S0, _S1, _S2, _S3, _S4, _S5, _S6 = (f32(c) for c in ERF_S)
_E2, _E3, _E4 = f32(0.4999999), f32(0.1666642), f32(0.041668225)
_E5, _E6 = f32(0.008374816), f32(0.0013836846)
_LOG2E, _LN2_HI, _LN2_LO = f32(1.442695), f32(0.693359375), f32(-2.1219444e-04)
_ZERO, _HALF, _ONE = f32(0.0), f32(0.5), f32(1.0)

#: Elements per parallel job.
BLOCK = 16384
#: Arrays of fewer elements run on the calling thread: a parallel start (~50 us) costs more.
PARALLEL_MIN = 65536
#: The same for the kernels that do one or two operations an element (batch norm + ReLU, the layer
#: scale): memory-bound, they follow a step on one thread (a concatenation's copies, a BLAS product)
#: whose data sits in this core's cache while the workers sleep. Measured in whole models at batch 1
#: (interleaved, quiet machine): DenseNet-121's 62 batch norm + ReLU steps 7.1 ms a run in parallel
#: jobs from 65536 elements, 3.2 ms on one thread (its largest is 802K); ConvNeXt-Tiny's 18 layer
#: scales 4.6 against 3.7 ms. GELU (arithmetic-bound) stays parallel: 13.2 against 14.5 ms.
#: (Measured with the workers put to sleep after 2000 spins; with 100000 (session 9) a 64K
#: threshold measured within noise of this one in the same models, so it stays.)
MEMORY_BOUND_PARALLEL_MIN = 1 << 20
#: Blocked batch norm + ReLU outputs from this many second-level caches' size are written with streaming stores
#: (see :mod:`._lane_stores`): far beyond what the cores' caches hold for the next layer. DenseNet-121 at batch 32
#: (its outputs 3-100 MiB; 2 MiB caches), in-process interleaved against ordinary stores: 0.974x from 16 MiB,
#: 0.963x from 48 MiB, 1.019x from 4 MiB.
STREAM_MIN_L2 = 8

_FAST = {"contract"}  # FMAs only: no assumptions about NaN or infinities


@numba.njit(inline="always", fastmath=_FAST)
def erf32(x):
    """``erf(x)`` of a float32, within 2e-7 of the float64 value; branch-free (selects) so loops vectorise."""
    a = abs(x)
    t = x * x
    p = (((((_A6 * t + _A5) * t + _A4) * t + _A3) * t + _A2) * t + _A1) * t + _A0
    small = x * p
    b = a if a < _LARGE else _LARGE  # (NaN -> _LARGE: no NaN below; the last line returns it)
    u = b - _MID
    q = (((((_S6 * u + _S5) * u + _S4) * u + _S3) * u + _S2) * u + _S1) * u + _S0 - b * b
    n = np.floor(q * _LOG2E + _HALF)  # exp(q) = 2^n exp(r), |r| <= ln2 / 2
    r = q - n * _LN2_HI - n * _LN2_LO
    e = (((((_E6 * r + _E5) * r + _E4) * r + _E3) * r + _E2) * r + _ONE) * r + _ONE
    k = np.int32(-n)  # 1..27
    e *= f32(0.5) if k & 1 else _ONE
    e *= f32(0.25) if k & 2 else _ONE
    e *= f32(0.0625) if k & 4 else _ONE
    e *= f32(0.00390625) if k & 8 else _ONE
    e *= f32(1.52587890625e-05) if k & 16 else _ONE
    large = _ONE - e
    y = small if a < _SMALL else (large if x > _ZERO else -large)
    return y if x == x else x


# In place, each loop reads and writes ``y`` alone: with ``x`` too, LLVM's run-time overlap
# check fails on ``y is x`` and the loop runs unvectorised (GELU 6x slower, measured).
# Loops start at 0: no negative-index wraparound, so plain vector loads.


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def erf_serial(x, y):
    """``y = erf(x)`` on flat float32 arrays (``y`` may be ``x``), on the calling thread."""
    if x.ctypes.data == y.ctypes.data:
        for i in range(y.shape[0]):
            y[i] = erf32(y[i])
    else:
        for i in range(x.shape[0]):
            y[i] = erf32(x[i])


@numba.njit(parallel=True, cache=True, nogil=True)
def erf_parallel(x, y):
    """:func:`erf_serial` in parallel jobs of :data:`BLOCK` elements."""
    n = x.shape[0]
    for job in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = job * BLOCK, min(n, (job + 1) * BLOCK)
        erf_serial(x[lo:hi], y[lo:hi])


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def gelu_serial(x, y, c):
    """``y = ((erf(x * c) + 1) * x) * 0.5`` on flat float32 arrays (``y`` may be ``x``): GELU for ``c = 1/sqrt(2)``."""
    if x.ctypes.data == y.ctypes.data:
        for i in range(y.shape[0]):
            v = y[i]
            y[i] = ((erf32(v * c) + _ONE) * v) * _HALF  # the exported GELU's operations, in its order
    else:
        for i in range(x.shape[0]):
            v = x[i]
            y[i] = ((erf32(v * c) + _ONE) * v) * _HALF


@numba.njit(parallel=True, cache=True, nogil=True)
def gelu_parallel(x, y, c):
    """:func:`gelu_serial` in parallel jobs of :data:`BLOCK` elements."""
    n = x.shape[0]
    for job in prange((n + BLOCK - 1) // BLOCK):
        lo, hi = job * BLOCK, min(n, (job + 1) * BLOCK)
        gelu_serial(x[lo:hi], y[lo:hi], c)


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def bias_gelu_serial(x, y, bias, c):
    """GELU of ``x + bias`` (as :func:`gelu_serial`), ``(rows, C)`` float32 arrays, ``bias`` of length ``C``.

    ConvNeXt's ``MatMul -> Add(bias) -> GELU``: the bias runs along the channels-last rows.
    """
    in_place = x.ctypes.data == y.ctypes.data
    for r in range(x.shape[0]):
        dst = y[r]
        if in_place:
            for k in range(dst.shape[0]):
                v = dst[k] + bias[k]
                dst[k] = ((erf32(v * c) + _ONE) * v) * _HALF
        else:
            src = x[r]
            for k in range(src.shape[0]):
                v = src[k] + bias[k]
                dst[k] = ((erf32(v * c) + _ONE) * v) * _HALF


@numba.njit(parallel=True, cache=True, nogil=True)
def bias_gelu_parallel(x, y, bias, c):
    """:func:`bias_gelu_serial` in parallel jobs of about :data:`BLOCK` elements (whole rows)."""
    rows = x.shape[0]
    step = max(1, BLOCK // max(1, x.shape[1]))
    for job in prange((rows + step - 1) // step):
        lo, hi = job * step, min(rows, (job + 1) * step)
        bias_gelu_serial(x[lo:hi], y[lo:hi], bias, c)


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _scale_shift_plane(src, dst, factor, shift, relu):
    if src.ctypes.data == dst.ctypes.data:
        if relu:
            for i in range(dst.shape[0]):
                v = dst[i] * factor + shift
                dst[i] = 0 if v < 0 else v  # (NaN stays: NaN < 0 is false)
        else:
            for i in range(dst.shape[0]):
                dst[i] = dst[i] * factor + shift
    elif relu:
        for i in range(src.shape[0]):
            v = src[i] * factor + shift
            dst[i] = 0 if v < 0 else v
    else:
        for i in range(src.shape[0]):
            dst[i] = src[i] * factor + shift


@numba.njit(cache=True, nogil=True)
def scale_shift_serial(x, y, factor, shift, relu):
    """``y[n, c, :] = x[n, c, :] * factor[c] + shift[c]``, then ``max(., 0)`` if ``relu``; ``(N, C, S)`` arrays.

    Inference batch normalisation (and the ReLU after it) in one pass; ``y`` may be ``x``.
    """
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            _scale_shift_plane(x[n, c], y[n, c], factor[c], shift[c], relu)


@numba.njit(parallel=True, cache=True, nogil=True)
def scale_shift_parallel(x, y, factor, shift, relu):
    """:func:`scale_shift_serial`, a plane per parallel job."""
    channels = x.shape[1]
    for job in prange(x.shape[0] * channels):
        c = job % channels
        _scale_shift_plane(x[job // channels, c], y[job // channels, c], factor[c], shift[c], relu)


@numba.njit(cache=True, nogil=True, inline="always")
def _lanes_job(x, image_floats, y_flat, factor, shift, relu, stream, job, blocks, floats):
    n, cb = job // blocks, job % blocks
    lanes_affine(x, n * image_floats + cb * floats, y_flat, job * floats, floats // LANES, factor, shift, cb * LANES,
                 relu, stream)


@numba.njit(cache=True, nogil=True)
def scale_shift_lanes_serial(x, image_floats, y, factor, shift, relu, stream):
    """``y`` (N, Cb, P * 16), blocked, from the blocked images in ``x`` (flat: image ``n``'s ``Cb * P * 16``
    floats from ``n * image_floats``, a channel slice of a larger blocked buffer too): lane ``j`` of block
    ``cb`` times ``factor[cb * 16 + j]`` plus ``shift[...]``, then ``max(., 0)`` if ``relu`` (``factor`` and
    ``shift`` padded with zeros to whole blocks: the padding channels stay 0); streaming stores if ``stream``
    (see :mod:`._lane_stores`). Batch norm + ReLU on a blocked tensor (DenseNet's, between a block's
    concatenation and its 1x1 layer)."""
    n_images, blocks, floats = y.shape
    y_flat = y.reshape(-1)
    for job in range(n_images * blocks):
        _lanes_job(x, image_floats, y_flat, factor, shift, relu, stream, job, blocks, floats)


@numba.njit(parallel=True, cache=True, nogil=True)
def scale_shift_lanes_parallel(x, image_floats, y, factor, shift, relu, stream):
    """:func:`scale_shift_lanes_serial`, a block of an image per parallel job."""
    n_images, blocks, floats = y.shape
    y_flat = y.reshape(-1)
    for job in prange(n_images * blocks):
        _lanes_job(x, image_floats, y_flat, factor, shift, relu, stream, job, blocks, floats)


#: Tile side for :func:`layer_scale_residual`: a 32 x 32 tile of each array is 4 KiB in float32.
TILE = 32


@numba.njit(cache=True, nogil=True)
def _layer_scale_tile(x, residual, y, bias, gamma, n, p0, c0):
    # No fastmath: ONNX's three roundings, (x + bias), (* gamma), (+ residual), exactly as numpy makes them.
    p1, c1 = min(x.shape[1], p0 + TILE), min(x.shape[2], c0 + TILE)
    for c in range(c0, c1):
        b, g = bias[c], gamma[c]
        src, dst = residual[n, c], y[n, c]
        for p in range(p0, p1):
            dst[p] = (x[n, p, c] + b) * g + src[p]


@numba.njit(cache=True, nogil=True)
def layer_scale_residual_serial(x, residual, y, bias, gamma):
    """``y[n, c, p] = (x[n, p, c] + bias[c]) * gamma[c] + residual[n, c, p]``: ``x`` ``(N, P, C)`` channels-last,
    ``residual`` and ``y`` ``(N, C, P)``; ``y`` may be ``residual``. In tiles, so that ``x``'s columns are read from L1."""
    for n in range(x.shape[0]):
        for p0 in range(0, x.shape[1], TILE):
            for c0 in range(0, x.shape[2], TILE):
                _layer_scale_tile(x, residual, y, bias, gamma, n, p0, c0)


@numba.njit(parallel=True, cache=True, nogil=True)
def layer_scale_residual_parallel(x, residual, y, bias, gamma):
    """:func:`layer_scale_residual_serial`, a row of pixel tiles per parallel job."""
    tiles = (x.shape[1] + TILE - 1) // TILE
    for job in prange(x.shape[0] * tiles):
        n, p0 = job // tiles, (job % tiles) * TILE
        for c0 in range(0, x.shape[2], TILE):
            _layer_scale_tile(x, residual, y, bias, gamma, n, p0, c0)


# -- callers' side: layout, threads, and one thread for small arrays ------------------------------


def _run(serial, parallel, x: np.ndarray, out, view: tuple, *args, parallel_min: int = 0) -> np.ndarray:
    """``serial`` or ``parallel`` (by size) on ``x`` reshaped to ``view`` (``(-1,)``: flat), into ``out``
    (any layout; may be ``x``) or a new array.

    An ``x`` whose images are each contiguous but not adjacent (a channel slice of a larger buffer:
    the executor's concatenations at batch > 1) runs image by image, where a copy of it would cost
    what the concatenation saved. ``parallel`` from ``parallel_min`` elements (0: :data:`PARALLEL_MIN`)."""
    parallel_min = parallel_min or PARALLEL_MIN
    if x.size and not x.flags.c_contiguous and x.ndim > 1 and x.shape[0] > 1 and x[0].flags.c_contiguous:
        y = out if out is not None else np.empty(x.shape, x.dtype)
        if y[0].flags.c_contiguous:
            image = (1,) + view[1:] if len(view) == 3 else view  # (N, C, -1) planes: one image's
            # (by the whole size: the images share the threads)
            kernel = serial_or_parallel(x.size, parallel_min, serial, parallel)
            for n in range(x.shape[0]):
                kernel(x[n:n + 1].reshape(image), y[n:n + 1].reshape(image), *args)
            return y
    x = np.ascontiguousarray(x)
    y = out if out is not None and out.flags.c_contiguous else np.empty_like(x)
    if x.size:
        serial_or_parallel(x.size, parallel_min, serial, parallel)(x.reshape(view), y.reshape(view), *args)
    if out is not None and y is not out:
        out[...] = y
        return out
    return y


def erf(x: np.ndarray, out=None) -> np.ndarray:
    """``erf(x)`` of a float32 array, into ``out`` (``x``'s shape; may be ``x``) or a new array."""
    return _run(erf_serial, erf_parallel, x, out, (-1,))


def gelu(x: np.ndarray, c: np.float32, out=None, bias=None) -> np.ndarray:
    """``((erf(v * c) + 1) * v) * 0.5`` for ``v = x`` (+ ``bias`` along the last axis, float32, contiguous, if given)
    of a float32 array, into ``out`` (may be ``x``) or a new array."""
    if bias is None:
        return _run(gelu_serial, gelu_parallel, x, out, (-1,), c)
    return _run(bias_gelu_serial, bias_gelu_parallel, x, out, (-1, bias.shape[0]), bias, c)


def scale_shift(x: np.ndarray, factor: np.ndarray, shift: np.ndarray, relu: bool, out=None) -> np.ndarray:
    """``x * factor + shift`` per channel (axis 1 of ``(N, C, ...)``; ``factor``, ``shift`` contiguous, of
    ``x``'s dtype), then ReLU if ``relu``; into ``out`` (may be ``x``) or a new array."""
    view = (x.shape[0], x.shape[1], -1) if x.size else (-1,)
    return _run(scale_shift_serial, scale_shift_parallel, x, out, view, factor, shift, bool(relu),
                parallel_min=MEMORY_BOUND_PARALLEL_MIN)


def layer_scale_residual(x: np.ndarray, residual: np.ndarray, bias: np.ndarray, gamma: np.ndarray,
                         out=None) -> np.ndarray:
    """``transpose(x + bias, (0, 3, 1, 2)) * gamma + residual`` for channels-last ``x`` ``(N, H, W, C)`` and
    ``residual`` ``(N, C, H, W)`` of one float dtype, ``bias`` and ``gamma`` contiguous of length ``C``:
    ConvNeXt's block output, ``Linear -> permute -> layer scale -> + shortcut``, in one pass instead of four.
    Into ``out`` (``residual``'s shape, C-contiguous; may be ``residual``) or a new array."""
    n, h, w, c = x.shape
    rows = np.ascontiguousarray(x).reshape(n, h * w, c)
    shortcut = np.ascontiguousarray(residual).reshape(n, c, h * w)
    y = out if out is not None else np.empty(residual.shape, residual.dtype)
    if x.size:
        kernel = serial_or_parallel(x.size, MEMORY_BOUND_PARALLEL_MIN, layer_scale_residual_serial,
                                    layer_scale_residual_parallel)
        kernel(rows, shortcut, y.reshape(n, c, h * w), bias, gamma)
    return y


def scale_shift_blocked(x: np.ndarray, factor: np.ndarray, shift: np.ndarray, relu: bool) -> np.ndarray:
    """:func:`scale_shift_lanes_serial` on the blocked ``(N, Cb, H, W, 16)`` array ``x`` (a channel slice of a larger
    buffer too, whose images are each contiguous), ``factor`` and ``shift`` padded to whole blocks: a new array,
    written with streaming stores from :data:`STREAM_MIN_L2` second-level caches' size."""
    if not (x[0].flags.c_contiguous and x.strides[0] % x.itemsize == 0):
        x = np.ascontiguousarray(x)
    n = x.shape[0]
    image_floats = x.strides[0] // x.itemsize
    per_image = x[0].size
    flat = np.lib.stride_tricks.as_strided(x, shape=((n - 1) * image_floats + per_image,), strides=(x.itemsize,))
    stream = x.nbytes >= STREAM_MIN_L2 * l2_cache_bytes()
    y = aligned_empty(x.shape, x.dtype) if stream else np.empty(x.shape, x.dtype)  # (streaming needs 64-byte lines)
    # (parallel from PARALLEL_MIN: DenseNet-121 at batch 1, in-process interleaved, 1.00x always parallel,
    # 1.03x from 256K elements, 1.08x from MEMORY_BOUND_PARALLEL_MIN)
    kernel = serial_or_parallel(x.size, PARALLEL_MIN, scale_shift_lanes_serial, scale_shift_lanes_parallel)
    kernel(flat, image_floats, y.reshape(n, x.shape[1], -1), factor, shift, bool(relu), stream)
    return y


def precompile_kernels(function: str, dtype: str) -> list:
    """The kernels ``function`` (``erf``, ``gelu``, ``bias_gelu``, ``scale_shift``, ``scale_shift_lanes``,
    ``layer_scale_residual``) calls on ``dtype`` activations (see :mod:`convengine.runtime.precompile`): its serial
    and parallel forms."""
    from numba import types

    from ..runtime.precompile import Kernel

    element = getattr(types, dtype)
    flat = types.Array(element, 1, "C")
    if function == "layer_scale_residual":
        planes = types.Array(element, 3, "C")
        signature = (planes, planes, planes, flat, flat)
    elif function == "scale_shift":
        planes = types.Array(element, 3, "C")
        signature = (planes, planes, flat, flat, types.boolean)
    elif function == "scale_shift_lanes":
        signature = (flat, types.int64, types.Array(element, 3, "C"), flat, flat, types.boolean, types.boolean)
    elif function == "bias_gelu":
        rows = types.Array(element, 2, "C")
        signature = (rows, rows, flat, element)
    else:
        signature = (flat, flat) + ((element,) if function == "gelu" else ())
    return [Kernel(__name__, f"{function}_{form}", signature, cost=1.0 if form == "serial" else 1.5)
            for form in ("serial", "parallel")]
