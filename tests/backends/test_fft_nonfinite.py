"""NaN and Inf through the lossy ``fft`` backend: the pattern torch gives, not a whole NaN image (issue 16, point 9).

Torch is the oracle here (the issue that built the engine asked for its behaviour); the
conformance kit checks the same against the float64 reference for every backend.
"""

from __future__ import annotations

import numpy as np
import pytest

from convengine.backends.fft import FFTBackend
from convengine.core.arrays import all_finite
from convengine.core.problem import ConvProblem
from convengine.testing.reference import conv2d_reference

torch = pytest.importorskip("torch")


def _torch_conv(x, w, b, padding, stride=1):
    with torch.no_grad():
        return torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), None if b is None else torch.from_numpy(b),
                                          stride=stride, padding=padding).numpy()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("where", ["input", "weight"])
def test_fft_gives_a_direct_convolutions_nan_and_inf_pattern(dtype, where):
    """Against torch for non-finite inputs. For non-finite weights against the float64 reference: the
    padding's zeros times Inf are NaN there (and in torch's float64 path), while torch's float32 path
    skips padded taps, so torch itself has two answers at the border."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 12, 12)).astype(dtype)
    w = rng.standard_normal((4, 8, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    target = x if where == "input" else w
    target[0, 1, 2, 2] = np.nan
    target[0, 3, 1, 0] = np.inf
    target[-1, 5, 2, 1] = -np.inf
    problem = ConvProblem.from_shapes(x.shape, w.shape, bias=True, padding=1, dtype=dtype)
    with np.errstate(invalid="ignore"):
        y = FFTBackend().prepare(problem, w, b)(x)
    if where == "input":
        expected = _torch_conv(x, w, b, padding=1)
    else:
        with np.errstate(invalid="ignore"):
            expected = conv2d_reference(x, w, b, padding=(1, 1, 1, 1))
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(y), test(expected), err_msg=test.__name__)
    finite = np.isfinite(expected)
    assert not finite.all()
    np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-4, atol=1e-4)
    if where == "input":  # the second image holds only a -Inf: far from all of its outputs are non-finite
        assert np.isfinite(y[1]).mean() > 0.5


def test_finite_inputs_keep_the_transform_path():
    """The exact path is for non-finite inputs only: a finite input still gets FFT's (lossy) result."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 4, 16, 16))
    w = rng.standard_normal((2, 4, 5, 5))
    problem = ConvProblem.from_shapes(x.shape, w.shape, dtype="float64")
    execute = FFTBackend().prepare(problem, w, None)
    y = execute(x)
    exact = _torch_conv(x, w, None, padding=0)
    assert 0 < np.max(np.abs(y - exact)) < 1e-11  # round-off of a transform: not bit-identical to the direct sum
    x[0, 0, 0, 0] = np.nan
    y_nan = execute(x)
    assert np.isnan(y_nan[:, :, 0, 0]).all() and np.isfinite(y_nan[:, :, 1:, 1:]).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_all_finite(dtype):
    x = np.ones((2, 3, 4, 4), dtype)
    assert all_finite(x) and all_finite(x[:0])
    huge = np.full((4, 4), np.finfo(dtype).max / 2, dtype)  # finite, but its squares overflow
    assert all_finite(huge)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[1, 2, 3, 0] = bad
        assert not all_finite(y)
