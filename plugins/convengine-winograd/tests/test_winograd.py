"""Tests of the winograd plugin: numerics against the float64 reference, supports() reasons,
discovery through the entry point, the engine's accuracy budget, and input immutability.

Run after ``pip install ./plugins/convengine-winograd`` (or ``-e``)::

    python -m pytest plugins/convengine-winograd/tests -q -p no:cacheprovider
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

import convengine as ce
from convengine.testing import BackendConformance
from convengine.testing.reference import conv2d_reference, relative_error
from convengine_winograd.plugin import ERROR_BOUNDS, F4_ERROR_BOUNDS, Winograd4Backend, WinogradBackend

BACKEND = WinogradBackend()


def _problem(x_shape, w_shape, *, padding=0, groups=1, dtype="float32", bias=False, **kw):
    return ce.ConvProblem.from_shapes(x_shape, w_shape, padding=padding, groups=groups, dtype=dtype, bias=bias, **kw)


def _data(rng, x_shape, w_shape, dtype, bias):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    return x, w, b


def _run(x, w, b, padding, groups):
    problem = _problem(x.shape, w.shape, padding=padding, groups=groups, dtype=x.dtype, bias=b is not None)
    assert BACKEND.supports(problem) is None
    y = BACKEND.prepare(problem, w, b)(x)
    assert y.shape == problem.output_shape and y.dtype == x.dtype
    return y


# (input shape, weight shape, padding (top, bottom, left, right), groups)
CASES = [
    ((1, 1, 3, 3), (1, 1, 3, 3), (0, 0, 0, 0), 1),  # a single tile, 1x1 output
    ((2, 3, 7, 9), (4, 3, 3, 3), (1, 1, 1, 1), 1),  # odd output sizes, batch 2
    ((1, 5, 8, 8), (7, 5, 3, 3), (0, 0, 0, 0), 1),  # 6x6 output: whole tiles
    ((1, 4, 5, 6), (6, 2, 3, 3), (0, 2, 1, 0), 2),  # asymmetric padding, groups
    ((3, 8, 6, 5), (8, 1, 3, 3), (2, 0, 0, 3), 8),  # depthwise, asymmetric, batch 3
    ((2, 6, 10, 4), (12, 1, 3, 3), (1, 1, 1, 1), 6),  # depthwise multiplier 2
    ((2, 6, 4, 4), (3, 2, 3, 3), (3, 2, 0, 4), 3),  # padding larger than the kernel
    ((1, 16, 13, 17), (24, 16, 3, 3), (1, 1, 1, 1), 1),  # odd sizes, more channels
    ((4, 2, 3, 20), (2, 2, 3, 3), (0, 1, 2, 0), 1),  # one tile row, wide
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("x_shape,w_shape,padding,groups", CASES)
def test_matches_reference(x_shape, w_shape, padding, groups, dtype, bias):
    rng = np.random.default_rng(hash((x_shape, w_shape, padding, groups)) % 2**32)
    x, w, b = _data(rng, x_shape, w_shape, dtype, bias)
    y = _run(x, w, b, padding, groups)
    ref = conv2d_reference(x, w, b, padding=padding, groups=groups)
    assert relative_error(y, ref) <= ERROR_BOUNDS[dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_random_shapes(dtype):
    """Random sizes, paddings (often asymmetric), group counts, batches and bias."""
    rng = np.random.default_rng(12345)
    worst = 0.0
    for _ in range(40):
        groups = int(rng.choice([1, 1, 2, 3, 4]))
        c_in = groups * int(rng.integers(1, 5))
        c_out = groups * int(rng.integers(1, 5))
        if rng.random() < 0.2:  # depthwise
            c_in = c_out = groups = int(rng.integers(1, 9))
        n = int(rng.integers(1, 4))
        pad = tuple(int(p) for p in rng.integers(0, 3, size=4))
        h = int(rng.integers(max(1, 3 - pad[0] - pad[1]), 16))
        w_ = int(rng.integers(max(1, 3 - pad[2] - pad[3]), 16))
        x, w, b = _data(rng, (n, c_in, h, w_), (c_out, c_in // groups, 3, 3), dtype, rng.random() < 0.5)
        y = _run(x, w, b, pad, groups)
        err = relative_error(y, conv2d_reference(x, w, b, padding=pad, groups=groups))
        worst = max(worst, err)
    assert worst <= ERROR_BOUNDS[dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_resnet_like_error(dtype):
    """A 256-channel layer with non-negative (post-ReLU) input: error well inside the bound."""
    rng = np.random.default_rng(7)
    x = np.maximum(rng.standard_normal((2, 256, 14, 14)), 0).astype(dtype)
    w = (rng.standard_normal((64, 256, 3, 3)) / 48).astype(dtype)
    y = _run(x, w, None, (1, 1, 1, 1), 1)
    assert relative_error(y, conv2d_reference(x, w, padding=(1, 1, 1, 1))) <= ERROR_BOUNDS[dtype] / 5


def test_batch_chunking_matches_whole_batch():
    """A tiny buffer limit forces one image at a time; the result must not change."""
    from convengine_winograd.winograd import build_executor

    rng = np.random.default_rng(3)
    x, w, b = _data(rng, (5, 4, 9, 7), (6, 2, 3, 3), "float64", True)
    problem = _problem(x.shape, w.shape, padding=(1, 0, 2, 1), groups=2, dtype="float64", bias=True)
    whole = build_executor(problem, w, b)(x)
    chunked = build_executor(problem, w, b, max_buffer_bytes=1)(x)
    np.testing.assert_array_equal(whole, chunked)
    ref = conv2d_reference(x, w, b, padding=(1, 0, 2, 1), groups=2)
    assert relative_error(chunked, ref) <= ERROR_BOUNDS["float64"]


def test_numpy_transforms_agree_with_numba():
    """The vectorised-numpy transforms (kept for comparison) compute the same V and Y."""
    from convengine_winograd import kernels

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 7, 10))
    pad, groups, c_out = (1, 2, 0, 1), 3, 9
    problem = _problem(x.shape, (c_out, 2, 3, 3), padding=pad, groups=groups, dtype="float64")
    th, tw = kernels.tile_counts(problem.out_height, problem.out_width)
    t = 2 * th * tw
    tp = kernels.padded_tiles(t, 8)
    v1 = np.zeros((groups, 2, 16, tp))
    v2 = np.zeros_like(v1)
    kernels.input_transform(x, v1, pad[0], pad[2], th, tw, 2)
    kernels.input_transform_numpy(x, v2, pad, th, tw, 2)
    np.testing.assert_allclose(v1, v2, rtol=0, atol=1e-12)
    m = rng.standard_normal((groups, c_out // groups, 16, tp))
    bias = rng.standard_normal(c_out)
    y1 = np.empty(problem.output_shape)
    y2 = np.empty(problem.output_shape)
    kernels.output_transform(m, bias, y1, th, tw, c_out // groups, y1, False, False)
    kernels.output_transform_numpy(m, bias, y2, th, tw, c_out // groups)
    np.testing.assert_allclose(y1, y2, rtol=0, atol=1e-12)


def test_weight_transform_is_exact_for_f2():
    """U = G g G^T: spot-check one position against the closed form."""
    from convengine_winograd import kernels

    g = np.arange(9.0).reshape(1, 1, 3, 3)
    u = kernels.transform_weights(g, 1)
    assert u.shape == (1, 16, 1, 1)
    # position (1, 1): (g0+g1+g2)/2 applied to rows and columns = sum(g) / 4
    assert u[0, 5, 0, 0] == pytest.approx(g.sum() / 4)
    assert u[0, 0, 0, 0] == g[0, 0, 0, 0]


# -- supports() --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "w_shape,kwargs,reason",
    [
        ((4, 3, 5, 5), {}, "only 3x3 kernels (got 5x5)"),
        ((4, 3, 1, 1), {}, "only 3x3 kernels (got 1x1)"),
        ((4, 3, 3, 1), {}, "only 3x3 kernels (got 3x1)"),
        ((4, 3, 3, 3), {"stride": 2}, "only stride 1 (got stride 2x2)"),
        ((4, 3, 3, 3), {"stride": (1, 2)}, "only stride 1 (got stride 1x2)"),
        ((4, 3, 3, 3), {"dilation": 2}, "only dilation 1 (got dilation 2x2)"),
    ],
)
def test_supports_reasons(w_shape, kwargs, reason):
    problem = _problem((1, 3, 16, 16), w_shape, **kwargs)
    assert BACKEND.supports(problem) == reason
    with pytest.raises(ValueError, match="winograd cannot run"):
        BACKEND.prepare(problem, np.zeros(w_shape, np.float32), None)


def test_supports_and_contract_attributes():
    problem = _problem((2, 4, 9, 9), (4, 2, 3, 3), padding="same", groups=2, dtype="float64", bias=True)
    assert BACKEND.supports(problem) is None
    assert BACKEND.name == "winograd" and BACKEND.device == "cpu"
    assert BACKEND.numerical_class == ce.LOSSY
    assert BACKEND.availability() is None
    assert 1e-6 < BACKEND.error_bound("float32") <= 1e-4
    assert BACKEND.error_bound("float64") <= 1e-11
    assert set(BACKEND.fingerprint()) >= {"version", "numba"}


def test_estimate_seconds():
    class Machine:
        bandwidth = 20e9

        @staticmethod
        def gemm_flops(dtype):
            return 100e9 if dtype == "float32" else 50e9

    small = BACKEND.estimate_seconds(_problem((1, 64, 56, 56), (64, 64, 3, 3), padding=1), Machine)
    big = BACKEND.estimate_seconds(_problem((8, 64, 56, 56), (64, 64, 3, 3), padding=1), Machine)
    f64 = BACKEND.estimate_seconds(_problem((1, 64, 56, 56), (64, 64, 3, 3), padding=1, dtype="float64"), Machine)
    assert 0 < small < big and small < f64
    assert BACKEND.estimate_seconds(_problem((1, 3, 16, 16), (4, 3, 5, 5)), Machine) is None


# -- through convengine -------------------------------------------------------------------------


def test_registered_through_entry_point():
    eps = importlib.metadata.entry_points(group="convengine")
    assert any(ep.name == "winograd" and ep.value == "convengine_winograd.plugin" for ep in eps)
    infos = {info.name: info for info in ce.list_backends()}
    for name in ("winograd", "winograd4"):  # one plugin, two backends
        info = infos[name]
        assert info.available, info.reason
        assert info.numerical_class == ce.LOSSY and info.device == "cpu"


def test_accuracy_budget_excludes_it():
    x = np.ones((1, 2, 6, 6), np.float32)
    w = np.ones((2, 2, 3, 3), np.float32)
    # a preference list (not "auto") so that no machine profile is measured or cached
    decision = ce.Engine(policy=["winograd", "im2col"], max_rel_error=1e-6).explain(x, w, padding=1)
    assert decision.chosen == "im2col"
    row = decision.row("winograd")
    assert row.status == "excluded" and row.reason.startswith("accuracy"), row.reason
    with pytest.raises(ce.BackendUnavailableError):
        ce.Engine(policy="winograd", max_rel_error=1e-6).conv2d(x, w, padding=1)
    # a budget at the bound admits it
    assert ce.Engine(policy="winograd", max_rel_error=1e-4).conv2d(x, w, padding=1).shape == (1, 2, 6, 6)


def test_engine_policy_runs_it(monkeypatch):
    monkeypatch.delenv("CONVENGINE_BACKEND", raising=False)
    rng = np.random.default_rng(11)
    x, w, b = _data(rng, (2, 4, 11, 8), (6, 2, 3, 3), "float32", True)
    engine = ce.Engine(policy="winograd")
    assert engine.explain(x, w, b, padding=(0, 1, 2, 1), groups=2).chosen == "winograd"
    y = engine.conv2d(x, w, b, padding=(0, 1, 2, 1), groups=2)
    ref = conv2d_reference(x, w, b, padding=(0, 1, 2, 1), groups=2)
    assert relative_error(y, ref) <= ERROR_BOUNDS["float32"]
    prepared = engine.prepare(w, b, input_shape=x.shape, padding=(0, 1, 2, 1), groups=2)
    np.testing.assert_array_equal(prepared(x), y)
    # a problem it does not support is refused with its reason
    with pytest.raises(ce.BackendUnavailableError, match="only stride 1"):
        engine.conv2d(x, w, b, stride=2, groups=2)


def test_inputs_not_mutated():
    rng = np.random.default_rng(2)
    x, w, b = _data(rng, (2, 4, 7, 6), (4, 2, 3, 3), "float64", True)
    copies = [a.copy() for a in (x, w, b)]
    problem = _problem(x.shape, w.shape, padding=(2, 1, 0, 1), groups=2, dtype="float64", bias=True)
    execute = BACKEND.prepare(problem, w, b)
    y1 = execute(x)
    y2 = execute(x)
    for original, copy in zip((x, w, b), copies):
        np.testing.assert_array_equal(original, copy)
    np.testing.assert_array_equal(y1, y2)
    assert not np.shares_memory(y1, y2)
    # the prepared executor does not depend on later changes to the caller's weights
    w[...] = 0
    np.testing.assert_array_equal(execute(x), y1)


def test_empty_batch():
    problem = _problem((0, 3, 5, 5), (2, 3, 3, 3), padding=1)
    y = BACKEND.prepare(problem, np.ones((2, 3, 3, 3), np.float32), None)(np.zeros((0, 3, 5, 5), np.float32))
    assert y.shape == (0, 2, 5, 5)


class TestWinogradConformance(BackendConformance):
    """convengine's conformance kit: contract, course examples, reference, ONNX cases, engine, benchmark."""

    backend = WinogradBackend()


