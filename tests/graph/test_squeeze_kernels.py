"""Squeeze-and-excitation's compiled kernels against float64 numpy references.

``excite`` (the two dense layers and their activations on the channel means) for every
activation the epilogue knows, without and with biases, at batch 1 and 3; ``channel_scale``
serial and parallel, in place and into a new array, on a contiguous tensor and on a channel
slice of a larger one. The whole block against ONNX Runtime is ``test_fusion.py``'s.
"""

from __future__ import annotations

import numpy as np
import pytest

from convengine.core.epilogue import Epilogue
from convengine.graph._squeeze_kernels import channel_scale, channel_scale_of_blocks, excite


def _activation(y: np.ndarray, spec) -> np.ndarray:
    """The activation in float64, from its definition."""
    name, params = (spec, ()) if isinstance(spec, str) else (spec[0], spec[1:])
    sigmoid = 1 / (1 + np.exp(-y))
    hard = np.clip(y * (params[0] if params else 1 / 6) + (params[1] if params else 0.5), 0, 1)
    return {"relu": np.maximum(y, 0), "clip": np.clip(y, *params) if params else y, "sigmoid": sigmoid,
            "silu": y * sigmoid, "hardsigmoid": hard, "hardswish": y * hard}[name]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act, gate", [("relu", "sigmoid"), ("silu", "sigmoid"), ("relu", ("hardsigmoid", 1 / 6, 0.5)),
                                       (("clip", 0.0, 6.0), ("hardsigmoid", 0.2, 0.5)), ("hardswish", "sigmoid")])
@pytest.mark.parametrize("batch, with_bias", [(1, True), (3, True), (2, False)])
def test_excite_matches_the_float64_definition(act, gate, batch, with_bias, dtype):
    rng = np.random.default_rng(0)
    c, r = 40, 10
    means = rng.standard_normal((batch, c)).astype(dtype)
    w1, w2 = rng.standard_normal((c, r)).astype(dtype) * 0.5, rng.standard_normal((r, c)).astype(dtype) * 0.5
    b1 = rng.standard_normal(r).astype(dtype) if with_bias else np.zeros(r, dtype)
    b2 = rng.standard_normal(c).astype(dtype) if with_bias else np.zeros(c, dtype)
    f64 = np.float64
    want = _activation(_activation(means.astype(f64) @ w1.astype(f64) + b1, act) @ w2.astype(f64) + b2, gate)
    scale = np.empty((batch, c), dtype)
    excite(means, w1, b1, *Epilogue(activation=act).kernel_activation(), w2, b2,
           *Epilogue(activation=gate).kernel_activation(), np.empty(r, dtype), scale)
    tol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(scale, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(1, 5, 3, 3), (2, 320, 40, 40)])  # serial, parallel
@pytest.mark.parametrize("in_place", [False, True])
def test_channel_scale_multiplies_each_plane_by_its_factor(shape, in_place):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    scale = rng.standard_normal(shape[:2]).astype(np.float32)
    want = x.astype(np.float64) * scale[:, :, None, None]
    before = x.copy()
    y = channel_scale(x, scale, in_place)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=0)
    assert (y is x) == in_place
    if not in_place:
        np.testing.assert_array_equal(x, before)


def test_channel_scale_of_a_channel_slice_leaves_the_larger_buffer_alone():
    rng = np.random.default_rng(2)
    buffer = rng.standard_normal((2, 12, 4, 4)).astype(np.float32)
    before = buffer.copy()
    scale = rng.standard_normal((2, 8)).astype(np.float32)
    y = channel_scale(buffer[:, :8], scale, in_place=True)  # not contiguous: scaled into a copy
    np.testing.assert_allclose(y, before[:, :8] * scale[:, :, None, None], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(buffer, before)


@pytest.mark.parametrize("channels, hw", [(40, 3), (64, 37), (1152, 7)])  # a partial block; runs and tails; many planes
@pytest.mark.parametrize("in_place", [False, True])
def test_channel_scale_of_blocks_multiplies_each_lane_and_keeps_the_padding_zero(channels, hw, in_place):
    from convengine.core.layouts import NCHW16C, to_layout, to_nchw

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, channels, hw, hw)).astype(np.float32)
    scale = rng.standard_normal((2, channels)).astype(np.float32)
    blocked = to_layout(x, NCHW16C)
    before = blocked.copy()
    y = channel_scale_of_blocks(blocked, scale, in_place)
    assert (y is blocked) == in_place and y.shape == blocked.shape
    np.testing.assert_allclose(to_nchw(y, NCHW16C, channels), x.astype(np.float64) * scale[:, :, None, None], rtol=1e-6, atol=0)
    if channels % 16:
        np.testing.assert_array_equal(y[:, -1, :, :, channels % 16:], 0)
    if not in_place:
        np.testing.assert_array_equal(blocked, before)
