"""Worked examples with known answers, and the shape/dtype contract, for every available backend.

The course's expected values are hard-coded (copied from the course, not computed by any
code here), so they check the float64 reference as well as the backends.
"""

import numpy as np
import pytest
from conftest import is_lossy, skip_if_unsupported, tolerance

import convengine as ce
from convengine.testing.reference import conv2d_reference, relative_error

pytestmark = pytest.mark.usefixtures("no_forced_backend")

DTYPES = ["float32", "float64"]

X = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
K = [[0, 1], [2, 3]]

# (id, conv2d keyword arguments, the same as the reference's (stride, padding4), expected)
COURSE = [
    ("valid", {}, ((1, 1), (0, 0, 0, 0)), [[19, 25], [37, 43]]),
    ("padding1", {"padding": 1}, ((1, 1), (1, 1, 1, 1)),
     [[0, 3, 8, 4], [9, 19, 25, 10], [21, 37, 43, 16], [6, 7, 8, 0]]),
    ("padding1-stride3x2", {"padding": 1, "stride": (3, 2)}, ((3, 2), (1, 1, 1, 1)), [[0, 8], [6, 8]]),
]
COURSE_IDS = [case[0] for case in COURSE]


def _course_arrays(dtype):
    return (np.array(X, dtype=dtype).reshape(1, 1, 3, 3), np.array(K, dtype=dtype).reshape(1, 1, 2, 2))


def _random(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _torch_same_padding(kernel, dilation):
    """PyTorch's padding='same': total d*(k-1) per axis, the odd extra one at the bottom/right."""
    pads = []
    for k, d in zip(kernel, dilation):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return tuple(pads)  # (top, bottom, left, right)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", COURSE, ids=COURSE_IDS)
def test_course_examples(backend_name, case, dtype):
    _, params, _, expected = case
    x, k = _course_arrays(dtype)
    skip_if_unsupported(backend_name, x, k, **params)
    y = ce.conv2d(x, k, backend=backend_name, **params)
    assert y.dtype == np.dtype(dtype)
    expected = np.array(expected, dtype=dtype).reshape(1, 1, *np.shape(expected))
    assert y.shape == expected.shape
    if is_lossy(backend_name):
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-9 if dtype == "float64" else 1e-4)
    else:
        np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("case", COURSE, ids=COURSE_IDS)
def test_course_examples_reference(case):
    _, _, (stride, padding), expected = case
    x, k = _course_arrays("float64")
    y = conv2d_reference(x, k, None, stride, padding, (1, 1), 1)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y[0, 0], np.array(expected, dtype=np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_course_example_unbatched_with_bias(backend_name, dtype):
    x, k = _course_arrays(dtype)
    skip_if_unsupported(backend_name, x, k)
    y = ce.conv2d(x[0], k, np.array([10], dtype), backend=backend_name)
    assert y.shape == (1, 2, 2) and y.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y[0], np.array([[29, 35], [47, 53]], dtype), rtol=0,
                               atol=1e-4 if is_lossy(backend_name) else 0)


# -- padding forms --------------------------------------------------------------------------

SAME_KERNELS = [((3, 3), (1, 1)), ((2, 2), (1, 1)), ((4, 3), (1, 1)), ((2, 5), (1, 1)), ((2, 3), (2, 1)),
                ((1, 4), (1, 3))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, dilation", SAME_KERNELS,
                         ids=[f"k{k[0]}x{k[1]}-d{d[0]}x{d[1]}" for k, d in SAME_KERNELS])
def test_padding_same(backend_name, kernel, dilation, dtype):
    x = _random((1, 2, 6, 5), dtype, 1)
    w = _random((2, 2, *kernel), dtype, 2)
    skip_if_unsupported(backend_name, x, w, padding="same", dilation=dilation)
    y = ce.conv2d(x, w, padding="same", dilation=dilation, backend=backend_name)
    assert y.shape == (1, 2, 6, 5) and y.dtype == np.dtype(dtype)
    pads = _torch_same_padding(kernel, dilation)
    expected = conv2d_reference(x, w, None, (1, 1), pads, dilation, 1)
    assert relative_error(y, expected) <= tolerance(backend_name, dtype)
    if pads[0] != pads[1] or pads[2] != pads[3]:  # the extra row/column really is bottom/right
        wrong = conv2d_reference(x, w, None, (1, 1), (pads[1], pads[0], pads[3], pads[2]), dilation, 1)
        assert relative_error(y, wrong) > 1e-3


