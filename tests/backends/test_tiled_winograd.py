"""The ``tiled_winograd`` backend: F(4x4, 3x3) on the register tiles, against the float64 reference.

The generic property and ONNX tests run it like every backend, and the conformance kit runs on
it here; the rest aims at what is its own: tiles that overhang the output plane, runs of tiles
split over register tiles, channel counts that are not whole blocks, every layout pair, fused
epilogues, channel slices of a larger buffer, batches transformed a few images at a time.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import convengine as ce
import convengine.backends.winograd as winograd
from convengine.backends.winograd import WinogradBackend
from convengine.backends.winograd._transforms import MATRICES, input_matrix, output_matrix, transformed_weights
from convengine.core.contract import OutputSlice
from convengine.core.epilogue import Epilogue
from convengine.core.layouts import NCHW, NCHW16C, to_layout, to_nchw
from convengine.core.problem import ConvProblem
from convengine.testing import BackendConformance
from convengine.testing.reference import activation_reference, conv2d_reference, relative_error

#: F(4x4, 3x3) in float32 measured 1e-6 to 6e-6 on these shapes; its error_bound is 5e-5.
WINOGRAD_F32 = 2e-5


class TestTiledWinogradConformance(BackendConformance):
    """The kit every backend must pass, on this backend's sub-space (3x3, stride 1, float32; it declines the rest)."""

    backend = WinogradBackend()
    extra_problems = [
        ConvProblem.from_shapes((2, 16, 9, 11), (20, 16, 3, 3), padding=1, bias=True),
        ConvProblem.from_shapes((1, 32, 14, 14), (32, 32, 3, 3), padding=(0, 2, 1, 0), bias=False),
        ConvProblem.from_shapes((1, 24, 7, 7), (48, 24, 3, 3), padding="same", bias=True),
    ]
    # ONNX's Conv2d cases are 1x1, 2x2 and strided kernels, or float64 data: none is a float32 3x3 at stride 1
    test_matches_onnx_conformance_cases = None


def _problem(x_shape, w_shape, layouts=(NCHW, NCHW), **params):
    problem = ConvProblem.from_shapes(x_shape, w_shape, dtype="float32", **params)
    return dataclasses.replace(problem, input_layout=layouts[0], output_layout=layouts[1])


def _data(rng, x_shape, w_shape):
    fan_in = w_shape[1] * 9
    return (rng.standard_normal(x_shape).astype(np.float32),
            (rng.standard_normal(w_shape) / np.sqrt(fan_in)).astype(np.float32),
            rng.standard_normal(w_shape[0]).astype(np.float32))


def _reference(x, w, b, problem):
    return conv2d_reference(x, w, b, padding=problem.padding)


@pytest.mark.parametrize("m", sorted(MATRICES))
def test_the_transforms_compute_a_3x3_correlation(m):
    """The matrices themselves, in float64: ``A^T ((G g G^T) * (B^T d B)) A`` is the m x m correlation of d with g."""
    rng = np.random.default_rng(m)
    d, g = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
    bt, at = np.array(input_matrix(m)), np.array(output_matrix(m))
    u = transformed_weights(g[None, None], m)[0, 0].astype(np.float64)
    y = at @ (u * (bt @ d @ bt.T)) @ at.T
    expected = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)  # (u rounded to float32 once)


@pytest.mark.parametrize("size", [(1, 1), (3, 5), (4, 4), (5, 9), (8, 8), (13, 17), (28, 28), (57, 23)])
@pytest.mark.parametrize("padding", [1, 0, (0, 2, 1, 0), (2, 0, 0, 1)])
def test_every_tile_overhang_and_padding(size, padding):
    """Output planes that are not whole 4x4 tiles, over runs of up to 14 tiles (some of them rows apart)."""
    rng = np.random.default_rng(sum(size))
    problem = _problem((1, 16) + tuple(s + 2 for s in size), (16, 16, 3, 3), padding=padding, bias=True)
    x, w, b = _data(rng, problem.input_shape, problem.weight_shape)
    y = WinogradBackend().prepare(problem, w, b)(x)
    assert y.shape == problem.output_shape
    assert relative_error(y, _reference(x, w, b, problem)) < WINOGRAD_F32


@pytest.mark.parametrize("c_in, c_out", [(1, 3), (3, 16), (16, 16), (17, 31), (20, 48), (64, 96), (48, 64), (256, 8)])
@pytest.mark.parametrize("layouts", [(NCHW, NCHW), (NCHW16C, NCHW16C), (NCHW, NCHW16C), (NCHW16C, NCHW)])
def test_channel_blocks_and_every_layout_pair(c_in, c_out, layouts):
    """Partial channel blocks in and out (a blocked output's padding channels written as 0) in both layouts."""
    rng = np.random.default_rng(c_in * c_out)
    problem = _problem((2, c_in, 10, 12), (c_out, c_in, 3, 3), layouts=layouts, padding=1, bias=True)
    x, w, b = _data(rng, problem.input_shape, problem.weight_shape)
    y = WinogradBackend().prepare(problem, w, b)(to_layout(x, layouts[0]))
    assert y.shape == problem.output_array_shape
    if layouts[1] == NCHW16C:
        assert not to_nchw(y, NCHW16C, y.shape[1] * 16)[:, c_out:].any()
        y = to_nchw(y, NCHW16C, c_out)
    assert relative_error(y, _reference(x, w, b, problem)) < WINOGRAD_F32


