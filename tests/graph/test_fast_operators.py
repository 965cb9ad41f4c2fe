"""The compiled operator kernels: float32 ``erf`` and GELU, batch normalisation, stride-1 max pooling.

Each is checked against an independent definition: ``erf`` against the float64 ``erf`` of
scipy and ``math`` (on a dense grid, at the approximation's seams, far out, at NaN and the
infinities), GELU and batch normalisation against their float64 formulas, the pool against
numpy's padded reduction. Shapes are odd, batches above one, and arrays both below and above
the size where the kernels go parallel.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import erf as erf64

from convengine.graph import _pointwise_kernels as kernels
from convengine.graph.ir import Node
from convengine.graph.ops import INPLACE, OPS, _maxpool_kernel, _pad_for_pool, _pool_geometry, _pool_reduce

SMALL, LARGE = 1000, kernels.PARALLEL_MIN + 12345  # one thread, and several parallel jobs with a ragged last one


def _erf(x):
    return OPS["Erf"].run(Node("erf", "Erf", ["x"], ["y"]), [x])[0]


def test_erf_is_within_2e_7_of_the_float64_erf_on_a_dense_grid():
    x = np.concatenate([np.linspace(-8, 8, 2_000_001, dtype=np.float32),
                        np.float32(0.921875) + np.arange(-50, 50, dtype=np.float32) * np.float32(6e-8),  # the seams
                        np.float32(3.925) + np.arange(-50, 50, dtype=np.float32) * np.float32(2.4e-7)])
    got = _erf(x)
    assert got.dtype == np.float32
    error = np.abs(got.astype(np.float64) - erf64(x.astype(np.float64)))
    assert error.max() < 2e-7
    spot = x[::40_009]
    assert np.allclose(got[::40_009], [math.erf(float(v)) for v in spot], rtol=0, atol=2e-7)
    np.testing.assert_array_equal(got, -_erf(-x))  # odd, exactly
    assert np.all(np.abs(got) <= 1)


def test_erf_at_the_extremes_nan_and_infinities():
    x = np.array([0.0, -0.0, 1e-38, -1e-38, 1e-45, 3.9, 4.0, 10.0, -10.0, 1e30, -3e38, np.inf, -np.inf, np.nan], np.float32)
    got = _erf(x)
    want = erf64(x.astype(np.float64))
    assert np.isnan(got[-1])
    assert np.allclose(got[:-1], want[:-1], rtol=0, atol=2e-7)
    np.testing.assert_array_equal(got[7:-1], [1, -1, 1, -1, 1, -1])  # exactly +-1 where the float32 erf is
    assert got[6] == erf64(4.0).astype(np.float32)  # (1.0: the float32 value)
    assert np.signbit(got[1]) and got[1] == 0


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_erf_in_place_and_on_a_strided_view(size):
    rng = np.random.default_rng(size)
    x = (rng.standard_normal(size) * 3).astype(np.float32)
    x[::97] = np.nan
    want = erf64(x.astype(np.float64))
    buffer = x.copy()
    out = INPLACE["Erf"](Node("erf", "Erf", ["x"], ["y"]), [buffer])[0]
    assert out is buffer  # written where the input was
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-7)
    wide = np.stack([x, -x], axis=1)  # (size, 2): column 0 is a strided view
    np.testing.assert_allclose(_erf(wide[:, 0]), want, rtol=0, atol=2e-7)
    assert np.array_equal(wide[:, 0], x, equal_nan=True)  # the input is left alone


def test_float64_erf_keeps_the_float64_result():
    x = np.linspace(-5, 5, 1001)
    np.testing.assert_allclose(_erf(x), erf64(x), rtol=1e-15, atol=0)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 64, 41, 29)])
def test_gelu_matches_its_float64_definition(shape):
    x = (np.random.default_rng(3).standard_normal(shape) * 4).astype(np.float32)
    x.flat[::101] = np.nan
    x.flat[1] = np.inf
    x.flat[2] = -np.inf
    got = OPS["Gelu"].run(Node("gelu", "Gelu", ["x"], ["y"]), [x])[0]
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        want = 0.5 * x64 * (1 + erf64(x64 / math.sqrt(2)))
    assert got.dtype == np.float32 and got.shape == shape
    assert np.isnan(got.flat[::101]).all() and got.flat[1] == np.inf and np.isnan(got.flat[2])  # -inf * 0, as the definition
    finite = np.isfinite(want)
    assert np.all(np.abs(got[finite] - want[finite]) <= 4e-7 * np.maximum(1, np.abs(x64[finite])))


def _bn(x, node, params, out=None):
    return (INPLACE["BatchNormalization"] if out is not None else OPS["BatchNormalization"].run)(node, [x, *params])[0]


@pytest.mark.parametrize("shape", [(2, 5, 3, 7), (1, 96, 31, 33), (3, 4), (2, 6, 11)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_normalisation_matches_its_float64_formula(shape, dtype):
    rng = np.random.default_rng(shape[1])
    c = shape[1]
    scale, bias, mean = (rng.standard_normal(c).astype(dtype) for _ in range(3))
    var = rng.uniform(0.1, 2, c).astype(dtype)
    x = rng.standard_normal(shape).astype(dtype)
    x.flat[::53] = np.nan
    node = Node("bn", "BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], dict(epsilon=1e-3))
    view = (1, c) + (1,) * (len(shape) - 2)
    f64 = [p.astype(np.float64).reshape(view) for p in (scale, bias, mean, var)]
    want = (x.astype(np.float64) - f64[2]) / np.sqrt(f64[3] + 1e-3) * f64[0] + f64[1]
    got = _bn(x, node, [scale, bias, mean, var])
    assert got.dtype == dtype and got is not x
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    buffer = x.copy()
    assert _bn(buffer, node, [scale, bias, mean, var], out=True) is buffer
    np.testing.assert_array_equal(buffer, got)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 600, 41, 43)])  # one thread; parallel jobs (from 1M elements)
def test_batch_normalisation_then_relu_in_one_pass(shape):
    """The kernel behind the BatchNormalization + Relu step: ``max(x * factor + shift, 0)``, NaN kept."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[::31] = np.nan
    factor, shift = rng.standard_normal(shape[1]).astype(np.float32), rng.standard_normal(shape[1]).astype(np.float32)
    affine = x.astype(np.float64) * factor.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
    want = np.where(affine < 0, 0, affine)  # (NaN stays NaN)
    got = kernels.scale_shift(x, factor, shift, relu=True)
    assert np.array_equal(np.isnan(got), np.isnan(x))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert (got[~np.isnan(got)] >= 0).all()
    buffer = x.copy()
    assert kernels.scale_shift(buffer, factor, shift, relu=True, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, got)