class TestWinograd4Conformance(BackendConformance):
    """The same kit for F(4x4, 3x3)."""

    backend = Winograd4Backend()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("x_shape, w_shape, padding, groups", [
    ((1, 64, 56, 56), (64, 64, 3, 3), (1, 1, 1, 1), 1),  # ResNet's first 3x3 layer
    ((1, 512, 7, 7), (512, 512, 3, 3), (1, 1, 1, 1), 1),  # its last: a 7x7 image is 2x2 F(4x4) tiles
    ((3, 6, 9, 13), (4, 3, 3, 3), (0, 2, 1, 0), 2),  # ragged tiles, asymmetric padding, groups
])
def test_f4_stays_within_its_error_bound(x_shape, w_shape, padding, groups, dtype):
    from convengine_winograd.winograd import F4, build_executor

    rng = np.random.default_rng(7)
    x, w, b = _data(rng, x_shape, w_shape, dtype, True)
    problem = _problem(x.shape, w.shape, padding=padding, groups=groups, dtype=dtype, bias=True)
    ref = conv2d_reference(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), padding=padding,
                           groups=groups)
    residual = rng.standard_normal(ref.shape).astype(dtype)
    y = build_executor(problem, w, b, relu=True, variant=F4)(x, residual)
    assert relative_error(y, np.maximum(ref + residual, 0)) <= F4_ERROR_BOUNDS[dtype]
    chunked = build_executor(problem, w, b, max_buffer_bytes=1, relu=True, variant=F4)(x, residual)
    np.testing.assert_array_equal(y, chunked)


