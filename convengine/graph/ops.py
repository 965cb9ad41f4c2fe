"""Operators other than convolution: shape rules and numpy kernels, with ONNX semantics.

Each operator is an :class:`Op` with ``infer(node, shapes) -> output shapes`` and
``run(node, arrays) -> output arrays``. Convolution is listed too (for its shape rule) but
runs through the engine, which is the executor's business, not this module's.
Spatial attributes use ONNX's conventions: ``pads = [top, left, bottom, right]``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..core import epilogue
from ..core.arrays import kernel_ready
from ..core.layouts import BLOCK
from ..runtime.threads import parallel_chunks
from .ir import GraphError, Node

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Op:
    infer: Callable[[Node, list[Shape]], list[Shape]]
    run: Callable[[Node, list[np.ndarray]], list[np.ndarray]]


OPS: dict[str, Op] = {}


#: Per operator, ``kernels(node, input_shapes, dtype, params) -> [Kernel]``: the compiled kernels
#: its ``run`` calls on such inputs, for compiling them ahead (:mod:`convengine.runtime.precompile`).
KERNELS: dict[str, Callable] = {}


def op(name: str, infer):
    def register(run):
        OPS[name] = Op(infer, run)
        return run

    return register


def _same(node, shapes):
    return [shapes[0]]


# -- convolution (shape only; runs through the engine) -------------------------------------------


def conv_problem_args(node: Node) -> dict:
    """Engine keyword arguments for a Conv node (ONNX pads -> (top, bottom, left, right))."""
    top, left, bottom, right = node.attrs.get("pads", (0, 0, 0, 0))
    return dict(stride=tuple(node.attrs.get("strides", (1, 1))), padding=(top, bottom, left, right),
                dilation=tuple(node.attrs.get("dilations", (1, 1))), groups=int(node.attrs.get("group", 1)))


def _conv_infer(node, shapes):
    from ..core.problem import ConvProblem

    x, w = shapes[0], shapes[1]
    try:
        problem = ConvProblem.from_shapes(x, w, **conv_problem_args(node))
    except (ValueError, TypeError) as exc:
        raise GraphError(f"node {node.name!r} (Conv): {exc}") from None
    return [problem.output_shape]


OPS["Conv"] = Op(_conv_infer, None)


# -- normalisation -------------------------------------------------------------------------------


def batchnorm_affine(node: Node, params: list[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    """Inference batch normalisation as ``x * factor + shift`` per channel: ``(factor, shift)`` in ``dtype``,
    from the node's ``scale, bias, mean, var`` (computed in float64, rounded once)."""
    scale, bias, mean, var = (np.asarray(p, np.float64) for p in params[:4])
    factor = scale / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
    shift = bias - mean * factor
    return np.ascontiguousarray(factor, dtype), np.ascontiguousarray(shift, dtype)


def _batchnorm_fast(x) -> bool:  # the one-pass Numba kernel (else numpy): float (N, C, ...) arrays
    return x.dtype in (np.float32, np.float64) and x.ndim >= 2


@op("BatchNormalization", _same)
def _batchnorm(node, arrays, out=None):
    x = arrays[0]
    factor, shift = batchnorm_affine(node, arrays[1:5], x.dtype)
    if _batchnorm_fast(x):
        from ._pointwise_kernels import scale_shift

        return [scale_shift(x, factor, shift, relu=False, out=out)]
    view = (1, -1) + (1,) * (x.ndim - 2)
    return [(x * factor.reshape(view) + shift.reshape(view)).astype(x.dtype, copy=False)]


def _batchnorm_kernels(node, shapes, dtype, params):
    if len(shapes[0]) < 2 or dtype not in ("float32", "float64"):
        return []
    from ._pointwise_kernels import precompile_kernels

    return precompile_kernels("scale_shift", dtype)


KERNELS["BatchNormalization"] = _batchnorm_kernels


@op("LRN", _same)
def _lrn(node, arrays):
    x = arrays[0]
    size = int(node.attrs["size"])
    alpha, beta, bias = node.attrs.get("alpha", 1e-4), node.attrs.get("beta", 0.75), node.attrs.get("bias", 1.0)
    squared = np.square(x)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    padded = np.pad(squared, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
    window = sum(padded[:, i:i + x.shape[1]] for i in range(size))
    return [(x / (bias + alpha / size * window) ** beta).astype(x.dtype, copy=False)]


# -- activations ---------------------------------------------------------------------------------


@op("Relu", _same)
def _relu(node, arrays):
    return [np.maximum(arrays[0], 0)]


@op("Sigmoid", _same)
def _sigmoid(node, arrays):
    x = arrays[0]
    e = np.exp(-np.abs(x))  # never overflows: 1/(1+e^-x) for x >= 0, e^x/(1+e^x) below
    return [np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)]


@op("Tanh", _same)
def _tanh(node, arrays):
    return [np.tanh(arrays[0])]


@op("LeakyRelu", _same)
def _leaky_relu(node, arrays):
    x = arrays[0]
    return [np.where(x >= 0, x, x * x.dtype.type(node.attrs.get("alpha", 0.01)))]


@op("Clip", _same)
def _clip(node, arrays):
    x = arrays[0]
    low, high = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
    return [np.clip(x, x.dtype.type(low), x.dtype.type(high))]


@op("Softmax", _same)
def _softmax(node, arrays):
    x = arrays[0]
    axis = node.attrs.get("axis", -1)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return [e / e.sum(axis=axis, keepdims=True)]


@op("Dropout", _same)
def _dropout(node, arrays):  # inference: identity
    return [arrays[0]]


@op("Identity", _same)
def _identity(node, arrays):
    return [arrays[0]]


# -- pooling -------------------------------------------------------------------------------------


