"""The fft backend's own rules (its numerics are checked by the conformance kit, tests/core)."""

import numpy as np
import pytest

import convengine as ce
from convengine.backends.fft import FFTBackend


def test_fft_declines_1x1_kernels_and_says_why(isolated_env):
    """The one place the "no FFT on 1x1" rule lives: benchmarks, the asv suite and dispatch all read it here."""
    pointwise = ce.ConvProblem.from_shapes((1, 8, 6, 6), (4, 8, 1, 1))
    assert "1x1 kernel" in FFTBackend().supports(pointwise)
    assert FFTBackend().supports(ce.ConvProblem.from_shapes((1, 8, 6, 6), (4, 8, 3, 3))) is None
    assert FFTBackend().supports(ce.ConvProblem.from_shapes((1, 8, 6, 6), (4, 8, 1, 3))) is None  # 1xN is not a GEMM
    x = np.ones((1, 8, 6, 6), np.float32)
    w = np.ones((4, 8, 1, 1), np.float32)
    with pytest.raises(ce.BackendDeclinedError, match="1x1 kernel"):
        ce.conv2d(x, w, backend="fft")
    row = ce.explain(x, w).row("fft")
    assert row.status == "excluded" and "1x1 kernel" in row.reason