@pytest.mark.parametrize("activation", [None, "relu", ("clip", 0.0, 6.0), "silu", "hardswish", "sigmoid"])
@pytest.mark.parametrize("layout", [NCHW, NCHW16C])
@pytest.mark.parametrize("residual, in_place", [(False, False), (True, False), (True, True)])
def test_fused_epilogues(activation, layout, residual, in_place):
    """Bias, residual (also written over, in place) and every activation, applied in the output transform."""
    rng = np.random.default_rng(7)
    problem = _problem((1, 32, 11, 9), (48, 32, 3, 3), layouts=(layout, layout), padding=1, bias=True)
    x, w, b = _data(rng, problem.input_shape, problem.weight_shape)
    r = rng.standard_normal(problem.output_shape).astype(np.float32)
    name, params = (activation, ()) if not isinstance(activation, tuple) else (activation[0], activation[1:])
    epilogue = Epilogue(residual=residual, activation=name, params=params) if name else Epilogue(residual=residual)
    execute = WinogradBackend().prepare(problem, w, b, epilogue=epilogue)
    xl, rl = to_layout(x, layout), to_layout(r, layout)
    kept = rl.copy()
    y = execute(xl, rl, in_place=in_place) if residual else execute(xl)
    if residual and in_place:
        assert y is rl
    elif residual:
        np.testing.assert_array_equal(rl, kept)
    expected = _reference(x, w, b, problem) + (r if residual else 0)
    expected = activation_reference(expected, name, params) if name else expected
    if layout == NCHW16C:
        y = to_nchw(y, NCHW16C, 48)
    assert relative_error(y, expected) < WINOGRAD_F32


@pytest.mark.parametrize("size", [8, 1])
@pytest.mark.parametrize("layout, step, c_out", [(NCHW, 1, 32), (NCHW, 1, 20), (NCHW, 2, 32), (NCHW16C, 1, 32)])
def test_writes_a_channel_slice_of_a_larger_buffer(size, layout, step, c_out):
    """A concatenation's buffer: the output's channels from ``start``, everything else left as it was
    (also with one-pixel planes, where an NCHW pixel's channels lie side by side as in a vector)."""
    rng = np.random.default_rng(3)
    problem = _problem((2, 16, size, size), (c_out, 16, 3, 3), layouts=(NCHW, layout), padding=1, bias=True)
    x, w, b = _data(rng, problem.input_shape, problem.weight_shape)
    total, start = 80, 16
    buffer = rng.standard_normal((2, total, size, size)).astype(np.float32)
    buffer = to_layout(buffer, layout)
    before = buffer.copy()
    out = OutputSlice(buffer, start, c_out, step, layout)
    backend = WinogradBackend()
    assert backend.supports_output_slice(problem, Epilogue(), step) is None
    backend.prepare(problem, w, b)(x, out=out)
    full, original = (to_nchw(buffer, layout, total), to_nchw(before, layout, total))
    written = list(range(start, start + c_out * step, step))
    expected = _reference(x, w, b, problem)
    assert relative_error(full[:, written], expected) < WINOGRAD_F32
    others = [c for c in range(total) if c not in written]
    np.testing.assert_array_equal(full[:, others], original[:, others])


def test_batches_transform_a_few_images_at_a_time(monkeypatch):
    """The transformed input of a batch is 4x its size: a call takes images in groups that fit MAX_IMAGES_BYTES."""
    rng = np.random.default_rng(5)
    problem = _problem((5, 32, 12, 12), (32, 32, 3, 3), layouts=(NCHW16C, NCHW16C), padding=1, bias=True)
    x, w, b = _data(rng, problem.input_shape, problem.weight_shape)
    monkeypatch.setattr(winograd, "MAX_IMAGES_BYTES", 2 * 36 * 2 * 9 * 16 * 4)  # two images' transformed input
    r = rng.standard_normal(problem.output_shape).astype(np.float32)
    execute = WinogradBackend().prepare(problem, w, b, epilogue=Epilogue(residual=True, activation="relu"))
    y = to_nchw(execute(to_layout(x, NCHW16C), to_layout(r, NCHW16C)), NCHW16C, 32)
    expected = np.maximum(_reference(x, w, b, problem) + r, 0)
    assert relative_error(y, expected) < WINOGRAD_F32