def _pool_geometry(node: Node, shape: Shape):
    """Per spatial axis: (kernel, stride, pad_begin, pad_end incl. ceil-mode extension, out size)."""
    kernel = node.attrs["kernel_shape"]
    strides = node.attrs.get("strides", (1,) * len(kernel))
    dilations = node.attrs.get("dilations", (1,) * len(kernel))
    pads = node.attrs.get("pads", (0,) * (2 * len(kernel)))
    ceil = bool(node.attrs.get("ceil_mode", 0))
    geometry = []
    for axis, (k, s, d) in enumerate(zip(kernel, strides, dilations)):
        size = shape[2 + axis]
        begin, end = pads[axis], pads[axis + len(kernel)]
        span = (k - 1) * d + 1
        room = size + begin + end - span
        if room < 0:
            raise GraphError(f"node {node.name!r} ({node.op}): window {span} larger than padded input {size + begin + end}")
        out = (math.ceil(room / s) if ceil else room // s) + 1
        if ceil and (out - 1) * s >= size + begin:  # last window would start in the padding only
            out -= 1
        extra = max(0, (out - 1) * s + span - (size + begin + end))
        geometry.append((k, s, d, begin, end + extra, end, out))
    return geometry


def _pool_infer(node, shapes):
    shape = shapes[0]
    if len(shape) != 4:
        raise GraphError(f"node {node.name!r} ({node.op}) needs a 4-D NCHW input, got shape {shape}")
    return [shape[:2] + tuple(g[-1] for g in _pool_geometry(node, shape))]


def _window_taps(padded: np.ndarray, geometry):
    """Each kernel tap's strided (N, C, out_h, out_w) view: pooling reduces over these.

    Reducing tap by tap is a handful of whole-array operations (9 for a 3x3 window) instead
    of a reduction over a 6-D strided view, which numpy walks element by element.
    """
    (kh, sh, dh, *_, oh), (kw, sw, dw, *_, ow) = geometry
    for p in range(kh):
        for q in range(kw):
            yield padded[:, :, p * dh:p * dh + sh * (oh - 1) + 1:sh, q * dw:q * dw + sw * (ow - 1) + 1:sw]


def _pool_reduce(padded, geometry, combine):
    taps = _window_taps(padded, geometry)
    result = np.array(next(taps))
    for tap in taps:
        combine(result, tap, out=result)
    return result


def _pad_for_pool(x, geometry, value):
    (_, _, _, top, bottom, _, _), (_, _, _, left, right, _, _) = geometry
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


@dataclass(frozen=True)
class _PoolPlan:
    """How a pool node runs on one input shape and dtype, worked out once (:func:`_pool_plan`)."""

    path: str  # a :mod:`._pool_kernels` function, or "copy" (a 1x1 identity window) or "numpy"
    geometry: tuple
    out_shape: Shape
    args: tuple = ()  # the kernel's arguments after (x, y), before the thread split


#: Plans by (op, attributes, input shape, dtype, outputs): a pool step at batch 1 costs a few
#: tens of microseconds, and working out its geometry in Python was a measurable share of that.
_PLANS: dict[tuple, _PoolPlan] = {}
_POOL_ATTRS = ("kernel_shape", "strides", "dilations", "pads", "ceil_mode", "count_include_pad")


def _pool_plan(node: Node, shape: Shape, dtype: np.dtype) -> _PoolPlan:
    attrs = node.attrs
    key = (node.op, shape, dtype, len(node.outputs),
           *(tuple(v) if isinstance(v := attrs.get(name), list) else v for name in _POOL_ATTRS))
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= 4096:  # (a bound, not a policy: plans are cheap to redo)
            _PLANS.clear()
        plan = _PLANS[key] = _make_pool_plan(node, shape, dtype)
    return plan


def _make_pool_plan(node: Node, shape: Shape, dtype: np.dtype) -> _PoolPlan:
    geometry = tuple(_pool_geometry(node, shape))
    out_shape = shape[:2] + tuple(g[-1] for g in geometry)
    if _is_identity(geometry):
        return _PoolPlan("copy", geometry, out_shape)
    if len(shape) != 4 or dtype not in (np.float32, np.float64) or len(node.outputs) > 1:
        return _PoolPlan("numpy", geometry, out_shape)  # (MaxPool's Indices output is not supported anyway)
    (kh, sh, dh, top, _, _, _), (kw, sw, dw, left, _, _, _) = geometry
    if node.op == "MaxPool":
        path = _maxpool_kernel(geometry)
        args = {"max_pool_3x3_s2": (top, left), "pool_2x2_s2": (False,),
                "pool_s1": (kh, kw, top, left, False, _no_scale(dtype.name)),
                "max_pool": (kh, kw, sh, sw, dh, dw, top, left)}[path]
        return _PoolPlan(path, geometry, out_shape, args)
    if _inside_2x2_s2(geometry):  # every divisor is 4
        return _PoolPlan("pool_2x2_s2", geometry, out_shape, (True,))
    if _stride_1(geometry):  # Inception's branch pools
        scale = _average_scale(geometry, shape, bool(node.attrs.get("count_include_pad", 0)), dtype.name)
        return _PoolPlan("pool_s1", geometry, out_shape, (kh, kw, top, left, True, scale))
    return _PoolPlan("numpy", geometry, out_shape)


_pool_kernels = None  # the module, imported when a pool first runs a kernel (Numba loads then)


def _pool_module():
    """:mod:`._pool_kernels`, imported on first use."""
    global _pool_kernels
    if _pool_kernels is None:
        from . import _pool_kernels
    return _pool_kernels


def _chunks(x: np.ndarray, planes: int) -> int:
    """How many contiguous runs of ``x``'s ``planes`` a pool kernel splits them into: one per thread, one when small."""
    return parallel_chunks(x.size, MIN_PARALLEL_POOL, planes)


def _run_pool(plan: _PoolPlan, x: np.ndarray) -> np.ndarray:
    """``x`` pooled by ``plan``'s kernel: planes split into one contiguous run per thread, or one run when small."""
    kernels = _pool_module()
    y = np.empty(plan.out_shape, x.dtype)
    if plan.path == "max_pool":  # (the general kernel: parallel over planes, 4-D)
        kernels.max_pool(np.ascontiguousarray(x), y, *plan.args)
        return y
    planes = x.shape[0] * x.shape[1]
    getattr(kernels, plan.path)(np.ascontiguousarray(x).reshape((planes,) + x.shape[2:]),
                                y.reshape((planes,) + plan.out_shape[2:]), *plan.args, _chunks(x, planes))
    return y


@op("MaxPool", _pool_infer)
def _maxpool(node, arrays):
    x = arrays[0]
    plan = _pool_plan(node, x.shape, x.dtype)
    if plan.path == "copy":
        return [x.copy()]
    if plan.path == "numpy":
        return [_pool_reduce(_pad_for_pool(x, plan.geometry, -np.inf), plan.geometry, np.maximum)]
    return [_run_pool(plan, x)]


def _maxpool_kernel(geometry) -> str:
    """The :mod:`._pool_kernels` function for this window: the 3x3/2 of most stems, 2x2/2 inside
    the input, any stride-1 one (GoogLeNet's and Inception's branch pools), else the general kernel."""
    (kh, sh, dh, *_), (kw, sw, dw, *_) = geometry
    if (kh, kw, sh, sw, dh, dw) == (3, 3, 2, 2, 1, 1):
        return "max_pool_3x3_s2"
    if _inside_2x2_s2(geometry):
        return "pool_2x2_s2"
    return "pool_s1" if _stride_1(geometry) else "max_pool"


def _pool_kernels_for(node, shapes, dtype, params):
    """MaxPool's and AveragePool's entry in :data:`KERNELS`: the kernel its plan calls, if any."""
    plan = _pool_plan(node, tuple(shapes[0]), np.dtype(dtype))
    if plan.path in ("copy", "numpy"):
        return []
    from ._pool_kernels import precompile_kernels

    return precompile_kernels(plan.path, dtype)


KERNELS["MaxPool"] = _pool_kernels_for

#: Below this many input elements a pool runs on one thread: a parallel start costs more than
#: the work. Session 8 measured one thread faster for every pool of the zoo at batch 1 (up to
#: 4M elements), with the OpenMP workers put to sleep after 2000 spins: a pool thread then
#: waited for its wake-up. With the workers spinning through the step (``runtime.threads``,
#: 100000 rounds), two threads win from here: whole models at batch 1, fresh processes,
#: medians of 20, quiet machine, 4M -> 64K elements: Inception-v3 58.8-59.6 -> 57.5-57.8 ms,
#: SqueezeNet 4.71-4.75 -> 4.42-4.47, GoogLeNet 16.6 -> 16.3-16.5, DenseNet-121 within noise.
MIN_PARALLEL_POOL = 1 << 16


def _is_identity(geometry) -> bool:
    """Whether each window is the one element under it (1x1, stride 1, no padding): the output is the input."""
    return all((k, s, begin, end) == (1, 1, 0, 0) for k, s, _, begin, end, _, _ in geometry)


def _inside_2x2_s2(geometry) -> bool:
    """Whether the windows are 2x2 at stride 2, undilated, none in padding or a ceil-mode extension."""
    return all((k, s, d, begin, end) == (2, 2, 1, 0, 0) for k, s, d, begin, end, _, _ in geometry)


def _stride_1(geometry) -> bool:
    """Whether a pooling window moves one element at a time, undilated: :func:`._pool_kernels.pool_s1`."""
    (_, sh, dh, *_), (_, sw, dw, *_) = geometry
    return (sh, sw, dh, dw) == (1, 1, 1, 1)


@functools.lru_cache(maxsize=None)
def _no_scale(dtype: str) -> np.ndarray:
    """The ``scale`` a max pool passes (unused), read-only as :func:`_average_scale`'s: one compiled signature for both."""
    return _read_only(np.ones(1, dtype))


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _window_counts(geometry, shape: Shape, include_pad: bool) -> np.ndarray:
    """Each output's divisor (out_h, out_w): its window's taps inside the input, or inside input +
    explicit pads with ``count_include_pad``; never the ceil-mode extension (PyTorch and ONNX agree)."""
    counts = []
    for (k, s, d, begin, _, end, out), size in zip(geometry, shape[2:]):
        lo, hi = (-begin, size + end) if include_pad else (0, size)
        taps = (np.arange(out) * s - begin)[:, None] + np.arange(k) * d
        counts.append(((taps >= lo) & (taps < hi)).sum(axis=1))
    return np.multiply.outer(*counts).astype(np.float64)


def _average_scale(geometry, shape: Shape, include_pad: bool, dtype: str) -> np.ndarray:
    """``1 / count`` per output, flat in ``dtype``; one value when every window has the same count."""
    with np.errstate(divide="ignore"):
        scale = (1.0 / _window_counts(geometry, shape, include_pad)).astype(dtype).reshape(-1)
    return _read_only(scale[:1] if (scale == scale[0]).all() else scale)


@op("AveragePool", _pool_infer)
def _avgpool(node, arrays):
    x = arrays[0]
    plan = _pool_plan(node, x.shape, x.dtype)
    if plan.path == "copy":
        return [x.copy()]
    if plan.path != "numpy":
        return [_run_pool(plan, x)]
    total = _pool_reduce(_pad_for_pool(x, plan.geometry, 0), plan.geometry, np.add)
    count = _window_counts(plan.geometry, x.shape, bool(node.attrs.get("count_include_pad", 0))).astype(x.dtype)
    return [np.divide(total, count, out=total)]  # (total: a new array of x's dtype)


KERNELS["AveragePool"] = _pool_kernels_for


def blocked_pool_step(node: Node, shape: Shape, dtype: str) -> Callable[[np.ndarray, bool], np.ndarray]:
    """``node`` (a MaxPool or AveragePool of NCHW ``shape``, any batch) as a step on channel-blocked
    ``(N, C/16, H, W, 16)`` tensors: ``run(x, in_place) -> y``, blocked too (``in_place`` is ignored).

    Why: between two blocked convolutions the pool passes the layout through (:mod:`.blocking`).
    The window's geometry and the averages' divisors are worked out once, here.
    """
    plan = _pool_plan(node, tuple(shape), np.dtype(dtype))
    (kh, sh, dh, top, _, _, _), (kw, sw, dw, left, _, _, _) = plan.geometry
    out_h, out_w = plan.out_shape[2:]
    average = node.op == "AveragePool"
    scale = (_average_scale(plan.geometry, tuple(shape), bool(node.attrs.get("count_include_pad", 0)), dtype)
             if average else _no_scale(dtype))
    if scale.shape[0] > 1:  # one factor per output pixel: per lane, so that the kernel scales whole runs
        scale = _read_only(np.repeat(scale, BLOCK))

    def run(x: np.ndarray, in_place: bool = False) -> np.ndarray:
        n, blocks, h, w, lanes = x.shape
        y = np.empty((n, blocks, out_h, out_w, lanes), x.dtype)
        _pool_module().blocked_pool(x.reshape(n * blocks, h, w * lanes), y.reshape(n * blocks, out_h, out_w * lanes),
                                    kh, kw, sh, sw, dh, dw, top, left, average, scale, _chunks(x, n * blocks))
        return y

    return run


def pools_blocked(node: Node, shape: Shape, dtype: str) -> bool:
    """Whether :func:`blocked_pool_step` runs ``node`` on activations of NCHW ``shape`` and ``dtype``."""
    return (node.op in ("MaxPool", "AveragePool") and len(node.outputs) == 1 and len(shape) == 4
            and dtype in ("float32", "float64") and node.attrs.get("storage_order", 0) == 0)


def blocked_pool_kernels(dtype: str) -> list:
    """The kernel :func:`blocked_pool_step` calls (see :mod:`convengine.runtime.precompile`)."""
    from ._pool_kernels import precompile_kernels

    return precompile_kernels("blocked_pool", dtype)


@op("GlobalAveragePool", lambda node, shapes: [shapes[0][:2] + (1,) * (len(shapes[0]) - 2)])
def _global_avgpool(node, arrays):
    x = arrays[0]
    if x.ndim < 3 or x.dtype not in (np.float32, np.float64) or x.size == 0:
        return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)]
    from ._pool_kernels import plane_means

    rows = kernel_ready(x).reshape(x.shape[0], x.shape[1], -1)
    y = np.empty(x.shape[:2], x.dtype)
    plane_means(rows, y)
    return [y.reshape(x.shape[:2] + (1,) * (x.ndim - 2))]