def test_f4_is_predicted_slower_where_it_has_few_tiles():
    """The cost model keeps F(4x4) off small images at batch 1 (measured: 3.8 ms vs F(2x2)'s 1.9 ms at 7x7)."""
    from convengine.core.costmodel import MachineProfile

    machine = MachineProfile(2e11, 1e11, 3e10)
    problem = _problem((1, 512, 7, 7), (512, 512, 3, 3), padding=1)
    assert Winograd4Backend().estimate_seconds(problem, machine) > WinogradBackend().estimate_seconds(problem, machine)


def test_tuning_picks_winograd_only_when_fastest_and_within_budget(tmp_path):
    """Tuning measures winograd like any backend; the budget keeps it out; it wins only on its measured time."""
    problem_args = dict(x=(1, 64, 28, 28), w=(64, 64, 3, 3), padding=1)
    strict = ce.Engine(policy="tune", max_rel_error=1e-6, tuning_cache=False, tune_budget_s=0.3)
    decision = strict.explain(problem_args["x"], problem_args["w"], padding=1)
    row = decision.row("winograd")
    assert row.status == "excluded" and "accuracy" in row.reason and decision.chosen != "winograd"

    loose = ce.Engine(policy="tune", max_rel_error=1e-4, tuning_cache=False, tune_budget_s=0.3)
    decision = loose.explain(problem_args["x"], problem_args["w"], padding=1)
    measured = {c.name: c.measured_s for c in decision.candidates if c.measured_s is not None}
    assert "winograd" in measured  # admitted and measured
    assert decision.chosen == min(measured, key=measured.get)  # chosen iff fastest


