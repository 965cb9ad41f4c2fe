"""The ``grouped`` backend: depthwise and grouped convolutions on register tiles, every epilogue fused.

Checked against the independent float64 reference (``convengine.testing.reference``): random
problems drawn by hypothesis over groups, channels per group (1 = depthwise, up to chunked
reductions), channel multipliers (every register-tile height, and partly filled ones),
kernel sizes, strides, dilations and asymmetric padding; the epilogue's every activation
with and without a residual; the band split at thread counts that cut planes into one-row
bands; NaN; the conformance kit. No timing here (see benchmarks/grouped_layers.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import draw_window
from hypothesis import given, settings
from hypothesis import strategies as st

import convengine as ce
from convengine.backends import grouped
from convengine.backends.grouped import Geometry, GroupedBackend
from convengine.core.costmodel import MachineProfile
from convengine.core.epilogue import ACTIVATIONS, Epilogue
from convengine.core.problem import ConvProblem
from convengine.testing import BackendConformance
from convengine.testing.reference import activation_reference, conv2d_reference, relative_error

EXACT_F32 = 1e-5  # the conformance kit's float32 tolerance for the exact class


def _problem_and_data(seed, x_shape, w_shape, bias=True, **params):
    problem = ConvProblem.from_shapes(x_shape, w_shape, bias=bias, dtype="float32", **params)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32) if bias else None
    return problem, x, w, b


def _reference(problem, x, w, b):
    return conv2d_reference(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
                            problem.stride, problem.padding, problem.dilation, problem.groups)


def _error_on_the_convolution_s_scale(y, expected, conv):
    """``max|y - expected| / max|conv|``: an activation that squeezes the output's range (sigmoid,
    clip) passes float32 rounding of the convolution on unchanged, so the error is measured on
    the scale of the convolution it was applied to."""
    return float(np.max(np.abs(y - expected)) / max(np.max(np.abs(conv)), 1e-30))


@st.composite
def grouped_problems(draw):
    """Grouped convolutions of every kind the backend takes: depthwise, multipliers 1-9, 1-40 channels per group."""
    if draw(st.booleans()):  # depthwise, multiplier 1 (channels in the vector lanes; blocks of 16, partly filled)
        groups, in_per_group, out_per_group = draw(st.integers(2, 40)), 1, 1
    else:
        groups = draw(st.integers(2, 5))
        in_per_group = draw(st.sampled_from([1, 1, 2, 3, 4, 8, 40]))  # 40 x 3x3+: reductions chunked
        out_per_group = draw(st.integers(1 if in_per_group > 1 else 2, 9))  # tiles of 1, 2, 4, 8 channels, partly filled
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    sizes = []
    for axis in range(2):
        eff = dilation[axis] * (kernel[axis] - 1) + 1
        sizes.append(max(1, eff - pads[2 * axis] - pads[2 * axis + 1]) + draw(st.integers(0, 20)))
    return dict(x_shape=(draw(st.integers(1, 2)), groups * in_per_group, *sizes),
                w_shape=(groups * out_per_group, in_per_group, *kernel),
                stride=stride, padding=pads, dilation=dilation, groups=groups,
                bias=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=60, deadline=None)
@given(case=grouped_problems())
def test_matches_the_float64_reference(case):
    seed = case.pop("seed")
    problem, x, w, b = _problem_and_data(seed, **case)
    backend = GroupedBackend()
    assert backend.supports(problem) is None
    before = [a.copy() for a in (x, w) + ((b,) if b is not None else ())]
    y = backend.prepare(problem, w, b)(x)
    assert y.shape == problem.output_shape and y.dtype == np.float32
    assert relative_error(y, _reference(problem, x, w, b)) < EXACT_F32, str(problem)
    for original, copy in zip((x, w) + ((b,) if b is not None else ()), before):
        np.testing.assert_array_equal(original, copy)


@settings(max_examples=30, deadline=None)
@given(case=grouped_problems(), activation=st.sampled_from((None,) + ACTIVATIONS), residual=st.booleans(),
       in_place=st.booleans())
def test_every_epilogue_matches_the_reference(case, activation, residual, in_place):
    seed = case.pop("seed")
    problem, x, w, b = _problem_and_data(seed, **case)
    epilogue = Epilogue(residual=residual, activation=activation)
    backend = GroupedBackend()
    assert backend.supports_epilogue(problem, epilogue) is None
    r = np.random.default_rng(seed + 1).standard_normal(problem.output_shape).astype(np.float32) if residual else None
    conv = _reference(problem, x, w, b) + (0 if r is None else r)
    expected = activation_reference(conv, epilogue.activation, epilogue.params)
    execute = backend.prepare(problem, w, b, epilogue=epilogue)
    if residual:
        kept = r.copy()
        y = execute(x, r)
        np.testing.assert_array_equal(r, kept)  # read, never written...
        if in_place:
            out = execute(x, r, in_place=True)  # ...unless given up
            assert out is r
            assert _error_on_the_convolution_s_scale(out, expected, conv) < EXACT_F32
    else:
        y = execute(x)
    assert _error_on_the_convolution_s_scale(y, expected, conv) < EXACT_F32, f"{problem}, {epilogue}"


@pytest.mark.parametrize("workers", [1, 3, 64])
@pytest.mark.parametrize("shape", [
    ((1, 8, 13, 11), (8, 1, 3, 3), dict(groups=8, padding=1)),  # depthwise
    ((2, 6, 17, 9), (12, 2, 5, 3), dict(groups=3, stride=2, padding=(2, 1, 0, 1))),  # strided, multiplier 4
])
def test_bands_split_at_any_thread_count(workers, shape, monkeypatch):
    """More threads cut each (image, group) into thinner bands, down to one output row each."""
    x_shape, w_shape, params = shape
    problem, x, w, b = _problem_and_data(workers, x_shape, w_shape, **params)
    geo = Geometry(problem, workers)
    assert sum(geo.band_sizes(problem.out_height)) == problem.out_height
    if workers == 64:
        assert geo.band_rows == 1
    monkeypatch.setattr(grouped, "numba_threads", lambda: workers)
    y = GroupedBackend().prepare(problem, w, b)(x)
    assert relative_error(y, _reference(problem, x, w, b)) < EXACT_F32


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("out_width", list(range(1, 31)))
def test_every_depthwise_tile_width_and_split(out_width, stride):
    """Rows of any width: balanced tiles of up to 14 pixels (7 on AVX2), narrow ones computed at a wider compiled width."""
    k = 3
    width = (out_width - 1) * stride + k - 2  # padding 1
    problem, x, w, b = _problem_and_data(out_width, (1, 20, 4, width), (20, 1, k, k), groups=20, padding=1, stride=stride)
    assert problem.out_width == out_width
    y = GroupedBackend().prepare(problem, w, b)(x)
    assert relative_error(y, _reference(problem, x, w, b)) < EXACT_F32


def test_band_buffers_bound_large_planes():
    """112x112 planes run in bands of bounded size (the core's caches), not whole planes."""
    problem = ConvProblem.from_shapes((1, 64, 112, 112), (128, 4, 3, 3), groups=16, padding=1)
    geo = Geometry(problem, 1)
    assert geo.in_floats <= grouped.BAND_FLOATS + geo.hq_extra * geo.wq * 4 + geo.slack
    assert 1 < len(geo.band_sizes(112))
    depthwise = ConvProblem.from_shapes((1, 32, 112, 112), (32, 1, 3, 3), groups=32, padding=1)
    blocked = grouped.DepthwiseGeometry(depthwise, 1, 14)
    assert blocked.rows_in * blocked.wp * 16 * 4 <= grouped.BLOCKED_BAND_BYTES and blocked.band_rows < 112


@pytest.mark.parametrize("in_per_group", [29, 64])
def test_long_reductions_are_chunked_and_stay_exact(in_per_group):
    problem, x, w, b = _problem_and_data(in_per_group, (1, 2 * in_per_group, 9, 9), (4, in_per_group, 5, 5),
                                         groups=2, padding=2)
    assert grouped.reduction_chunk(in_per_group, 25) < in_per_group
    assert relative_error(GroupedBackend().prepare(problem, w, b)(x), _reference(problem, x, w, b)) < EXACT_F32


def test_nan_and_inf_reach_exactly_the_outputs_that_read_them():
    problem, x, w, b = _problem_and_data(0, (1, 4, 9, 9), (4, 1, 3, 3), groups=4, padding=1)
    x[0, 1, 4, 4] = np.nan
    x[0, 2, 0, 0] = np.inf
    w = np.abs(w)
    y = GroupedBackend().prepare(problem, w, b, epilogue=Epilogue(activation="relu6"))(x)
    assert np.isnan(y[0, 1, 3:6, 3:6]).all() and np.isnan(y[0, 1]).sum() == 9
    assert np.isfinite(y[0, 0]).all() and np.isfinite(y[0, 3]).all()
    assert (y[0, 2, :2, :2] == 6).all()  # +inf, clipped


@pytest.mark.parametrize("kwargs, reason", [
    (dict(dtype="float64", groups=2), "float32 only"),
    (dict(groups=1), "groups == 1"),
])
def test_declines_what_it_does_not_run(kwargs, reason):
    groups = kwargs["groups"]
    problem = ConvProblem.from_shapes((1, 8, 5, 5), (8, 8 // groups, 3, 3), **kwargs)
    assert reason in GroupedBackend().supports(problem)


def test_a_tile_s_registers_fit_and_channel_blocks_cover_every_multiplier():
    # a tile's accumulators, its input vectors and a weight fit the 32 vector registers
    assert all(mb * nv + nv + 1 <= 32 for mb, nv in grouped.MAX_VECTORS.items())
    assert [grouped.channel_block(m) for m in (1, 2, 3, 4, 5, 8, 9, 32)] == [1, 2, 4, 4, 8, 8, 8, 8]


def test_the_cost_model_prefers_it_on_depthwise_layers_and_explain_says_so():
    machine = MachineProfile(gemm_flops_float32=4e11, gemm_flops_float64=2e11, bandwidth=2e10)
    registry = ce.default_registry()
    for x_shape, w_shape, params in [((1, 144, 56, 56), (144, 1, 3, 3), dict(groups=144, padding=1)),
                                     ((32, 96, 112, 112), (96, 1, 3, 3), dict(groups=96, stride=2, padding=1)),
                                     ((1, 128, 56, 56), (128, 4, 3, 3), dict(groups=32, padding=1))]:
        problem = ConvProblem.from_shapes(x_shape, w_shape, **params)
        ours = registry.get("grouped").backend.estimate_seconds(problem, machine)
        assert 0 < ours < registry.get("im2col").backend.estimate_seconds(problem, machine)
    decision = ce.explain((1, 144, 56, 56), (144, 1, 3, 3), groups=144, padding=1)
    assert "grouped" in str(decision)
    assert decision.row("grouped").predicted_s is not None


def test_the_engine_runs_it_by_name_with_a_fused_activation():
    problem, x, w, b = _problem_and_data(3, (2, 6, 10, 10), (6, 1, 3, 3), groups=6, padding=1)
    y = ce.conv2d(x, w, b, groups=6, padding=1, backend="grouped", activation="hardswish")
    conv = _reference(problem, x, w, b)
    expected = activation_reference(conv, "hardswish")
    assert _error_on_the_convolution_s_scale(y, expected, conv) < EXACT_F32


class TestGroupedConformance(BackendConformance):
    backend = GroupedBackend()
    test_worked_examples = None  # every hand-computed example has one group: nothing this backend runs
    extra_problems = (
        ConvProblem.from_shapes((1, 32, 28, 28), (32, 1, 3, 3), groups=32, padding=1, bias=True),  # MobileNet depthwise
        ConvProblem.from_shapes((1, 16, 14, 14), (16, 1, 5, 5), groups=16, stride=2, padding=2),  # EfficientNet 5x5/2
        ConvProblem.from_shapes((1, 32, 14, 14), (32, 4, 3, 3), groups=8, padding=1),  # ResNeXt-like
    )


@pytest.mark.parametrize("in_per_group, out_per_group, groups, params", [
    (16, 16, 4, dict(padding=1)),  # ResNeXt-50's third stage
    (32, 32, 2, dict(stride=2, padding=1)),  # its fourth, strided
    (16, 48, 3, dict(padding=(0, 2, 1, 0), dilation=(1, 2))),
    (32, 16, 2, dict(padding=0)),  # 1x1 below: grouped 1x1 layers take the tiles, not the 1x1 kernels
])
def test_direct_runs_groups_of_whole_16_channel_blocks(in_per_group, out_per_group, groups, params):
    from convengine.backends.direct import DirectBackend

    k = 1 if params == dict(padding=0) else 3
    problem, x, w, b = _problem_and_data(groups, (2, groups * in_per_group, 9, 11), (groups * out_per_group, in_per_group, k, k),
                                         groups=groups, **params)
    backend = DirectBackend()
    assert backend.supports(problem) is None
    execute = backend.prepare(problem, w, b, epilogue=Epilogue(activation="silu"))
    conv = _reference(problem, x, w, b)
    expected = activation_reference(conv, "silu")
    assert _error_on_the_convolution_s_scale(execute(x), expected, conv) < EXACT_F32


def test_direct_leaves_partial_channel_blocks_per_group_to_this_backend():
    from convengine.backends.direct import DirectBackend

    for in_per_group, out_per_group in [(8, 8), (16, 8), (24, 24), (1, 1)]:
        problem = ConvProblem.from_shapes((1, 4 * in_per_group, 8, 8), (4 * out_per_group, in_per_group, 3, 3), groups=4)
        assert "multiples of 16" in DirectBackend().supports(problem)
        assert GroupedBackend().supports(problem) is None


# -- depthwise layers on channel-blocked (NCHW16c) activations ---------------------------------------------


@st.composite
def _depthwise_blocked_cases(draw):
    channels = draw(st.sampled_from([16, 24, 32, 40, 48]))  # whole blocks and a partial last one
    k = draw(st.sampled_from([1, 3, 5]))
    window = draw_window(draw, k)
    layouts = draw(st.sampled_from([("NCHW", "NCHW16c"), ("NCHW16c", "NCHW"), ("NCHW16c", "NCHW16c")]))
    return dict(shape=(draw(st.integers(1, 2)), channels, window["height"], window["width"]), k=k,
                stride=window["stride"], padding=window["padding"], dilation=window["dilation"],
                layouts=layouts, activation=draw(st.sampled_from([None, "relu", "sigmoid", "hardswish"])),
                residual=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=40, deadline=None)
@given(case=_depthwise_blocked_cases())
def test_depthwise_layers_compute_blocked_layouts_as_the_reference(case):
    """MobileNet's depthwise layers between blocked 1x1 layers: NCHW16c in, out or both, padding lanes written 0."""
    from convengine.core.layouts import NCHW16C, array_shape, to_layout, to_nchw

    rng = np.random.default_rng(case["seed"])
    n, c, h, w = case["shape"]
    x = rng.standard_normal(case["shape"]).astype(np.float32)
    weight = rng.standard_normal((c, 1, case["k"], case["k"])).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    params = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=c)
    x_layout, y_layout = case["layouts"]
    conv = ce.Engine().prepare(weight, b, input_shape=x.shape, residual=case["residual"], activation=case["activation"],
                               backend="grouped", input_layout=x_layout, output_layout=y_layout, **params)
    assert conv.fused_for(n) == bool(case["activation"] or case["residual"])  # in the kernel, not after it
    out_shape = conv.problem.output_shape
    r = rng.standard_normal(out_shape).astype(np.float32) if case["residual"] else None
    x_in, r_in = to_layout(x, x_layout), None if r is None else to_layout(r, y_layout)
    x_copy = x_in.copy()
    y = conv(x_in, r_in)
    np.testing.assert_array_equal(x_in, x_copy)
    assert y.shape == array_shape(out_shape, y_layout)
    if y_layout == NCHW16C and c % 16:
        np.testing.assert_array_equal(y[:, -1, :, :, c % 16:], 0)  # padding channels stay 0 (sigmoid(0) is not)
    p = conv.problem
    ref = conv2d_reference(x, weight, b, stride=p.stride, padding=p.padding, dilation=p.dilation, groups=c)
    if r is not None:
        ref = ref + r
    if case["activation"]:
        ref = activation_reference(ref, case["activation"])
    assert relative_error(to_nchw(y, y_layout, c), ref) < 1e-5


def test_only_depthwise_layers_take_blocked_layouts():
    backend = GroupedBackend()
    depthwise = ConvProblem.from_shapes((1, 32, 8, 8), (32, 1, 3, 3), groups=32, input_layout="NCHW16c",
                                        output_layout="NCHW16c")
    assert backend.supports_layouts(depthwise) is None
    grouped_problem = ConvProblem.from_shapes((1, 32, 8, 8), (32, 8, 3, 3), groups=4, input_layout="NCHW16c")
    assert "depthwise" in backend.supports_layouts(grouped_problem)
    channels_last = ConvProblem.from_shapes((1, 32, 8, 8), (32, 1, 1, 1), groups=32, input_layout="NHWC",
                                            output_layout="NHWC")
    assert "NCHW16c only" in backend.supports_layouts(channels_last)