def _global_avgpool_kernels(node, shapes, dtype, params):
    if len(shapes[0]) < 3 or dtype not in ("float32", "float64"):
        return []
    from ._pool_kernels import precompile_kernels

    return precompile_kernels("plane_means", dtype)


KERNELS["GlobalAveragePool"] = _global_avgpool_kernels


def blocked_global_avgpool(x: np.ndarray, in_place: bool = False) -> np.ndarray:
    """GlobalAveragePool of a channel-blocked ``(N, C/16, H, W, 16)`` tensor, as the NCHW ``(N, C, 1, 1)``
    result (``in_place`` is ignored).

    Why: a network's last convolution then writes blocked and no NCHW copy of its output is made
    for the pool (:mod:`.blocking`); the result is the same memory in either layout.
    """
    n, blocks, h, w, lanes = x.shape
    y = np.empty((n * blocks, lanes), x.dtype)
    _pool_module().blocked_plane_means(kernel_ready(x).reshape(n * blocks, h * w * lanes), y)
    return y.reshape(n, blocks * lanes, 1, 1)


def blocked_global_avgpool_kernels(dtype: str) -> list:
    """The kernel :func:`blocked_global_avgpool` calls (see :mod:`convengine.runtime.precompile`)."""
    from ._pool_kernels import precompile_kernels

    return precompile_kernels("blocked_plane_means", dtype)


