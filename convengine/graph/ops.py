"""Operators other than convolution: shape rules and numpy kernels, with ONNX semantics.

Each operator is an :class:`Op` with ``infer(node, shapes) -> output shapes`` and
``run(node, arrays) -> output arrays``. Convolution is listed too (for its shape rule) but
runs through the engine, which is the executor's business, not this module's.
Spatial attributes use ONNX's conventions: ``pads = [top, left, bottom, right]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..core.arrays import kernel_ready
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


@op("BatchNormalization", _same)
def _batchnorm(node, arrays):
    x, scale, bias, mean, var = arrays[:5]
    factor = scale / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
    shift = bias - mean * factor
    view = (1, -1) + (1,) * (x.ndim - 2)
    return [(x * factor.reshape(view) + shift.reshape(view)).astype(x.dtype, copy=False)]


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


@op("MaxPool", _pool_infer)
def _maxpool(node, arrays):
    x = arrays[0]
    geometry = _pool_geometry(node, x.shape)
    if x.ndim != 4 or len(node.outputs) > 1:  # (the Indices output is not supported anyway)
        return [_pool_reduce(_pad_for_pool(x, geometry, -np.inf), geometry, np.maximum)]
    from ..runtime.threads import numba_threads
    from ._pool_kernels import max_pool, max_pool_3x3_s2

    (kh, sh, dh, top, _, _, out_h), (kw, sw, dw, left, _, _, out_w) = geometry
    y = np.empty(x.shape[:2] + (out_h, out_w), x.dtype)
    numba_threads()
    if _maxpool_kernel(geometry) == "max_pool_3x3_s2":
        max_pool_3x3_s2(np.ascontiguousarray(x), y, top, left)
    else:
        max_pool(np.ascontiguousarray(x), y, kh, kw, sh, sw, dh, dw, top, left)
    return [y]


def _maxpool_kernel(geometry) -> str:
    (kh, sh, dh, *_), (kw, sw, dw, *_) = geometry
    return "max_pool_3x3_s2" if (kh, kw, sh, sw, dh, dw) == (3, 3, 2, 2, 1, 1) else "max_pool"


def _maxpool_kernels(node, shapes, dtype, params):
    if len(shapes[0]) != 4 or len(node.outputs) > 1:
        return []
    from ._pool_kernels import precompile_kernels

    return precompile_kernels(_maxpool_kernel(_pool_geometry(node, shapes[0])), dtype)


KERNELS["MaxPool"] = _maxpool_kernels


@op("AveragePool", _pool_infer)
def _avgpool(node, arrays):
    x = arrays[0]
    geometry = _pool_geometry(node, x.shape)
    total = _pool_reduce(_pad_for_pool(x, geometry, 0), geometry, np.add)
    # Divisor: elements of each window inside the input, or inside input + explicit pads with
    # count_include_pad; never the ceil-mode extension (PyTorch and ONNX agree on this).
    (_, _, _, top, bottom, pad_bottom, _), (_, _, _, left, right, pad_right, _) = geometry
    ones = np.ones((1, 1) + x.shape[2:], x.dtype)
    if node.attrs.get("count_include_pad", 0):
        ones = np.pad(ones, ((0, 0), (0, 0), (top, pad_bottom), (left, pad_right)), constant_values=1)
        ones = np.pad(ones, ((0, 0), (0, 0), (0, bottom - pad_bottom), (0, right - pad_right)))
    else:
        ones = np.pad(ones, ((0, 0), (0, 0), (top, bottom), (left, right)))
    count = _pool_reduce(ones, geometry, np.add)
    return [(total / count).astype(x.dtype, copy=False)]


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
    return [np.matmul(arrays[0], arrays[1])]


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


def _flatten_infer(node, shapes):
    shape = shapes[0]
    axis = node.attrs.get("axis", 1) % (len(shape) + 1) if shape else 0
    return [(math.prod(shape[:axis]), math.prod(shape[axis:]))]


@op("Flatten", _flatten_infer)
def _flatten(node, arrays):
    x = arrays[0]
    axis = node.attrs.get("axis", 1) % (x.ndim + 1)
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


# -- in-place variants -----------------------------------------------------------------------------
#: Elementwise operators that can overwrite their first input when nothing reads it afterwards
#: (the executor decides when): one memory pass and no allocation instead of a fresh array.
INPLACE = {
    "Relu": lambda node, arrays: [np.maximum(arrays[0], 0, out=arrays[0])],
    "Clip": lambda node, arrays: [np.clip(arrays[0], arrays[0].dtype.type(node.attrs.get("min", -np.inf)),
                                          arrays[0].dtype.type(node.attrs.get("max", np.inf)), out=arrays[0])],
    "Add": lambda node, arrays: [np.add(arrays[0], arrays[1], out=arrays[0])],
    "Mul": lambda node, arrays: [np.multiply(arrays[0], arrays[1], out=arrays[0])],
}
