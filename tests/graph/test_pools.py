"""MaxPool and AveragePool on every kernel path, against PyTorch's pools and a float64 window-by-window definition.

The paths (:func:`convengine.graph.ops._maxpool_kernel`): 3x3 stride 2 (the stems of ResNet,
GoogLeNet, Inception, SqueezeNet, AlexNet), stride 1 (same-size 3x3 windows walked flat in
blocks of planes, other windows plane by plane), 2x2 stride 2 inside the input, a 1x1
identity, and the general kernel; each on one thread and split over threads (the ``split``
fixture moves ``MIN_PARALLEL_POOL``), with batch > 1, odd sizes, ceil mode, asymmetric pads, NaN.
PyTorch covers the symmetric pads it accepts; the float64 definition, the rest. Last, the kernel
that pools channel-blocked (NCHW16c) tensors between blocked convolutions, over drawn geometries.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convengine.core.layouts import NCHW16C, to_layout, to_nchw
from convengine.graph import ops
from convengine.graph.ir import Node
from convengine.graph.ops import OPS, _maxpool_kernel, _pool_geometry


def _torch():
    return pytest.importorskip("torch")


def _node(op, kernel, stride, pads, ceil_mode=0, include_pad=0):
    attrs = dict(kernel_shape=list(kernel), strides=list(stride), pads=list(pads), ceil_mode=ceil_mode)
    if op == "AveragePool":
        attrs["count_include_pad"] = include_pad
    return Node("pool", op, ["x"], ["y"], attrs)


def _out_size(size, k, s, begin, end, ceil_mode):
    """ONNX's output size, PyTorch's rule for ceil mode: a last window starting in the end padding is dropped."""
    room = size + begin + end - k
    out = (math.ceil(room / s) if ceil_mode else room // s) + 1
    if ceil_mode and (out - 1) * s >= size + begin:
        out -= 1
    return out


def _definition(x, op, kernel, stride, pads, ceil_mode, include_pad):
    """The pool in float64, one window at a time: max over the taps inside ``x`` (-inf if none), or
    their sum over the taps inside ``x`` (and inside the explicit pads with ``include_pad``)."""
    (kh, kw), (sh, sw), (top, left, bottom, right) = kernel, stride, pads
    n, c, h, w = x.shape
    out_h = _out_size(h, kh, sh, top, bottom, ceil_mode)
    out_w = _out_size(w, kw, sw, left, right, ceil_mode)
    x64 = x.astype(np.float64)
    out = np.empty((n, c, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            r0, c0 = i * sh - top, j * sw - left
            rows = slice(max(r0, 0), min(r0 + kh, h))
            cols = slice(max(c0, 0), min(c0 + kw, w))
            window = x64[:, :, rows, cols].reshape(n, c, -1)
            if op == "MaxPool":
                # np.max propagates NaN; an empty window is all padding
                out[:, :, i, j] = window.max(axis=2) if window.shape[2] else -np.inf
                continue
            if include_pad:
                count = ((min(r0 + kh, h + bottom) - max(r0, -top)) * (min(c0 + kw, w + right) - max(c0, -left)))
            else:
                count = window.shape[2]
            out[:, :, i, j] = window.sum(axis=2) / count
    return out


def _check(got, want, op):
    assert got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    if op == "MaxPool":  # a max is exact
        np.testing.assert_array_equal(got, want.astype(got.dtype))
    else:
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


def _input(shape, seed, dtype=np.float32):
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    x.flat[::53] = np.nan
    return x


BIG = (2, 40, 36, 37)  # more planes than threads, more than one flat block of planes


@pytest.fixture(params=["one run", "a run per thread"])
def split(request, monkeypatch):
    """Each kernel test twice: every input on one thread, and every input split over the threads."""
    monkeypatch.setattr(ops, "MIN_PARALLEL_POOL", 0 if request.param == "a run per thread" else 2**62)
    return request.param

THREE_BY_TWO = [  # (shape, pads [top, left, bottom, right], ceil_mode): the 3x3 stride-2 kernel
    ((1, 64, 112, 112), (1, 1, 1, 1), 0),  # ResNet's stem
    ((1, 8, 111, 111), (0, 0, 0, 0), 1),  # SqueezeNet's
    ((1, 8, 112, 112), (0, 0, 0, 0), 1),  # GoogLeNet's: a ceil-mode window of two columns
    ((2, 3, 55, 55), (0, 0, 0, 0), 0),  # AlexNet's
    ((2, 5, 8, 9), (1, 1, 1, 1), 1),
    ((1, 2, 3, 3), (1, 1, 1, 1), 1),
    ((1, 2, 2, 2), (1, 1, 1, 1), 0),
    (BIG, (1, 1, 1, 1), 1),
]


@pytest.mark.parametrize("shape, pads, ceil_mode", THREE_BY_TWO)
def test_the_3x3_stride_2_max_pool_matches_torch(shape, pads, ceil_mode, split):
    t = _torch()
    x = _input(shape, sum(shape))
    node = _node("MaxPool", (3, 3), (2, 2), pads, ceil_mode)
    assert _maxpool_kernel(_pool_geometry(node, shape)) == "max_pool_3x3_s2"
    want = t.nn.functional.max_pool2d(t.from_numpy(x), 3, 2, padding=pads[0], ceil_mode=bool(ceil_mode)).numpy()
    _check(OPS["MaxPool"].run(node, [x])[0], want.astype(np.float64), "MaxPool")


@pytest.mark.parametrize("shape, pads, ceil_mode", [((1, 3, 9, 10), (0, 1, 1, 0), 0), ((2, 2, 7, 6), (1, 0, 0, 2), 1),
                                                    ((1, 2, 5, 5), (2, 2, 0, 0), 0), (BIG, (0, 1, 1, 2), 1)])
def test_the_3x3_stride_2_max_pool_with_asymmetric_pads_matches_the_definition(shape, pads, ceil_mode, split):
    x = _input(shape, sum(shape) + 1, np.float64)
    node = _node("MaxPool", (3, 3), (2, 2), pads, ceil_mode)
    want = _definition(x, "MaxPool", (3, 3), (2, 2), pads, ceil_mode, 0)
    _check(OPS["MaxPool"].run(node, [x])[0], want, "MaxPool")


STRIDE_1 = [  # (shape, kernel, pads): same-size 3x3 windows walk blocks of planes flat, others plane by plane
    ((1, 256, 28, 28), (3, 3), (1, 1, 1, 1)),  # GoogLeNet's branch pool: more planes than one block
    ((2, 70, 17, 17), (3, 3), (1, 1, 1, 1)),  # Inception's: a last block shorter than the others
    ((1, 9, 7, 7), (3, 3), (1, 1, 1, 1)),
    ((2, 3, 2, 5), (3, 3), (1, 1, 1, 1)),  # two rows: each row is a plane's first and last
    ((1, 3, 5, 2), (3, 3), (1, 1, 1, 1)),
    ((1, 4, 1, 6), (3, 3), (1, 1, 1, 1)),  # one row: the plane-by-plane path
    ((1, 2, 6, 7), (4, 3), (3, 2, 0, 0)),
    ((2, 2, 9, 3), (3, 1), (1, 0, 0, 0)),
]


@pytest.mark.parametrize("shape, kernel, pads", STRIDE_1)
@pytest.mark.parametrize("op, include_pad", [("MaxPool", 0), ("AveragePool", 0), ("AveragePool", 1)])
def test_stride_1_pools_match_the_definition(shape, kernel, pads, op, include_pad, split):
    """NaN spreads to every window that holds it; the divisor counts padding only with count_include_pad."""
    x = _input(shape, sum(shape) + len(kernel))
    node = _node(op, kernel, (1, 1), pads, 0, include_pad)
    assert _maxpool_kernel(_pool_geometry(node, shape)) == "pool_s1"
    want = _definition(x, op, kernel, (1, 1), pads, 0, include_pad)
    got = OPS[op].run(node, [x])[0]
    assert got.dtype == np.float32
    _check(got, want, op)


@pytest.mark.parametrize("shape", [(1, 288, 35, 35), (2, 13, 8, 8)])
@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inceptions_average_pool_matches_torch(shape, include_pad, dtype, split):
    """3x3, stride 1, padding 1: one divisor for all windows with count_include_pad, a border of smaller ones without."""
    t = _torch()
    x = _input(shape, 7, dtype)
    node = _node("AveragePool", (3, 3), (1, 1), (1, 1, 1, 1), 0, include_pad)
    want = t.nn.functional.avg_pool2d(t.from_numpy(x.astype(np.float64)), 3, 1, padding=1,
                                      count_include_pad=bool(include_pad)).numpy()
    got = OPS["AveragePool"].run(node, [x])[0]
    assert got.dtype == dtype
    _check(got, want, "AveragePool")


@pytest.mark.parametrize("shape", [(1, 64, 224, 224), (2, 5, 7, 9), (1, 3, 14, 14), BIG])
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_the_2x2_stride_2_pool_matches_torch(shape, op, split):
    t = _torch()
    x = _input(shape, 3)
    node = _node(op, (2, 2), (2, 2), (0, 0, 0, 0))
    assert _maxpool_kernel(_pool_geometry(node, shape)) == "pool_2x2_s2"
    pool = t.nn.functional.max_pool2d if op == "MaxPool" else t.nn.functional.avg_pool2d
    want = pool(t.from_numpy(x.astype(np.float64)), 2, 2).numpy()
    _check(OPS[op].run(node, [x])[0], want, op)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_a_1x1_pool_is_a_copy_of_its_input(op):
    """AlexNet's and VGG's adaptive average pools to the size they already have: the output is the input, in new memory."""
    x = _input((2, 6, 6, 5), 11)
    got = OPS[op].run(_node(op, (1, 1), (1, 1), (0, 0, 0, 0)), [x])[0]
    assert got is not x and not np.shares_memory(got, x)
    np.testing.assert_array_equal(got, x)


OTHER_AVERAGE = [((3, 3), (2, 2), (1, 1, 1, 1), 1), ((2, 2), (2, 2), (0, 0, 0, 0), 1),
                 ((3, 3), (3, 3), (1, 1, 1, 1), 0), ((3, 2), (2, 3), (1, 0, 1, 0), 1)]


@pytest.mark.parametrize("kernel, stride, pads, ceil_mode", OTHER_AVERAGE)
@pytest.mark.parametrize("include_pad", [0, 1])
def test_other_average_pools_match_torch(kernel, stride, pads, ceil_mode, include_pad):
    """The numpy path: the divisor never counts the ceil-mode extension, with or without count_include_pad."""
    t = _torch()
    x = _input((2, 3, 7, 8), 5)
    node = _node("AveragePool", kernel, stride, pads, ceil_mode, include_pad)
    want = t.nn.functional.avg_pool2d(t.from_numpy(x.astype(np.float64)), kernel, stride, padding=(pads[0], pads[1]),
                                      ceil_mode=bool(ceil_mode), count_include_pad=bool(include_pad)).numpy()
    _check(OPS["AveragePool"].run(node, [x])[0], want, "AveragePool")


@pytest.mark.parametrize("kernel, stride, pads, ceil_mode", [((3, 3), (3, 3), (1, 1, 1, 1), 1),
                                                             ((2, 3), (1, 2), (1, 1, 0, 1), 0)])
def test_the_general_max_pool_matches_the_definition(kernel, stride, pads, ceil_mode):
    x = _input((2, 3, 10, 11), 9)
    node = _node("MaxPool", kernel, stride, pads, ceil_mode)
    assert _maxpool_kernel(_pool_geometry(node, x.shape)) == "max_pool"
    _check(OPS["MaxPool"].run(node, [x])[0], _definition(x, "MaxPool", kernel, stride, pads, ceil_mode, 0), "MaxPool")


def test_pools_do_not_change_their_input(split):
    x = _input(BIG, 2)
    before = x.copy()
    for node in (_node("MaxPool", (3, 3), (2, 2), (1, 1, 1, 1)), _node("AveragePool", (3, 3), (1, 1), (1, 1, 1, 1), 0, 1),
                 _node("MaxPool", (2, 2), (2, 2), (0, 0, 0, 0)), _node("MaxPool", (3, 3), (1, 1), (1, 1, 1, 1))):
        OPS[node.op].run(node, [x])
    np.testing.assert_array_equal(x, before)


# -- the same pools on channel-blocked (NCHW16c) activations -------------------------------------------


@st.composite
def _blocked_cases(draw):
    """A pool and an input for it: any window up to 4x4, stride up to 3, pads below the window, ceil mode, both ops."""
    op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = tuple(draw(st.integers(0, kernel[i % 2] - 1)) for i in range(4))  # (top, left, bottom, right)
    size = [draw(st.integers(max(1, kernel[i] - pads[i] - pads[i + 2]), 13)) for i in range(2)]
    shape = (draw(st.integers(1, 2)), 16 * draw(st.integers(1, 3)), *size)
    return op, kernel, stride, pads, draw(st.integers(0, 1)), draw(st.integers(0, 1)), shape, draw(st.booleans())


@settings(max_examples=80, deadline=None)
@given(_blocked_cases())
def test_blocked_pools_match_the_definition(case):
    """The executor's pool between two blocked convolutions (``ops.blocked_pool_step``): every window, stride,
    padding and ceil mode against the float64 definition, NaN included, on one thread and split over threads."""
    op, kernel, stride, pads, ceil_mode, include_pad, shape, split_threads = case
    x = _input(shape, sum(shape) + sum(kernel))
    before = x.copy()
    node = _node(op, kernel, stride, pads, ceil_mode, include_pad)
    run = ops.blocked_pool_step(node, shape, "float32")
    limit = ops.MIN_PARALLEL_POOL
    ops.MIN_PARALLEL_POOL = 0 if split_threads else 2**62
    try:
        got = run(to_layout(x, NCHW16C), False)
    finally:
        ops.MIN_PARALLEL_POOL = limit
    assert got.dtype == np.float32 and got.shape[:2] == (shape[0], shape[1] // 16) and got.shape[4] == 16
    _check(to_nchw(got, NCHW16C, shape[1]), _definition(x, op, kernel, stride, pads, ceil_mode, include_pad), op)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("op, kernel, stride, pads", [("MaxPool", (3, 3), (2, 2), (0, 0, 0, 0)),
                                                      ("AveragePool", (3, 3), (1, 1), (1, 1, 1, 1)),
                                                      ("AveragePool", (2, 3), (2, 3), (1, 2, 0, 1))])
def test_blocked_pools_in_float64(op, kernel, stride, pads):
    """The blocked pool's pixel vectors (``_blocked_rows.pixel_taps``) in float64 too: float64 graphs may run it."""
    x = _input((1, 32, 11, 10), 7, np.float64)
    node = _node(op, kernel, stride, pads, 0, 1)
    got = ops.blocked_pool_step(node, x.shape, "float64")(to_layout(x, NCHW16C), False)
    assert got.dtype == np.float64
    want = _definition(x, op, kernel, stride, pads, 0, 1)
    assert np.array_equal(np.isnan(to_nchw(got, NCHW16C, 32)), np.isnan(want))
    np.testing.assert_allclose(to_nchw(got, NCHW16C, 32), want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dilations, stride", [((2, 2), (1, 1)), ((2, 3), (2, 1)), ((3, 1), (2, 2))])
def test_blocked_dilated_max_pools_match_the_nchw_ones(dilations, stride):
    x = _input((2, 32, 13, 12), 4)
    node = Node("pool", "MaxPool", ["x"], ["y"], dict(kernel_shape=[3, 2], strides=list(stride), pads=[2, 1, 1, 2],
                                                       dilations=list(dilations)))
    got = ops.blocked_pool_step(node, x.shape, "float32")(to_layout(x, NCHW16C), False)
    _check(to_nchw(got, NCHW16C, 32), OPS["MaxPool"].run(node, [x])[0].astype(np.float64), "MaxPool")


def test_which_pools_run_blocked():
    shape = (1, 32, 9, 9)
    assert ops.pools_blocked(_node("MaxPool", (3, 3), (2, 2), (1, 1, 1, 1)), shape, "float32")
    assert ops.pools_blocked(_node("AveragePool", (3, 3), (1, 1), (1, 1, 1, 1)), shape, "float32")
    with_indices = Node("pool", "MaxPool", ["x"], ["y", "i"], dict(kernel_shape=[2, 2]))
    assert not ops.pools_blocked(with_indices, shape, "float32")  # (MaxPool's Indices: NCHW positions)
    assert not ops.pools_blocked(Node("pool", "GlobalAveragePool", ["x"], ["y"], {}), shape, "float32")
    assert not ops.pools_blocked(_node("MaxPool", (3,), (2,), (1, 1)), (1, 32, 9), "float32")  # 1-D


@pytest.mark.parametrize("shape", [(1, 32, 7, 7), (2, 48, 13, 13), (3, 16, 1, 1), (1, 16, 5, 3)])
def test_the_blocked_global_average_pool_matches_the_nchw_one(shape):
    """A blocked tensor's global average pool, written as the NCHW (N, C, 1, 1) result; NaN kept where it was."""
    x = _input(shape, sum(shape))
    before = x.copy()
    got = ops.blocked_global_avgpool(to_layout(x, NCHW16C))
    want = x.astype(np.float64).mean(axis=(2, 3), keepdims=True)
    assert got.shape == shape[:2] + (1, 1) and got.dtype == np.float32
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    np.testing.assert_array_equal(x, before)