@op("GlobalMaxPool", lambda node, shapes: [shapes[0][:2] + (1,) * (len(shapes[0]) - 2)])
def _global_maxpool(node, arrays):
    x = arrays[0]
    return [x.max(axis=tuple(range(2, x.ndim)), keepdims=True)]


# -- dense ---------------------------------------------------------------------------------------


def _gemm_infer(node, shapes):
    a, b = shapes[0], shapes[1]
    if len(a) != 2 or len(b) != 2:
        raise GraphError(f"node {node.name!r} (Gemm) needs 2-D inputs, got {a} and {b}")
    m, k = a[::-1] if node.attrs.get("transA", 0) else a
    k2, n = b[::-1] if node.attrs.get("transB", 0) else b
    if k != k2:
        raise GraphError(f"node {node.name!r} (Gemm): inner dimensions differ ({k} vs {k2}); input shape {a}, weight {b}")
    return [(m, n)]


#: A one-row Gemm whose weights take at least this many bytes runs as a Numba matrix-vector
#: product (see ``_dense_kernels``); below it a Numba kernel start (~50 us) costs more than
#: the product, and OpenBLAS runs such a small one on one thread anyway.
MATVEC_MIN_BYTES = 1 << 20


def _one_row_product(a, weight_rows):
    """``a @ weight_rows.T`` for one row ``a``, on Numba's threads instead of BLAS's."""
    from ..runtime.threads import numba_threads
    from ._dense_kernels import matvec_rows

    numba_threads()
    y = np.empty((1, weight_rows.shape[0]), a.dtype)
    matvec_rows(weight_rows, np.ascontiguousarray(a[0]), y[0])
    return y


def _runs_matvec(a_rows: int, a_dtype, rows) -> bool:
    """Whether ``a @ rows.T`` runs as :func:`_one_row_product` (``rows`` is None unless transB)."""
    return (rows is not None and a_rows == 1 and a_dtype == rows.dtype and a_dtype in (np.float32, np.float64)
            and rows.flags.c_contiguous and rows.nbytes >= MATVEC_MIN_BYTES)


def _gemm_kernels(node, shapes, dtype, params):
    rows = params.get(node.inputs[1]) if node.attrs.get("transB", 0) else None
    a_rows = shapes[0][-1] if node.attrs.get("transA", 0) else shapes[0][0]
    if not _runs_matvec(a_rows, np.dtype(dtype), rows):
        return []
    from ._dense_kernels import precompile_kernels

    return precompile_kernels(dtype, weights_writable=rows.flags.writeable)


KERNELS["Gemm"] = _gemm_kernels


@op("Gemm", _gemm_infer)
def _gemm(node, arrays):
    a, b = arrays[0], arrays[1]
    a = a.T if node.attrs.get("transA", 0) else a
    rows = b if node.attrs.get("transB", 0) else None  # (N, K): a row of weights per output
    if _runs_matvec(a.shape[0], a.dtype, rows):
        y = _one_row_product(a, rows)
    else:
        y = np.matmul(a, b.T if rows is not None else b)
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    if alpha != 1.0:
        y *= y.dtype.type(alpha)
    if len(arrays) > 2 and arrays[2] is not None:
        y += arrays[2] * y.dtype.type(beta)
    return [y]


def _matmul_infer(node, shapes):
    return [np.broadcast_shapes(shapes[0][:-2], shapes[1][:-2]) + (shapes[0][-2], shapes[1][-1])]