STRIDE_1_POOLS = [  # (shape, kernel, pads [top, left, bottom, right], ceil_mode)
    ((1, 192, 28, 28), (3, 3), (1, 1, 1, 1), 1),  # GoogLeNet's branch pool
    ((2, 5, 7, 9), (3, 3), (1, 1, 1, 1), 0),
    ((2, 3, 2, 2), (3, 3), (1, 1, 1, 1), 1),
    ((1, 3, 5, 4), (2, 2), (0, 0, 0, 0), 1),
    ((1, 2, 6, 6), (5, 5), (2, 2, 2, 2), 0),
    ((1, 4, 3, 8), (1, 3), (0, 1, 0, 1), 0),
    ((1, 3, 4, 5), (3, 2), (1, 0, 1, 1), 1),
    ((2, 2, 9, 3), (3, 1), (1, 0, 0, 0), 0),
    ((1, 1, 1, 1), (3, 3), (1, 1, 1, 1), 0),
    ((1, 2, 6, 7), (4, 3), (3, 2, 0, 0), 0),  # padding on one side only
]


@pytest.mark.parametrize("shape, kernel, pads, ceil_mode", STRIDE_1_POOLS)
def test_the_stride_1_maxpool_kernel_matches_the_definition(shape, kernel, pads, ceil_mode):
    """GoogLeNet's and Inception's pools run a separable kernel; it must equal numpy's padded reduction, NaN included."""
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    x.flat[::29] = np.nan
    node = Node("pool", "MaxPool", ["x"], ["y"], dict(kernel_shape=list(kernel), strides=[1, 1], pads=list(pads),
                                                      ceil_mode=ceil_mode))
    geometry = _pool_geometry(node, x.shape)
    assert _maxpool_kernel(geometry) == "pool_s1"
    want = _pool_reduce(_pad_for_pool(x, geometry, -np.inf), geometry, np.maximum)
    np.testing.assert_array_equal(OPS["MaxPool"].run(node, [x])[0], want)