def test_torch_same_rule_is_asymmetric_for_even_kernels():
    assert _torch_same_padding((2, 4), (1, 1)) == (0, 1, 1, 2)
    assert _torch_same_padding((3, 2), (2, 3)) == (2, 2, 1, 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_padding_valid(backend_name, dtype):
    x = _random((2, 3, 5, 6), dtype, 3)
    w = _random((4, 3, 3, 3), dtype, 4)
    skip_if_unsupported(backend_name, x, w)
    y = ce.conv2d(x, w, padding="valid", backend=backend_name)
    assert y.shape == (2, 4, 3, 4) and y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, ce.conv2d(x, w, padding=0, backend=backend_name))
    expected = conv2d_reference(x, w, None, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    assert relative_error(y, expected) <= tolerance(backend_name, dtype)


@pytest.mark.parametrize("padding, pads", [((1, 2), (1, 1, 2, 2)), ((0, 2, 1, 0), (0, 2, 1, 0)), (3, (3, 3, 3, 3))],
                         ids=["pair", "4-tuple", "int"])
def test_padding_forms(backend_name, padding, pads):
    x = _random((1, 1, 4, 3), "float64", 5)
    w = _random((2, 1, 3, 3), "float64", 6)
    skip_if_unsupported(backend_name, x, w, padding=padding)
    y = ce.conv2d(x, w, padding=padding, backend=backend_name)
    expected = conv2d_reference(x, w, None, (1, 1), pads, (1, 1), 1)
    assert y.shape == expected.shape
    assert relative_error(y, expected) <= tolerance(backend_name, "float64")


# -- shapes and dtypes ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_input_gives_unbatched_output(backend_name, dtype):
    x = _random((2, 5, 4), dtype, 7)
    w = _random((3, 2, 3, 3), dtype, 8)
    b = _random((3,), dtype, 9)
    skip_if_unsupported(backend_name, x, w, b, padding=(1, 0))
    y = ce.conv2d(x, w, b, padding=(1, 0), backend=backend_name)
    assert y.shape == (3, 5, 2) and y.dtype == np.dtype(dtype)
    batched = ce.conv2d(x[None], w, b, padding=(1, 0), backend=backend_name)
    np.testing.assert_array_equal(y, batched[0])
    expected = conv2d_reference(x[None], w, b, (1, 1), (1, 1, 0, 0), (1, 1), 1)[0]
    assert relative_error(y, expected) <= tolerance(backend_name, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_dtype_is_input_dtype(backend_name, dtype):
    x = _random((1, 2, 4, 4), dtype, 10)
    w = _random((2, 1, 3, 3), dtype, 11)
    b = _random((2,), dtype, 12)
    skip_if_unsupported(backend_name, x, w, b, groups=2, padding=1)
    y = ce.conv2d(x, w, b, groups=2, padding=1, backend=backend_name)
    assert isinstance(y, np.ndarray)
    assert y.dtype == np.dtype(dtype)
    assert y.shape == (1, 2, 4, 4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("params, out_hw", [({}, (3, 2)), ({"padding": 1, "stride": 2, "dilation": (1, 2)}, (3, 1))],
                         ids=["plain", "pad-stride-dilation"])
def test_empty_batch(backend_name, params, out_hw, dtype):
    x = np.empty((0, 4, 5, 4), dtype)
    w = _random((6, 2, 3, 3), dtype, 13)
    b = _random((6,), dtype, 14)
    skip_if_unsupported(backend_name, x, w, b, groups=2, **params)
    y = ce.conv2d(x, w, b, groups=2, backend=backend_name, **params)
    assert y.shape == (0, 6, *out_hw)
    assert y.dtype == np.dtype(dtype)


def test_default_backend_course_example():
    """No backend named: whatever the engine chooses honours the examples (to lossy tolerance)."""
    x, k = _course_arrays("float64")
    np.testing.assert_allclose(ce.conv2d(x, k, padding=1, stride=(3, 2))[0, 0], [[0, 8], [6, 8]], rtol=0, atol=1e-9)