@op("MatMul", _matmul_infer)
def _matmul(node, arrays):
    a, b = arrays[0], arrays[1]
    if b.ndim == 2 and a.ndim > 2:  # (..., K) @ (K, N), ConvNeXt's channels-last Linear: one GEMM over every row
        rows = np.ascontiguousarray(a).reshape(-1, a.shape[-1])  # (numpy would make a BLAS call per leading index)
        return [np.matmul(rows, b).reshape(a.shape[:-1] + (b.shape[1],))]
    return [np.matmul(a, b)]


# -- elementwise and structure -------------------------------------------------------------------


def _broadcast(node, shapes):
    try:
        return [np.broadcast_shapes(*shapes)]
    except ValueError:
        raise GraphError(f"node {node.name!r} ({node.op}): shapes {shapes} do not broadcast") from None


@op("Add", _broadcast)
def _add(node, arrays):
    return [arrays[0] + arrays[1]]


@op("Sum", _broadcast)
def _sum(node, arrays):
    total = arrays[0]
    for a in arrays[1:]:
        total = total + a
    return [total]


@op("Mul", _broadcast)
def _mul(node, arrays):
    return [arrays[0] * arrays[1]]


def _concat_infer(node, shapes):
    axis = node.attrs.get("axis", 1) % len(shapes[0])
    for s in shapes[1:]:
        if len(s) != len(shapes[0]) or any(a != b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != axis):
            raise GraphError(f"node {node.name!r} (Concat): shapes {shapes} differ off axis {axis}")
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return [tuple(out)]


@op("Concat", _concat_infer)
def _concat(node, arrays):
    return [np.concatenate(arrays, axis=node.attrs.get("axis", 1))]


def _flatten_axis(axis: int, ndim: int) -> int:
    """ONNX Flatten's axis in [0, ndim]; a negative one counts from the end (-1 leaves the last axis alone)."""
    return axis + ndim if axis < 0 else axis


def _flatten_infer(node, shapes):
    shape = shapes[0]
    axis = _flatten_axis(node.attrs.get("axis", 1), len(shape))
    return [(math.prod(shape[:axis]), math.prod(shape[axis:]))]


@op("Flatten", _flatten_infer)
def _flatten(node, arrays):
    x = arrays[0]
    axis = _flatten_axis(node.attrs.get("axis", 1), x.ndim)
    return [x.reshape(math.prod(x.shape[:axis]), -1)]


def _reshape_target(node, shape: Shape) -> Shape:
    target = list(node.attrs["shape"])
    target = [shape[i] if d == 0 else d for i, d in enumerate(target)]
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = math.prod(shape) // known if known else 0
    if math.prod(target) != math.prod(shape):
        raise GraphError(f"node {node.name!r} (Reshape): cannot reshape {shape} to {node.attrs['shape']}")
    return tuple(target)


@op("Reshape", lambda node, shapes: [_reshape_target(node, shapes[0])])
def _reshape(node, arrays):
    x = arrays[0]
    return [x.reshape(_reshape_target(node, x.shape))]


def _transpose_perm(node, ndim):
    return node.attrs.get("perm") or tuple(reversed(range(ndim)))


@op("Transpose", lambda node, shapes: [tuple(shapes[0][p] for p in _transpose_perm(node, len(shapes[0])))])
def _transpose(node, arrays):
    return [np.ascontiguousarray(arrays[0].transpose(_transpose_perm(node, arrays[0].ndim)))]


def _squeeze_shape(node, shape):
    axes = node.attrs.get("axes")
    if axes is None:
        return tuple(d for d in shape if d != 1)
    axes = {a % len(shape) for a in axes}
    return tuple(d for i, d in enumerate(shape) if i not in axes)


@op("Squeeze", lambda node, shapes: [_squeeze_shape(node, shapes[0])])
def _squeeze(node, arrays):
    return [arrays[0].reshape(_squeeze_shape(node, arrays[0].shape))]


def _unsqueeze_shape(node, shape):
    out = list(shape)
    rank = len(shape) + len(node.attrs["axes"])
    for axis in sorted(a % rank for a in node.attrs["axes"]):
        out.insert(axis, 1)
    return tuple(out)


@op("Unsqueeze", lambda node, shapes: [_unsqueeze_shape(node, shapes[0])])
def _unsqueeze(node, arrays):
    return [arrays[0].reshape(_unsqueeze_shape(node, arrays[0].shape))]


def _pad_infer(node, shapes):
    shape, pads = shapes[0], node.attrs["pads"]
    return [tuple(d + pads[i] + pads[i + len(shape)] for i, d in enumerate(shape))]


@op("Pad", _pad_infer)
def _pad(node, arrays):
    x, pads = arrays[0], node.attrs["pads"]
    mode = node.attrs.get("mode", "constant")
    widths = [(pads[i], pads[i + x.ndim]) for i in range(x.ndim)]
    if mode == "constant":
        return [np.pad(x, widths, constant_values=node.attrs.get("value", 0.0))]
    return [np.pad(x, widths, mode={"reflect": "reflect", "edge": "edge"}[mode])]


# -- elementwise math ----------------------------------------------------------------------------
# ONNX's definitions, on float tensors; each returns an array of its input's dtype.


def _erf(x, out=None):
    """float32: :func:`._pointwise_kernels.erf` (within 1.3e-7, vectorised, ~10x scipy's); others: scipy's."""
    if x.dtype == np.float32:
        from ._pointwise_kernels import erf

        return erf(x, out=out)
    from scipy.special import erf

    return erf(x, out=out)


#: GELU's ``1/sqrt(2)`` in float32: what exporters' ``Div(x, 1.4142135)`` becomes as a multiplication.
GELU_SCALE = np.float32(epilogue.GELU_SCALE)


def _hard_sigmoid_of(x, alpha, beta):
    y = x * x.dtype.type(alpha)
    y += x.dtype.type(beta)
    return np.clip(y, 0, 1, out=y)


