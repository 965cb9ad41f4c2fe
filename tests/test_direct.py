"""The ``direct`` backend's own edges: every tile width, channel padding, the dilated path, the epilogue.

The generic property, conformance and ONNX tests already run it like every backend; these
aim at what is specific to its register tiles (widths 1-14 and the balanced split, channel
counts that are not multiples of 16, the stem's small channel block, narrow tiles as on
AVX2) against the independent float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest

import convengine as ce
from convengine.backends.direct import DirectBackend, channel_block, tile_efficiency
from convengine.epilogue import Epilogue
from convengine.problem import ConvProblem
from convengine.testing.reference import conv2d_reference, relative_error

EXACT_F32 = 1e-6


def _run(backend, x, w, b=None, residual=None, activation=None, **params):
    problem = ConvProblem.from_shapes(x.shape, w.shape, bias=b is not None, dtype="float32", **params)
    assert backend.supports(problem) is None
    epilogue = Epilogue(residual=residual is not None, activation=activation)
    execute = backend.prepare(problem, w, b, epilogue=epilogue)
    y = execute(x, residual) if residual is not None else execute(x)
    assert y.shape == problem.output_shape and y.dtype == np.float32
    return y


def _reference(x, w, b=None, **params):
    """The float64 reference, with the parameters normalised as the engine does."""
    p = ConvProblem.from_shapes(x.shape, w.shape, **params)
    return conv2d_reference(x, w, b, stride=p.stride, padding=p.padding, dilation=p.dilation)


def _data(rng, x_shape, w_shape):
    return (rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32),
            rng.standard_normal(w_shape[0]).astype(np.float32))


@pytest.mark.parametrize("out_width", list(range(1, 31)))
def test_every_tile_width_and_split(out_width):
    rng = np.random.default_rng(out_width)
    x, w, b = _data(rng, (1, 5, 3, out_width + 2), (7, 5, 3, 3))
    y = _run(DirectBackend(), x, w, b)
    assert relative_error(y, _reference(x, w, b)) < EXACT_F32


@pytest.mark.parametrize("tile_width", [1, 6, 14])
@pytest.mark.parametrize("c_in,c_out", [(1, 1), (3, 64), (16, 16), (17, 15), (33, 40)])
def test_channel_padding_and_narrow_tiles(tile_width, c_in, c_out):
    rng = np.random.default_rng(c_in * 100 + c_out)
    x, w, b = _data(rng, (2, c_in, 9, 11), (c_out, c_in, 3, 3))
    y = _run(DirectBackend(tile_width=tile_width), x, w, b, padding=1)
    assert relative_error(y, _reference(x, w, b, padding=1)) < EXACT_F32


@pytest.mark.parametrize("params", [
    dict(stride=2, padding=3),
    dict(stride=(3, 2), padding=(1, 0, 2, 1)),
    dict(dilation=(2, 3), padding=2),  # per-kw runs: the (kw, channel) pairs are not contiguous
    dict(stride=2, dilation=2, padding="valid"),
])
def test_stride_dilation_padding(params):
    rng = np.random.default_rng(1)
    x, w, b = _data(rng, (1, 20, 15, 17), (18, 20, 5, 3))
    y = _run(DirectBackend(), x, w, b, **params)
    assert relative_error(y, _reference(x, w, b, **params)) < EXACT_F32


@pytest.mark.parametrize("c_in", [16, 20, 33])
@pytest.mark.parametrize("width", [5, 16, 17, 35])
def test_the_blocked_copy_of_partial_channel_blocks_and_pixel_runs(c_in, width):
    """The input copy moves 16 pixels x 16 channels per register transpose: rows that are not
    a multiple of 16 pixels, channel blocks that are partly filled, and asymmetric zero borders."""
    rng = np.random.default_rng(c_in * 100 + width)
    x, w, b = _data(rng, (2, c_in, 6, width), (5, c_in, 3, 3))
    padding = (2, 0, 1, 3)
    y = _run(DirectBackend(), x, w, b, padding=padding)
    assert relative_error(y, _reference(x, w, b, padding=padding)) < EXACT_F32


def test_a_non_contiguous_input_is_read_correctly():
    rng = np.random.default_rng(7)
    x, w, b = _data(rng, (1, 18, 9, 20), (4, 16, 3, 3))
    view = x[:, 1:17, :, ::2]  # channel- and column-strided
    y = _run(DirectBackend(), view, w, b, padding=1)
    assert relative_error(y, _reference(np.ascontiguousarray(view), w, b, padding=1)) < EXACT_F32


def test_long_reductions_stay_within_the_exact_bound():
    """512 channels x 3x3 is 4608 products per output: partial tiles keep float32 rounding small."""
    rng = np.random.default_rng(2)
    x, w, _ = _data(rng, (1, 512, 7, 7), (32, 512, 3, 3))
    y = _run(DirectBackend(), x, w, padding=1)
    assert relative_error(y, _reference(x, w, padding=1)) < EXACT_F32


def test_fused_residual_and_relu_keep_nan_and_leave_inputs_alone():
    rng = np.random.default_rng(3)
    x, w, b = _data(rng, (2, 16, 6, 6), (20, 16, 3, 3))
    residual = rng.standard_normal((2, 20, 6, 6)).astype(np.float32)
    x[0, 3, 2, 2] = np.nan
    before = (x.copy(), w.copy(), b.copy(), residual.copy())
    y = _run(DirectBackend(), x, w, b, residual=residual, activation="relu", padding=1)
    expected = np.maximum(_reference(x, w, b, padding=1) + residual, 0)
    assert np.array_equal(np.isnan(y), np.isnan(expected)) and np.isnan(y).any()
    finite = ~np.isnan(expected)
    assert np.abs(y[finite] - expected[finite]).max() / np.abs(expected[finite]).max() < EXACT_F32
    for a, a0 in zip((x, w, b, residual), before):
        assert np.array_equal(a, a0, equal_nan=True)


def test_engine_dispatch_by_name():
    rng = np.random.default_rng(4)
    x, w, b = _data(rng, (1, 8, 10, 10), (16, 8, 3, 3))
    y = ce.conv2d(x, w, b, padding=1, backend="direct")
    assert relative_error(y, _reference(x, w, b, padding=1)) < EXACT_F32


@pytest.mark.parametrize("n,c_in,plane,c_out", [
    (1, 1, (1, 1), 1),
    (2, 5, (3, 7), 13),  # pixel tail (21 of 64) and channel tail (13 = 2x6 + 1)
    (1, 64, (8, 8), 6),  # exactly one block
    (1, 70, (9, 15), 12),  # 135 pixels: two full blocks and a tail
    (1, 600, (7, 7), 7),  # 600 products: three chunks through the output's partial sums
])
def test_pointwise_blocks_tails_and_chunks(n, c_in, plane, c_out):
    rng = np.random.default_rng(c_in)
    x, w, b = _data(rng, (n, c_in, *plane), (c_out, c_in, 1, 1))
    residual = rng.standard_normal((n, c_out, *plane)).astype(np.float32)
    y = _run(DirectBackend(), x, w, b)
    assert relative_error(y, _reference(x, w, b)) < EXACT_F32
    fused = _run(DirectBackend(), x, w, b, residual=residual, activation="relu")
    assert relative_error(fused, np.maximum(_reference(x, w, b) + residual, 0)) < EXACT_F32


@pytest.mark.parametrize("stride", [2, (2, 3), 4])
def test_strided_pointwise_reads_a_subsampled_copy(stride):
    rng = np.random.default_rng(6)
    x, w, b = _data(rng, (2, 20, 9, 13), (10, 20, 1, 1))
    before = x.copy()
    y = _run(DirectBackend(), x, w, b, stride=stride)
    assert relative_error(y, _reference(x, w, b, stride=stride)) < EXACT_F32
    assert np.array_equal(x, before)


def test_pointwise_long_reduction_stays_within_the_exact_bound():
    rng = np.random.default_rng(5)
    x, w, _ = _data(rng, (1, 2048, 7, 7), (20, 2048, 1, 1))
    assert relative_error(_run(DirectBackend(), x, w), _reference(x, w)) < EXACT_F32


@pytest.mark.parametrize("kwargs,reason", [
    (dict(dtype="float64"), "float32 only"),
    (dict(groups=2), "groups"),
])
def test_declines_what_it_cannot_run(kwargs, reason):
    groups = kwargs.get("groups", 1)
    problem = ConvProblem.from_shapes((1, 8, 5, 5), (8, 8 // groups, 3, 3), **kwargs)
    assert reason in DirectBackend().supports(problem)


@pytest.mark.parametrize("bad", [0, 15, -1, 2.0, True, "14"])
def test_a_tile_width_outside_the_compiled_range_is_refused(bad):
    with pytest.raises(ValueError, match="tile_width must be an int from 1 to 14"):
        DirectBackend(tile_width=bad)


def test_the_backend_s_copies_of_the_kernel_constants_match_the_kernels():
    from convengine.backends import _simd, direct

    assert (direct.LANES, direct.POINT_CHANNELS, direct.POINT_PIXELS) == (
        _simd.LANES, _simd.POINT_CHANNELS, _simd.POINT_PIXELS)
    assert _simd.MAX_WIDTH in _simd.TILE_WIDTHS and _simd.preferred_width() in _simd.TILE_WIDTHS


def test_estimate_counts_channel_padding_and_narrow_tiles():
    from convengine.costmodel import MachineProfile

    machine = MachineProfile(gemm_flops_float32=1e11, gemm_flops_float64=5e10, bandwidth=1e10)
    backend = DirectBackend(tile_width=14)
    full = ConvProblem.from_shapes((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    padded = ConvProblem.from_shapes((1, 65, 56, 56), (64, 65, 3, 3), padding=1)  # 65 channels cost like 80
    assert backend.estimate_seconds(padded, machine) > 1.15 * backend.estimate_seconds(full, machine)
    assert channel_block(3) == 3 and channel_block(64) == 16
    assert tile_efficiency(56, 14) == 1.0 and tile_efficiency(2, 14) == 0.25
