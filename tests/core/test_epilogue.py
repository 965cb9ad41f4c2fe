"""Fused epilogues: ``act(conv(x) + bias + residual)`` through the engine, fused or not, and in graphs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import make_plugin
from hypothesis import given, settings
from hypothesis import strategies as st

import convengine as ce
from convengine import Backend, Engine, Epilogue, PluginWarning
from convengine.core.epilogue import ACTIVATIONS
from convengine.core.registry import Registry
from convengine.graph import GraphBuilder
from convengine.graph.executor import CompiledGraph
from convengine.testing.conformance import tolerance
from convengine.testing.reference import activation_reference, conv2d_reference, relative_error

pytestmark = pytest.mark.usefixtures("isolated_env")

CPU_BACKENDS = [b.name for b in ce.list_backends() if b.available and b.device == "cpu"]


def _expected(x, w, b, residual, activation, **params):
    ref = conv2d_reference(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
                           params.get("stride", (1, 1)), params.get("padding", (0, 0, 0, 0)),
                           params.get("dilation", (1, 1)), params.get("groups", 1))
    if residual is not None:
        ref = ref + residual
    epilogue = Epilogue(activation=activation)
    return activation_reference(ref, epilogue.activation, epilogue.params)


def _pre_activation(x, w, b, residual, **params):
    return _expected(x, w, b, residual, None, **params)


#: Every activation, in each spelling's normal form, and parameterised ones.
ACTIVATION_CASES = [None, *ACTIVATIONS, ("clip", -1.0, 2.0), ("hardsigmoid", 1 / 6, 0.5)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_every_backend_computes_the_epilogue(backend, data):
    dtype = data.draw(st.sampled_from(["float32", "float64"]))
    groups = data.draw(st.sampled_from([1, 2, "depthwise"]))
    k = data.draw(st.sampled_from([1, 3]))
    stride = data.draw(st.sampled_from([1, 2]))
    n, h = data.draw(st.integers(1, 2)), data.draw(st.integers(3, 9))
    if groups == "depthwise":
        groups = c = o = data.draw(st.integers(2, 20))
    else:
        c, o = 2 * groups, 2 * groups
    with_residual = data.draw(st.booleans())
    activation = data.draw(st.sampled_from(ACTIVATION_CASES))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = rng.standard_normal((n, c, h, h)).astype(dtype)
    w = rng.standard_normal((o, c // groups, k, k)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype) if data.draw(st.booleans()) else None
    padding = k // 2
    out = (h + 2 * padding - k) // stride + 1
    r = rng.standard_normal((n, o, out, out)).astype(dtype) if with_residual else None
    problem = ce.ConvProblem.from_shapes(x.shape, w.shape, stride=stride, padding=padding, groups=groups, dtype=dtype)
    entry = ce.default_registry().get(backend)
    if entry.backend.supports(problem):
        return
    before = [a.copy() for a in (x, w, r) if a is not None]
    y = ce.conv2d(x, w, b, stride=stride, padding=padding, groups=groups, backend=backend, residual=r,
                  activation=activation)
    params = dict(stride=(stride, stride), padding=(padding,) * 4, groups=groups)
    ref = _expected(x, w, b, r, activation, **params)
    assert y.dtype == np.dtype(dtype) and y.shape == ref.shape
    # on the convolution's scale: an activation that squeezes the range passes its rounding on
    scale = np.max(np.abs(_pre_activation(x, w, b, r, **params)))
    assert np.max(np.abs(y - ref)) <= 2 * tolerance(entry.backend, dtype) * scale, activation
    for original, copy in zip([a for a in (x, w, r) if a is not None], before):
        np.testing.assert_array_equal(original, copy)  # the caller's arrays are never modified


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ACTIVATION_CASES[1:])
def test_the_unfused_activation_follows_the_onnx_definitions(activation, dtype):
    """``Epilogue.apply`` (the engine's path for backends that do not fuse) against the float64 reference,
    over a range with the saturating ends, zeros, NaN and infinities."""
    x = np.concatenate([np.linspace(-120, 120, 4001), [0.0, -0.0, np.nan, np.inf, -np.inf]]).astype(dtype)
    epilogue = Epilogue(activation=activation)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # overflow in exp(-x) is expected, not warned about
        y = epilogue.apply(x.copy(), None)
    ref = activation_reference(x, epilogue.activation, epilogue.params)
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    finite = ~np.isnan(ref)
    # GELU's ``1 + erf(x / sqrt(2))`` cancels for x below about -4 (as in the exported graph and in
    # ONNX Runtime): its tail, under one rounding of 1 in absolute terms, becomes 0 there.
    atol = (2e-7 if dtype == "float32" else 4e-16) if activation == "gelu" else 1e-30
    np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-6 if dtype == "float32" else 1e-14, atol=atol)


@pytest.mark.parametrize("spelling, normal", [
    ("relu6", ("clip", (0.0, 6.0))), (("clip", 0, 6), ("clip", (0.0, 6.0))), (("clip",), ("clip", (-np.inf, np.inf))),
    ("hardsigmoid", ("hardsigmoid", (0.2, 0.5))), (("hardsigmoid", 1 / 6), ("hardsigmoid", (1 / 6, 0.5))),
    ("silu", ("silu", ())),
])
def test_activation_spellings_normalise_to_one_epilogue(spelling, normal):
    epilogue = Epilogue(activation=spelling)
    assert (epilogue.activation, epilogue.params) == normal
    assert epilogue == Epilogue(activation=normal[0], params=normal[1])


@pytest.mark.parametrize("activation, match", [
    (("clip", 6, 0), "min .* must not exceed max"), (("relu", 1.0), "takes no parameters"),
    (("hardsigmoid", 1, 2, 3), "at most 2 parameters"), (("clip", "a", 1), "min must be a number"),
    (("clip", float("nan"), 1), "min must be a number"), ("swish", "activation must be one of"),
])
def test_bad_activation_parameters_name_the_parameter(activation, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Epilogue(activation=activation)


def test_unbatched_input_takes_an_unbatched_residual():
    rng = np.random.default_rng(0)
    x, w, r = rng.standard_normal((2, 5, 5)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal((3, 3, 3))
    y = ce.conv2d(x, w, residual=r, activation="relu", backend="naive")
    np.testing.assert_allclose(y, _expected(x[None], w, None, r[None], "relu")[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(residual=np.zeros((1, 2, 4, 4))), "residual must have the output's shape"),
    (dict(residual=np.zeros((1, 2, 3, 3), np.float32)), "residual dtype"),
    (dict(residual=np.zeros((1, 2, 3, 3), np.int64)), "residual must be a float32 or float64"),
    (dict(activation="gelu_tanh"), "activation must be one of"),
    (dict(activation=1), "activation must be one of"),
])
def test_bad_epilogue_arguments_name_the_parameter(kwargs, match):
    x, w = np.zeros((1, 1, 5, 5)), np.zeros((2, 1, 3, 3))
    with pytest.raises((ValueError, TypeError), match=match):
        ce.conv2d(x, w, **kwargs)


def test_prepared_residual_is_required_exactly_when_prepared_for():
    w = np.ones((2, 1, 3, 3))
    x = np.ones((1, 1, 5, 5))
    with_res = Engine("im2col").prepare(w, input_shape=x.shape, residual=True)
    with pytest.raises(ValueError, match="residual is required"):
        with_res(x)
    without = Engine("im2col").prepare(w, input_shape=x.shape, activation="relu")
    with pytest.raises(ValueError, match="prepared without one"):
        without(x, np.zeros((1, 2, 3, 3)))
    with pytest.raises(TypeError, match="residual must be True or False"):
        Engine("im2col").prepare(w, input_shape=x.shape, residual=np.zeros((1, 2, 3, 3)))
    # a different batch size than prepared: the residual follows the input's batch
    x3 = np.ones((3, 1, 5, 5))
    np.testing.assert_allclose(with_res(x3, np.full((3, 2, 3, 3), -9.0)), np.zeros((3, 2, 3, 3)))


def test_built_in_im2col_fuses_and_naive_leaves_it_to_the_engine():
    problem = ce.ConvProblem.from_shapes((1, 2, 5, 5), (2, 2, 3, 3))
    relu = Epilogue(residual=True, activation="relu")
    assert ce.default_registry().get("im2col").backend.supports_epilogue(problem, relu) is None
    assert ce.default_registry().get("naive").backend.supports_epilogue(problem, relu)
    prepared = Engine("im2col").prepare(np.ones((2, 2, 3, 3)), input_shape=(1, 2, 5, 5), residual=True,
                                        activation="relu")
    assert prepared.fused_for(1)
    assert not Engine("naive").prepare(np.ones((2, 2, 3, 3)), input_shape=(1, 2, 5, 5), activation="relu").fused_for(1)


class _FusesWrongly(Backend):
    """Claims to fuse, but forgets the residual: its output is wrong in value, not in shape."""

    name = "fuses-wrongly"

    def estimate_seconds(self, problem, machine):
        return 1e-9

    def supports_epilogue(self, problem, epilogue):
        return None

    def prepare(self, problem, weight, bias, epilogue=None):
        def execute(x, residual=None):
            return conv2d_reference(x, weight, bias, problem.stride, problem.padding, problem.dilation,
                                    problem.groups).astype(problem.dtype)

        return execute


class _FusionRaises(_FusesWrongly):
    name = "fusion-raises"

    def supports_epilogue(self, problem, epilogue):
        raise RuntimeError("boom")


def test_a_backend_whose_fusion_check_raises_is_excluded_and_the_call_retried():
    registry = Registry.load(extra_plugins=[make_plugin("bad", _FusionRaises())], load_entry_points=False)
    x, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = Engine(registry=registry).conv2d(x, w, residual=np.full((1, 1, 2, 2), -20.0), activation="relu")
    np.testing.assert_array_equal(y, np.zeros((1, 1, 2, 2)))
    assert any(issubclass(c.category, PluginWarning) and "fusion-raises" in str(c.message) for c in caught)


class _ReturnsItsInput(Backend):
    """Breaks the "new array" rule: a 1x1 identity-sized convolution that returns the input itself."""

    name = "returns-input"

    def estimate_seconds(self, problem, machine):
        return 1e-9

    def prepare(self, problem, weight, bias):
        return lambda x: x


def test_the_unfused_epilogue_never_writes_into_the_callers_input():
    registry = Registry.load(extra_plugins=[make_plugin("aliasing", _ReturnsItsInput())], load_entry_points=False)
    x = np.array([[[[-1.0, 2.0]]]])
    before = x.copy()
    y = Engine("returns-input", registry=registry).conv2d(x, np.ones((1, 1, 1, 1)), activation="relu")
    np.testing.assert_array_equal(y, [[[[0.0, 2.0]]]])
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("shape", [(1, 16, 7, 9, 3, 1), (2, 32, 6, 6, 1, 0)])  # (N, C, H, W, k, padding): tiles, 1x1
def test_a_consumed_residual_holds_the_output_and_an_unconsumed_one_is_untouched(shape):
    n, c, h, w_, k, pad = shape
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, c, h, w_)).astype(np.float32)
    w = rng.standard_normal((c, c, k, k)).astype(np.float32)
    prepared = Engine("direct").prepare(w, input_shape=x.shape, padding=pad, residual=True, activation="relu")
    residual = rng.standard_normal(x.shape).astype(np.float32)
    expected = _expected(x, w, None, residual, "relu", padding=(pad,) * 4)
    before = residual.copy()
    y = prepared(x, residual)
    np.testing.assert_array_equal(residual, before)
    y_consumed = prepared(x, residual, consume_residual=True)
    assert np.shares_memory(y_consumed, residual)
    for out in (y, y_consumed):
        assert relative_error(out, expected) < 1e-5


def test_backends_that_do_not_declare_it_never_write_over_a_consumed_residual():
    x = np.ones((1, 2, 5, 5), np.float32)
    residual = np.full((1, 2, 3, 3), 2.0, np.float32)
    y = Engine("im2col").prepare(np.ones((2, 2, 3, 3), np.float32), input_shape=x.shape, residual=True)(
        x, residual, consume_residual=True)
    np.testing.assert_array_equal(y, 20.0)
    np.testing.assert_array_equal(residual, 2.0)


class _InPlaceRaises(_FusesWrongly):
    """Declares it writes over the residual, then fails half-way: no other backend may redo the call."""

    name = "in-place-raises"
    residual_in_place = True

    def prepare(self, problem, weight, bias, epilogue=None):
        def execute(x, residual=None, in_place=False):
            if in_place:
                residual[...] = np.nan
                raise RuntimeError("boom")
            return np.zeros(problem.output_shape, x.dtype)

        return execute


def test_a_backend_failing_over_a_consumed_residual_raises_instead_of_retrying_on_clobbered_data():
    registry = Registry.load(extra_plugins=[make_plugin("bad", _InPlaceRaises())], load_entry_points=False)
    engine = Engine(["in-place-raises", "im2col"], registry=registry)
    prepared = engine.prepare(np.ones((1, 1, 1, 1)), input_shape=(1, 1, 2, 2), residual=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        with pytest.raises(ce.BackendError, match="writing over the residual"):
            prepared(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), consume_residual=True)
        # excluded: the next call goes to the next backend, and leaves its residual alone
        residual = np.ones((1, 1, 2, 2))
        np.testing.assert_array_equal(prepared(np.ones((1, 1, 2, 2)), residual, consume_residual=True), 2.0)
    np.testing.assert_array_equal(residual, 1.0)


@pytest.mark.parametrize("consume", [False, True])
def test_run_validated_computes_what_a_call_does(consume):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 16, 6, 6)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    prepared = Engine("direct").prepare(w, input_shape=x.shape, padding=1, residual=True, activation="relu")
    residual = rng.standard_normal(x.shape).astype(np.float32)
    expected = prepared(x, residual.copy())
    np.testing.assert_array_equal(prepared.run_validated(x, residual.copy(), consume_residual=consume), expected)


class _WrongShape(_FusesWrongly):
    """Fuses, and returns an output of the wrong shape: the engine must exclude it on every path."""

    name = "wrong-shape"

    def prepare(self, problem, weight, bias, epilogue=None):
        return lambda x, residual=None: np.zeros((1, 1, 1, 1), problem.dtype)


def test_run_validated_still_checks_the_output_and_retries_elsewhere():
    registry = Registry.load(extra_plugins=[make_plugin("bad", _WrongShape())], load_entry_points=False)
    prepared = Engine(["wrong-shape", "im2col"], registry=registry).prepare(
        np.ones((1, 1, 3, 3)), input_shape=(1, 1, 4, 4), activation="relu")
    assert prepared.backend == "wrong-shape"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = prepared.run_validated(np.ones((1, 1, 4, 4)))
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 2), 9.0))
    assert prepared.backend == "im2col"
    assert any(issubclass(c.category, PluginWarning) and "wrong-shape" in str(c.message) for c in caught)


def test_run_validated_validates_where_nothing_is_prepared_for_the_batch():
    prepared = Engine("im2col").prepare(np.ones((1, 1, 3, 3)), input_shape=(1, 1, 4, 4))
    with pytest.raises(ValueError, match="input must have shape"):
        prepared.run_validated(np.ones((2, 1, 5, 5)))


def test_fusing_backends_are_checked_by_the_conformance_kit():
    """The kit's epilogue test fails a backend that claims a fusion it does not do."""
    from convengine.testing import BackendConformance

    class Kit(BackendConformance):
        backend = _FusesWrongly()

    with pytest.raises(AssertionError, match="error"):
        Kit().test_epilogue_matches_reference(residual=True, activation=None)


# -- graphs -----------------------------------------------------------------------------------


def _block(shortcut_is_input=False):
    b = GraphBuilder("block", (4, 8, 8), seed=3)
    x = b.input.name
    y = b.relu(b.batchnorm(b.conv(x, 4, 3, padding=1, bias=False, name="conv1"), name="bn1"))
    y = b.batchnorm(b.conv(y, 4, 3, padding=1, bias=False, name="conv2"), name="bn2")
    shortcut = x if shortcut_is_input else b.conv(x, 4, 1, name="proj")
    return b, b.relu(b.add(y, shortcut))


@pytest.mark.parametrize("policy", ["im2col", "naive", "winograd", "direct"])
@pytest.mark.parametrize("shortcut_is_input", [False, True])
def test_graph_fusion_matches_the_unfused_graph(policy, shortcut_is_input):
    if policy not in CPU_BACKENDS:
        pytest.skip(f"{policy} not installed")
    b, out = _block(shortcut_is_input)
    graph = b.build(out)
    engine = Engine([policy, "im2col"])
    fused = CompiledGraph(graph, engine)
    plain = CompiledGraph(graph, engine, fuse_epilogues=False)
    assert fused.fused["conv1"] == "Relu"
    assert "Add+Relu" in fused.fused.values()
    assert len(fused.steps) == len(plain.steps) - 3
    # the projection's output is read by nothing after the Add: its memory may take conv2's output
    assert {s.node.name for s in fused.steps if s.consume_residual} == (set() if shortcut_is_input else {"conv2"})
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    before = x.copy()
    np.testing.assert_allclose(fused.run(x), plain.run(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(x, before)  # the graph input as shortcut is read, never written


def test_an_add_of_two_convolutions_is_absorbed_by_one_of_them():
    b, out = _block()
    fused = CompiledGraph(b.build(out), Engine("im2col"))
    assert sorted(fused.fused.values()) == ["Add+Relu", "Relu"]  # proj's output is conv2's residual


def test_outputs_that_are_read_elsewhere_are_not_fused():
    b = GraphBuilder("branches", (2, 6, 6), seed=1)
    c = b.conv(b.input.name, 2, 3, padding=1, name="c")
    graph = b.build([b.relu(c), c])  # the conv output is also a graph output: its ReLU cannot be folded in
    compiled = CompiledGraph(graph, Engine("im2col"))
    assert compiled.fused == {}
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float32)
    relu_out, conv_out = compiled.run(x).values()
    np.testing.assert_allclose(relu_out, np.maximum(conv_out, 0))


def test_a_broadcasting_add_is_not_a_residual():
    b = GraphBuilder("bias-add", (2, 6, 6), seed=1)
    c = b.conv(b.input.name, 2, 3, padding=1, name="c")
    graph = b.build(b.relu(b.add(c, b.param("shift", np.ones((1, 2, 1, 1), np.float32)))))
    compiled = CompiledGraph(graph, Engine("im2col"))
    assert compiled.fused == {}
    x = np.random.default_rng(0).standard_normal((1, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(compiled.run(x), CompiledGraph(graph, Engine("naive"), fuse_epilogues=False).run(x),
                               rtol=1e-5, atol=1e-5)


def test_scratch_buffers_are_reused_per_thread_and_purpose():
    import threading

    from convengine.runtime import workspace

    workspace.release()
    a = workspace.scratch("test.a", (4, 8), np.float32)
    b = workspace.scratch("test.a", (2, 3), np.float64)  # smaller: the same memory, reinterpreted
    assert np.shares_memory(a, b) and b.shape == (2, 3) and b.dtype == np.float64
    assert not np.shares_memory(a, workspace.scratch("test.b", (4, 8), np.float32))
    other = []
    thread = threading.Thread(target=lambda: other.append(workspace.scratch("test.a", (4, 8), np.float32)))
    thread.start()
    thread.join()
    assert not np.shares_memory(a, other[0])  # concurrent executors never share scratch
    assert workspace.held_bytes() >= 2 * 4 * 8 * 4
    workspace.release()
    assert workspace.held_bytes() == 0


def test_results_do_not_alias_scratch_across_calls():
    """Two calls of a backend that uses scratch return independent, correct outputs."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    x1, x2 = (rng.standard_normal((1, 3, 9, 9)).astype(np.float32) for _ in range(2))
    for backend in [n for n in ("im2col", "winograd") if n in CPU_BACKENDS]:
        y1 = ce.conv2d(x1, w, padding=1, backend=backend)
        y2 = ce.conv2d(x2, w, padding=1, backend=backend)
        for x, y in ((x1, y1), (x2, y2)):
            ref = conv2d_reference(x.astype(np.float64), w.astype(np.float64), None, (1, 1), (1, 1, 1, 1), (1, 1), 1)
            assert relative_error(y, ref) < 1e-5, backend


@pytest.mark.parametrize("backend, groups", [("direct", 1), ("grouped", 16), ("grouped", 8), ("im2col", 1)])
@pytest.mark.parametrize("activation", ["sigmoid", "silu", "hardswish", ("hardsigmoid", 0.2, 0.5), "relu6"])
def test_fused_activations_elementwise_over_their_whole_range(backend, groups, activation):
    """Each output exactly one input times one: the fused activation itself, element by element, from
    -120 to 120 (both saturations), zeros, NaN and infinities, against the float64 definition. Covers the
    vector path (direct's stores, grouped's depthwise tiles: 16 lanes, the reciprocal estimate on AVX-512)
    and the scalar one that LLVM vectorises (grouped's other tiles, im2col's finishing pass)."""
    # NaN and Inf only where an output reads nothing else: elsewhere a zero weight times them is NaN
    specials = [0.0, -0.0, np.nan, np.inf, -np.inf] if groups == 16 else [0.0, -0.0, 1e-30, -1e-30, 88.5]
    values = np.concatenate([np.linspace(-120, 120, 16 * 14 * 14 - 5), specials])
    x = values.astype(np.float32).reshape(1, 16, 14, 14)
    w = np.zeros((16, 16 // groups, 1, 1), np.float32)
    for o in range(16):
        w[o, o % (16 // groups), 0, 0] = 1.0  # output o is input o (its group's matching channel)
    y = ce.conv2d(x, w, groups=groups, backend=backend, activation=activation)
    epilogue = Epilogue(activation=activation)
    ref = activation_reference(x.astype(np.float64), epilogue.activation, epilogue.params)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    finite = ~np.isnan(ref)
    # relative to the output, and to the input where a hard activation's kink cancels digits
    # (hardswish at -3: x * (x/6 + 0.5)); 1e-35 where 1 + exp(-x) nears float32's range (x < -87)
    # and the reciprocal estimate (AVX-512) flushes sigmoid's subnormal 1e-39, and silu's -1e-37, to 0
    got, want, inputs = y[finite].astype(np.float64), ref[finite], x.astype(np.float64)[finite]
    infinite = np.isinf(want)
    np.testing.assert_array_equal(got[infinite], want[infinite])
    got, want, inputs = got[~infinite], want[~infinite], inputs[~infinite]
    bound = 4e-7 * np.abs(want) + 1e-7 * np.abs(inputs) + 1e-35
    assert np.all(np.abs(got - want) <= bound), np.max((np.abs(got - want) - bound))