def _gelu(x, approximate: str):
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        inner = np.tanh(x.dtype.type(math.sqrt(2 / math.pi)) * (x + x.dtype.type(0.044715) * x * x * x))
    elif x.dtype == np.float32:  # 0.5 x (1 + erf(x / sqrt(2))) in one pass
        from ._pointwise_kernels import gelu

        return gelu(x, GELU_SCALE)
    else:
        inner = _erf(x * x.dtype.type(1 / math.sqrt(2)))
    inner += 1
    inner *= x
    inner *= x.dtype.type(0.5)
    return inner


def _softplus(x):  # log(1 + e^x) without overflow: max(x, 0) + log1p(e^-|x|)
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _elu(x, alpha):
    return np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)))


#: ``{op: fn(node, x)}``: the unary elementwise operators beyond the activations above.
UNARY = {
    "Neg": lambda node, x: np.negative(x),
    "Abs": lambda node, x: np.abs(x),
    "Sqrt": lambda node, x: np.sqrt(x),
    "Exp": lambda node, x: np.exp(x),
    "Log": lambda node, x: np.log(x),
    "Reciprocal": lambda node, x: np.reciprocal(x),
    "Floor": lambda node, x: np.floor(x),
    "Ceil": lambda node, x: np.ceil(x),
    "Erf": lambda node, x: _erf(x),
    "Softplus": lambda node, x: _softplus(x),
    "Softsign": lambda node, x: x / (1 + np.abs(x)),
    "HardSigmoid": lambda node, x: _hard_sigmoid_of(x, node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5)),
    "HardSwish": lambda node, x: x * _hard_sigmoid_of(x, 1 / 6, 0.5),
    "Gelu": lambda node, x: _gelu(x, node.attrs.get("approximate", "none")),
    "Elu": lambda node, x: _elu(x, node.attrs.get("alpha", 1.0)),
    "Selu": lambda node, x: x.dtype.type(node.attrs.get("gamma", 1.05070102214813232421875))
    * _elu(x, node.attrs.get("alpha", 1.67326319217681884765625)),
}


def _unary_kernel(name):
    fn = UNARY[name]
    return lambda node, arrays: [np.asarray(fn(node, arrays[0])).astype(arrays[0].dtype, copy=False)]


for _name in UNARY:
    OPS[_name] = Op(_same, _unary_kernel(_name))


def _pointwise_kernels_of(function: str):
    def kernels(node, shapes, dtype, params):
        if dtype != "float32" or (function == "gelu" and node.attrs.get("approximate", "none") != "none"):
            return []
        from ._pointwise_kernels import precompile_kernels

        return precompile_kernels(function, dtype)

    return kernels


KERNELS["Erf"] = _pointwise_kernels_of("erf")
KERNELS["Gelu"] = _pointwise_kernels_of("gelu")


def _power(x, exponent):
    """``x ** exponent``; a scalar exponent of 2, 3, 0.5 or 1 takes the exact cheap route (what exporters write for
    variances, GELU's tanh form and norms); ``pow`` gives the same correctly rounded results there."""
    if exponent.size == 1 and exponent.ndim <= x.ndim:
        e = float(exponent.reshape(-1)[0])
        shape = np.broadcast_shapes(x.shape, exponent.shape)
        if e == 2:
            return np.multiply(x, x).reshape(shape)
        if e == 3:
            return (x * x * x).reshape(shape)
        if e == 0.5:
            return np.sqrt(x).reshape(shape)
        if e == 1:
            return np.array(x).reshape(shape)
    return np.power(x, exponent.astype(x.dtype, copy=False))


#: ``{op: fn(a, b)}``: binary elementwise operators with numpy broadcasting (Add and Mul are above).
BINARY = {
    "Sub": np.subtract,
    "Div": np.divide,
    "Pow": _power,
    "PRelu": lambda x, slope: np.where(x < 0, x * slope, x),
}

for _name, _fn in BINARY.items():
    OPS[_name] = Op(_broadcast, lambda node, arrays, _fn=_fn: [_fn(arrays[0], arrays[1]).astype(arrays[0].dtype, copy=False)])


def _variadic_kernel(combine):
    def run(node, arrays):
        out = np.array(arrays[0])  # a copy: never hand back an input
        for a in arrays[1:]:
            out = combine(out, a)
        return [out]

    return run


OPS["Max"] = Op(_broadcast, _variadic_kernel(np.maximum))
OPS["Min"] = Op(_broadcast, _variadic_kernel(np.minimum))


# -- reductions ----------------------------------------------------------------------------------
# Attributes: ``axes`` (sorted, non-negative; absent means every axis) and ``keepdims`` (0 or 1).


def _reduce_axes(node, ndim: int) -> tuple[int, ...]:
    axes = node.attrs.get("axes")
    return tuple(range(ndim)) if axes is None else tuple(axes)


def _reduce_infer(node, shapes):
    shape = shapes[0]
    axes = _reduce_axes(node, len(shape))
    if node.attrs.get("keepdims", 1):
        return [tuple(1 if i in axes else d for i, d in enumerate(shape))]
    return [tuple(d for i, d in enumerate(shape) if i not in axes)]


def _log_sum_exp(x, axis, keepdims):
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0)  # all -inf (or an inf) in a slice: no shift
    out = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return out if keepdims else np.squeeze(out, axis=axis)


#: ``{op: fn(x, axis, keepdims)}``, with ONNX's definitions.
REDUCTIONS = {
    "ReduceMean": lambda x, axis, keep: np.mean(x, axis=axis, keepdims=keep),
    "ReduceSum": lambda x, axis, keep: np.sum(x, axis=axis, keepdims=keep),
    "ReduceMax": lambda x, axis, keep: np.max(x, axis=axis, keepdims=keep),
    "ReduceMin": lambda x, axis, keep: np.min(x, axis=axis, keepdims=keep),
    "ReduceProd": lambda x, axis, keep: np.prod(x, axis=axis, keepdims=keep),
    "ReduceL1": lambda x, axis, keep: np.sum(np.abs(x), axis=axis, keepdims=keep),
    "ReduceL2": lambda x, axis, keep: np.sqrt(np.sum(np.square(x), axis=axis, keepdims=keep)),
    "ReduceSumSquare": lambda x, axis, keep: np.sum(np.square(x), axis=axis, keepdims=keep),
    "ReduceLogSum": lambda x, axis, keep: np.log(np.sum(x, axis=axis, keepdims=keep)),
    "ReduceLogSumExp": _log_sum_exp,
}