@pytest.mark.parametrize("batch, chunk_images", [(1, None), (3, 1)])
@pytest.mark.parametrize("layout", [NCHW, NCHW16C])
def test_nan_and_inf_take_the_exact_path(batch, chunk_images, layout, monkeypatch):
    """A transform would spread a NaN or Inf over its tile's outputs: an input holding one (found as
    it is copied; a batch in several calls checked whole first, as an earlier call may have written
    over its residual already) runs on ``direct`` for the whole call, so they land exactly where a
    direct convolution puts them, also with the residual given up in place."""
    if chunk_images:
        monkeypatch.setattr(winograd, "MAX_IMAGES_BYTES", chunk_images * 36 * 2 * 25 * 16 * 4)
    rng = np.random.default_rng(11)
    problem = _problem((batch, 16, 18, 18), (16, 16, 3, 3), layouts=(layout, layout), padding=1, bias=True)
    x, w, b = _data(rng, problem.input_shape, problem.weight_shape)
    x[-1, 3, 2, 2], x[-1, 5, 9, 12], x[-1, 0, 17, 0] = np.nan, np.inf, -np.inf
    r = rng.standard_normal(problem.output_shape).astype(np.float32)
    execute = WinogradBackend().prepare(problem, w, b, epilogue=Epilogue(residual=True))
    xl, rl = to_layout(x, layout), to_layout(r, layout)
    kept = xl.copy()
    y = to_nchw(execute(xl, rl, in_place=True), layout, 16)
    np.testing.assert_array_equal(xl, kept)
    with np.errstate(invalid="ignore"):
        expected = _reference(x, w, b, problem) + r
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(y), test(expected))
    finite = np.isfinite(expected)
    assert relative_error(y[finite], expected[finite]) < 1e-5  # direct's exact sums


def test_an_inf_meeting_zero_and_tiny_weights_lands_as_in_a_direct_convolution():
    """Inf times a zero weight is NaN, times a tiny one an Inf of its sign: the exact path runs on the
    weights themselves (ones read back from the transforms come back near zero, not at it, and a tap a
    billionth of its kernel's largest with either sign)."""
    rng = np.random.default_rng(13)
    problem = _problem((1, 16, 10, 10), (32, 16, 3, 3), padding=1)
    x, w, _ = _data(rng, problem.input_shape, problem.weight_shape)
    w[:, 4, 1, 1] = 0.0
    w[:, 7, 0, 2] = 1e-9 * np.where(np.arange(32) % 2, 1.0, -1.0)
    x[0, 4, 5, 5], x[0, 7, 2, 3] = np.inf, -np.inf
    y = WinogradBackend().prepare(problem, w, None)(x)
    with np.errstate(invalid="ignore"):
        expected = _reference(x, w, None, problem)
    assert np.isnan(expected).any() and np.isinf(expected).any()
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(y), test(expected))


def test_weights_that_are_not_all_finite_take_the_exact_path():
    rng = np.random.default_rng(12)
    problem = _problem((1, 16, 9, 9), (16, 16, 3, 3), padding=1, bias=True)
    x, w, b = _data(rng, problem.input_shape, problem.weight_shape)
    w[2, 1, 0, 0] = np.inf
    y = WinogradBackend().prepare(problem, w, b)(x)
    with np.errstate(invalid="ignore"):
        expected = _reference(x, w, b, problem)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(expected))


@pytest.mark.parametrize("kwargs, reason", [
    (dict(x=(1, 16, 8, 8), w=(16, 16, 5, 5)), "3x3 kernels only"),
    (dict(x=(1, 16, 8, 8), w=(16, 16, 3, 3), stride=2), "stride 1 only"),
    (dict(x=(1, 16, 8, 8), w=(16, 16, 3, 3), dilation=2), "dilation 1 only"),
    (dict(x=(1, 32, 8, 8), w=(32, 16, 3, 3), groups=2), "one group only"),
    (dict(x=(1, 16, 8, 8), w=(16, 16, 3, 3), dtype="float64"), "float32 only"),
])
def test_declines_what_it_cannot_run(kwargs, reason):
    problem = ConvProblem.from_shapes(kwargs.pop("x"), kwargs.pop("w"), **kwargs)
    assert reason in WinogradBackend().supports(problem)


def test_it_is_lossy_and_an_accuracy_budget_keeps_it_out():
    """Its bound is the lossy class's: a budget of the exact class's 1e-6 excludes it, and explain says why."""
    problem = ConvProblem.from_shapes((1, 64, 56, 56), (64, 64, 3, 3), padding=1, bias=True)
    engine = ce.Engine(max_rel_error=1e-6)
    decision = engine.select(problem)
    row = next(c for c in decision.candidates if c.name == "tiled_winograd")
    assert row.status == "excluded" and "accuracy" in row.reason
    assert decision.chosen != "tiled_winograd"


def test_the_cost_model_prefers_it_on_wide_planes_and_not_on_a_7x7_stage(typical_machine):
    """ResNet's 56x56 3x3 layer: 4x fewer products; its 512-channel 7x7 one at batch 1: 4x the weights to read
    for 4 tiles an image, where ``direct`` wins (the cost model's choice: no weight-memory budget, which would
    keep the 512-channel layer's transforms out on its own)."""
    engine = ce.Engine(max_extra_weight_bytes=None)
    wide = ConvProblem.from_shapes((1, 64, 56, 56), (64, 64, 3, 3), padding=1, bias=True)
    late = ConvProblem.from_shapes((1, 512, 7, 7), (512, 512, 3, 3), padding=1, bias=True)
    assert engine.select(wide).chosen == "tiled_winograd"
    assert engine.select(late).chosen != "tiled_winograd"