@pytest.mark.parametrize("backend", [WinogradBackend(), Winograd4Backend()], ids=["F2", "F4"])
@pytest.mark.parametrize("where", ["input", "weight"])
def test_nan_and_inf_with_a_fused_epilogue_land_where_a_direct_convolution_puts_them(backend, where):
    """Issue 16 (9): the transforms spread a NaN over its tile (and Inf - Inf made NaN of an Inf);
    non-finite data now takes the exact path, the fused residual and ReLU included."""
    rng = np.random.default_rng(9)
    x, w, b = _data(rng, (2, 4, 9, 10), (6, 2, 3, 3), "float32", True)
    if where == "input":
        x[0, 1, 4, 4], x[1, 0, 0, 1], x[1, 1, 2, 2] = np.nan, np.inf, -np.inf
    else:
        w[0, 1, 1, 1], w[3, 0, 0, 1], w[5, 1, 2, 2] = np.nan, np.inf, -np.inf
    residual = rng.standard_normal((2, 6, 9, 10)).astype("float32")
    problem = _problem(x.shape, w.shape, padding=1, groups=2, bias=True)
    epilogue = ce.Epilogue(residual=True, activation="relu")
    with np.errstate(invalid="ignore", over="ignore"):
        y = backend.prepare(problem, w, b, epilogue=epilogue)(x, residual)
        expected = np.maximum(conv2d_reference(x, w, b, padding=(1, 1, 1, 1), groups=2) + residual, 0)
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(y), test(expected), err_msg=test.__name__)
    finite = np.isfinite(expected)
    assert 0 < finite.mean() < 1
    assert relative_error(y[finite], expected[finite]) <= backend.error_bound("float32")