def _reduction_kernel(name):
    fn = REDUCTIONS[name]

    def run(node, arrays):
        x = arrays[0]
        out = fn(x, _reduce_axes(node, x.ndim), bool(node.attrs.get("keepdims", 1)))
        return [np.asarray(out).astype(x.dtype, copy=False)]

    return run


for _name in REDUCTIONS:
    OPS[_name] = Op(_reduce_infer, _reduction_kernel(_name))


# -- layer normalisation -------------------------------------------------------------------------


def _layer_norm_infer(node, shapes):
    shape = shapes[0]
    axis = node.attrs.get("axis", -1) % len(shape)
    reduced = shape[:axis] + (1,) * (len(shape) - axis)
    return [shape] + [reduced] * (len(node.outputs) - 1)  # Y, then the optional Mean and InvStdDev


def _layer_norm_fast(node, x, scale, bias) -> bool:
    """Whether :func:`._layer_norm_kernels.layer_norm` runs it: float, over the last axis only, Y alone wanted."""
    return (len(node.outputs) == 1 and x.dtype in (np.float32, np.float64) and x.ndim >= 1
            and node.attrs.get("axis", -1) % x.ndim == x.ndim - 1 and scale.size == x.shape[-1]
            and (bias is None or bias.size == x.shape[-1]))