def _average_pool_definition(x, kernel, pads, include_pad):
    """Stride-1 average pooling in float64, window by window (a stride-1 window never reaches past the padding)."""
    (kh, kw), (top, left, bottom, right) = kernel, pads
    n, c, h, w = x.shape
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    inside = np.pad(np.ones((h, w)), ((top, bottom), (left, right)))
    out = np.empty((n, c, h + top + bottom - kh + 1, w + left + right - kw + 1))
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            count = kh * kw if include_pad else inside[i:i + kh, j:j + kw].sum()
            out[:, :, i, j] = padded[:, :, i:i + kh, j:j + kw].sum(axis=(2, 3)) / count
    return out


@pytest.mark.parametrize("shape, kernel, pads, ceil_mode", STRIDE_1_POOLS)
@pytest.mark.parametrize("include_pad", [0, 1])
def test_the_stride_1_average_pool_kernel_matches_the_definition(shape, kernel, pads, ceil_mode, include_pad):
    """Inception-v3's pools (3x3/1, padding 1, count_include_pad) sum on the stride-1 kernel; NaN spreads to its windows."""
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    x.flat[x.size // 2] = np.nan
    node = Node("pool", "AveragePool", ["x"], ["y"], dict(kernel_shape=list(kernel), strides=[1, 1], pads=list(pads),
                                                          ceil_mode=ceil_mode, count_include_pad=include_pad))
    got = OPS["AveragePool"].run(node, [x])[0]
    want = _average_pool_definition(x, kernel, pads, include_pad)
    assert got.dtype == np.float32
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 5, 7, 96), (1, 56, 56, 96), (3, 11), (2, 7, 7, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_normalisation_over_the_last_axis_matches_its_float64_formula(shape, dtype):
    """ConvNeXt's LayerNormalization (axis -1, channels last) runs a compiled kernel; NaN spoils its own row only."""
    rng = np.random.default_rng(shape[-1])
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    x.reshape(-1, shape[-1])[1, 0] = np.nan
    scale, bias = rng.standard_normal(shape[-1]).astype(dtype), rng.standard_normal(shape[-1]).astype(dtype)
    node = Node("ln", "LayerNormalization", ["x", "s", "b"], ["y"], dict(axis=-1, epsilon=1e-6))
    got = OPS["LayerNormalization"].run(node, [x, scale, bias])[0]
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    want = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean(axis=-1, keepdims=True) + 1e-6) * scale + bias
    assert got.dtype == dtype and got.shape == shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 if dtype == np.float32 else 1e-12)
    no_bias = OPS["LayerNormalization"].run(Node("ln", "LayerNormalization", ["x", "s"], ["y"], dict(axis=-1, epsilon=1e-6)),
                                            [x, scale])[0]
    np.testing.assert_allclose(no_bias, want - bias, rtol=0, atol=2e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("shape, ceil_mode", [((1, 128, 56, 56), 0), ((2, 3, 7, 9), 0), ((1, 5, 14, 14), 1), ((2, 2, 2, 3), 0)])
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_the_2x2_stride_2_pool_kernel_matches_the_definition(shape, ceil_mode, op):
    """DenseNet's transition average pools and GoogLeNet's last max pool (windows inside the input), NaN included."""
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    x.flat[::37] = np.nan
    node = Node("pool", op, ["x"], ["y"], dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=ceil_mode))
    geometry = _pool_geometry(node, x.shape)
    assert _maxpool_kernel(geometry) == "pool_2x2_s2"
    n, c, h, w = shape
    windows = x[:, :, :h // 2 * 2, :w // 2 * 2].astype(np.float64).reshape(n, c, h // 2, 2, w // 2, 2)
    with np.errstate(invalid="ignore"):
        want = windows.max(axis=(3, 5)) if op == "MaxPool" else windows.mean(axis=(3, 5))
    got = OPS[op].run(node, [x])[0]
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_2x2_stride_2_pool_reaching_past_the_input_is_not_the_2x2_kernel():
    node = Node("pool", "MaxPool", ["x"], ["y"], dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=1))
    assert _maxpool_kernel(_pool_geometry(node, (1, 2, 7, 7))) != "pool_2x2_s2"  # ceil mode: a last window of one row
    padded = Node("pool", "MaxPool", ["x"], ["y"], dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1]))
    assert _maxpool_kernel(_pool_geometry(padded, (1, 2, 6, 6))) != "pool_2x2_s2"