@op("LayerNormalization", _layer_norm_infer)
def _layer_norm(node, arrays):
    """Normalise over the axes from ``axis`` on (ConvNeXt: the channels, after a Transpose to NHWC), then scale and shift."""
    x, scale = arrays[0], arrays[1]
    bias = arrays[2] if len(arrays) > 2 else None
    if _layer_norm_fast(node, x, scale, bias):
        from ._layer_norm_kernels import layer_norm

        shift = np.zeros(x.shape[-1], x.dtype) if bias is None else bias
        scale, shift = (np.ascontiguousarray(p.reshape(-1), x.dtype) for p in (scale, shift))
        return [layer_norm(x, scale, shift, node.attrs.get("epsilon", 1e-5))]
    axes = tuple(range(node.attrs.get("axis", -1) % x.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    centred = x - mean
    variance = np.mean(np.square(centred), axis=axes, keepdims=True)
    variance += x.dtype.type(node.attrs.get("epsilon", 1e-5))
    inv_std = 1 / np.sqrt(variance)
    centred *= inv_std
    centred *= scale
    if bias is not None:
        centred += bias
    return [centred, mean, inv_std][:len(node.outputs)]


def _layer_norm_kernels(node, shapes, dtype, params):
    shape = shapes[0]
    if (len(node.outputs) != 1 or dtype not in ("float32", "float64") or not shape
            or node.attrs.get("axis", -1) % len(shape) != len(shape) - 1):
        return []
    from ._layer_norm_kernels import precompile_kernels

    return precompile_kernels(dtype)


KERNELS["LayerNormalization"] = _layer_norm_kernels


# -- slicing: Split, Slice, Gather on data ---------------------------------------------------------
# Split and Slice return views where the result is contiguous anyway (a channel split at batch 1),
# so the executor counts them among its view operators.


def _split_infer(node, shapes):
    shape, axis = shapes[0], node.attrs["axis"]
    sizes = node.attrs["split"]
    if sum(sizes) != shape[axis]:
        raise GraphError(f"node {node.name!r} (Split): sizes {list(sizes)} do not add up to axis {axis} of {shape}")
    return [shape[:axis] + (s,) + shape[axis + 1:] for s in sizes]


@op("Split", _split_infer)
def _split(node, arrays):
    x, axis = arrays[0], node.attrs["axis"]
    bounds = np.cumsum(node.attrs["split"])[:-1]
    return [np.ascontiguousarray(part) for part in np.split(x, bounds, axis=axis)]


def _slices(node, shape) -> tuple:
    index = [slice(None)] * len(shape)
    for start, end, axis, step in zip(node.attrs["starts"], node.attrs["ends"], node.attrs["axes"],
                                      node.attrs.get("steps") or [1] * len(node.attrs["axes"])):
        index[axis] = slice(start, end, step)
    return tuple(index)


def _slice_infer(node, shapes):
    shape = shapes[0]
    return [tuple(len(range(*s.indices(d))) for s, d in zip(_slices(node, shape), shape))]


@op("Slice", _slice_infer)
def _slice(node, arrays):
    x = arrays[0]
    return [np.ascontiguousarray(x[_slices(node, x.shape)])]


def _gather_infer(node, shapes):
    shape, axis = shapes[0], node.attrs["axis"]
    return [shape[:axis] + np.shape(node.attrs["indices"]) + shape[axis + 1:]]


@op("Gather", _gather_infer)
def _gather(node, arrays):
    return [np.take(arrays[0], np.asarray(node.attrs["indices"], dtype=np.int64), axis=node.attrs["axis"])]


# -- resize --------------------------------------------------------------------------------------
# Attributes: ``mode`` (nearest, linear), ``coordinate_transformation_mode``, ``nearest_mode``,
# ``sizes`` (output size of each axis from 2 on) and ``scales`` (the scale of each such axis, or
# absent when the file gave sizes: then the scale is output / input, as ONNX defines it).


def _resize_infer(node, shapes):
    return [tuple(shapes[0][:2]) + tuple(node.attrs["sizes"])]


def _source_coordinates(node, out_size: int, in_size: int, scale: float) -> np.ndarray:
    """Where each output position samples the input, in input coordinates (ONNX Resize's transformations).

    In float32, as ONNX Runtime computes them: a coordinate that lands on a half (where the
    nearest mode decides) lands there in both, not a rounding error to either side of it.
    """
    f = np.float32
    x = np.arange(out_size, dtype=f)
    scale = f(scale)
    mode = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    if mode == "asymmetric":
        return x / scale
    if mode == "align_corners":
        return x * (f(in_size - 1) / f(out_size - 1)) if out_size > 1 else np.zeros_like(x)
    if mode == "pytorch_half_pixel":
        return (x + f(0.5)) / scale - f(0.5) if out_size > 1 else np.zeros_like(x)
    if mode == "tf_half_pixel_for_nn":
        return (x + f(0.5)) / scale
    if mode == "half_pixel_symmetric":
        adjustment = f(out_size) / (scale * f(in_size))
        return f(in_size) / f(2) * (f(1) - adjustment) + (x + f(0.5)) / scale - f(0.5)
    return (x + f(0.5)) / scale - f(0.5)  # half_pixel


def _nearest(coords: np.ndarray, mode: str) -> np.ndarray:
    if mode == "floor":
        return np.floor(coords)
    if mode == "ceil":
        return np.ceil(coords)
    if mode == "round_prefer_ceil":
        return np.floor(coords + 0.5)
    return np.ceil(coords - 0.5)  # round_prefer_floor: halves go down


@op("Resize", _resize_infer)
def _resize(node, arrays):
    """Separable: one axis at a time, a gather (nearest) or a two-tap blend (linear), indices clamped to the edge."""
    x = arrays[0]
    scales = node.attrs.get("scales")
    for k, out_size in enumerate(node.attrs["sizes"]):
        axis, in_size = 2 + k, x.shape[2 + k]
        scale = scales[k] if scales else np.float32(out_size) / np.float32(in_size)
        if out_size == in_size and scale == 1:
            continue
        coords = _source_coordinates(node, out_size, in_size, scale)
        if node.attrs.get("mode", "nearest") == "nearest":
            index = np.clip(_nearest(coords, node.attrs.get("nearest_mode", "round_prefer_floor")), 0, in_size - 1)
            x = np.take(x, index.astype(np.int64), axis=axis)
            continue
        low = np.floor(coords)
        weight = (coords - low).astype(x.dtype)
        low = low.astype(np.int64)
        view = (-1,) + (1,) * (x.ndim - axis - 1)
        a = np.take(x, np.clip(low, 0, in_size - 1), axis=axis)
        b = np.take(x, np.clip(low + 1, 0, in_size - 1), axis=axis)
        x = a + (b - a) * weight.reshape(view)
    return [np.array(x) if x is arrays[0] else np.ascontiguousarray(x)]


# -- transposed convolution ----------------------------------------------------------------------


def _conv_transpose_geometry(node, x_shape, w_shape):
    """Per spatial axis: (kernel, stride, dilation, pad_begin, output size)."""
    rank = len(x_shape) - 2
    kernel = w_shape[2:]
    strides = node.attrs.get("strides") or (1,) * rank
    dilations = node.attrs.get("dilations") or (1,) * rank
    pads = node.attrs.get("pads") or (0,) * (2 * rank)
    extra = node.attrs.get("output_padding") or (0,) * rank
    geometry = []
    for i in range(rank):
        size = strides[i] * (x_shape[2 + i] - 1) + extra[i] + (kernel[i] - 1) * dilations[i] + 1 - pads[i] - pads[rank + i]
        if size <= 0:
            raise GraphError(f"node {node.name!r} (ConvTranspose): output size {size} along spatial axis {i}")
        geometry.append((kernel[i], strides[i], dilations[i], pads[i], size))
    return geometry


def _conv_transpose_infer(node, shapes):
    x, w = shapes[0], shapes[1]
    group = node.attrs.get("group", 1)
    if len(x) != 4 or len(w) != 4 or x[1] != w[0] or x[1] % group:
        raise GraphError(f"node {node.name!r} (ConvTranspose): input {x} and weight {w} (Cin, Cout/group, kh, kw) "
                         f"do not fit with group={group}")
    return [(x[0], w[1] * group) + tuple(g[-1] for g in _conv_transpose_geometry(node, x, w))]


@op("ConvTranspose", _conv_transpose_infer)
def _conv_transpose(node, arrays):
    """One matrix product per group (every input pixel times every kernel tap), then each tap's
    strided scatter-add into the output (col2im), then the crop by ``pads`` (a negative pad
    keeps zeros on that side)."""
    x, w = arrays[0], arrays[1]
    bias = arrays[2] if len(arrays) > 2 else None
    group = node.attrs.get("group", 1)
    (kh, sh, dh, top, out_h), (kw, sw, dw, left, out_w) = _conv_transpose_geometry(node, x.shape, w.shape)
    n, cin, h, wd = x.shape
    cin_g, cout_g = cin // group, w.shape[1]
    # the full result spans [0, sh * (h - 1) + (kh - 1) * dh + 1); the output is [top, top + out_h) of it
    oy, ox = max(0, -top), max(0, -left)
    full = np.zeros((n, cout_g * group, oy + max(sh * (h - 1) + (kh - 1) * dh + 1, top + out_h),
                     ox + max(sw * (wd - 1) + (kw - 1) * dw + 1, left + out_w)), x.dtype)
    for g in range(group):
        xg = x[:, g * cin_g:(g + 1) * cin_g].reshape(n, cin_g, h * wd)
        wg = w[g * cin_g:(g + 1) * cin_g].reshape(cin_g, cout_g * kh * kw)
        cols = np.matmul(wg.T, xg).reshape(n, cout_g, kh, kw, h, wd)
        target = full[:, g * cout_g:(g + 1) * cout_g, oy:, ox:]
        for p in range(kh):
            for q in range(kw):
                target[:, :, p * dh:p * dh + sh * (h - 1) + 1:sh, q * dw:q * dw + sw * (wd - 1) + 1:sw] += cols[:, :, p, q]
    y = np.ascontiguousarray(full[:, :, oy + top:oy + top + out_h, ox + left:ox + left + out_w])
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    return [y]


# -- in-place variants -----------------------------------------------------------------------------
#: Elementwise operators that can overwrite their first input when nothing reads it afterwards
#: (the executor decides when): one memory pass and no allocation instead of a fresh array.
INPLACE = {
    "Relu": lambda node, arrays: [np.maximum(arrays[0], 0, out=arrays[0])],
    "Clip": lambda node, arrays: [np.clip(arrays[0], arrays[0].dtype.type(node.attrs.get("min", -np.inf)),
                                          arrays[0].dtype.type(node.attrs.get("max", np.inf)), out=arrays[0])],
    "Add": lambda node, arrays: [np.add(arrays[0], arrays[1], out=arrays[0])],
    "Mul": lambda node, arrays: [np.multiply(arrays[0], arrays[1], out=arrays[0])],
    "Erf": lambda node, arrays: [_erf(arrays[0], out=arrays[0])],
    "BatchNormalization": lambda node, arrays: _batchnorm(node, arrays, out=arrays[0]),
}
