"""Dispatch: policies, the candidate filter, explain(), CONVENGINE_BACKEND, and misbehaving backends.

Throw-away backends come from throw-away plugins handed to ``Registry.load(extra_plugins=...,
load_entry_points=False)``; each test builds its own registry, so a backend excluded in one
test is never excluded in another.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conftest import make_plugin

import convengine
from convengine import EXACT, LOSSY, Backend, BackendError, BackendUnavailableError, Decision, Engine, PluginWarning, PreparedConv
from convengine.core.engine import ENV_BACKEND
from convengine.core.registry import Registry
from convengine.testing.reference import conv2d_reference, relative_error

X_SHAPE, W_SHAPE = (2, 3, 8, 8), (4, 3, 3, 3)


pytestmark = pytest.mark.usefixtures("isolated_env")


class FakeBackend(Backend):
    """A reference-based backend with a fixed estimate and optional misbehaviour."""

    def __init__(self, name, *, estimate=None, mode="ok", unavailable=None, unsupported=None,
                 numerical_class=EXACT):
        self.name = name
        self.estimate = estimate
        self.mode = mode
        self.unavailable = unavailable
        self.unsupported = unsupported  # callable(problem) -> reason or None
        self.numerical_class = numerical_class
        self.prepare_calls = 0
        self.execute_calls = 0

    def availability(self):
        return self.unavailable

    def supports(self, problem):
        return self.unsupported(problem) if self.unsupported else None

    def estimate_seconds(self, problem, machine):
        return self.estimate

    def prepare(self, problem, weight, bias):
        self.prepare_calls += 1
        if self.mode == "raise_prepare":
            raise RuntimeError("prepare exploded")
        w = weight.copy()
        b = None if bias is None else bias.copy()

        def execute(x):
            self.execute_calls += 1
            if self.mode == "raise_execute":
                raise RuntimeError("execute exploded")
            y = conv2d_reference(x, w, b, problem.stride, problem.padding, problem.dilation,
                                 problem.groups).astype(problem.dtype)
            if self.mode == "wrong_shape":
                return y.reshape(-1)
            if self.mode == "wrong_dtype":
                return y.astype("float64" if problem.dtype == "float32" else "float32")
            return y

        return execute


def registry_with(*backends):
    return Registry.load(extra_plugins=[make_plugin("testplugin", *backends)], load_entry_points=False)


def data(dtype="float32", x_shape=X_SHAPE, w_shape=W_SHAPE, bias=False, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    return x, w, b


def assert_matches_reference(y, x, w, b=None, rtol=1e-5, **params):
    ref = conv2d_reference(x, w, b, **params)
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert relative_error(y, ref) < rtol


def no_groups(problem):
    return "groups > 1 not supported" if problem.groups > 1 else None


# -- explicit backends ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["im2col", "fft"])
def test_explicit_backend_via_policy(name):
    registry = registry_with()
    engine = Engine(policy=name, registry=registry)
    x, w, b = data(bias=True)
    assert engine.explain(x, w, b, padding=1).chosen == name
    y = engine.conv2d(x, w, b, padding=1)
    assert_matches_reference(y, x, w, b, padding=(1, 1, 1, 1), rtol=1e-4)


def test_explicit_backend_via_argument_overrides_the_policy():
    cheap = FakeBackend("cheap", estimate=1e-9)
    engine = Engine(registry=registry_with(cheap))
    x, w, _ = data()
    assert engine.explain(x, w).chosen == "cheap"
    decision = engine.explain(x, w, backend="im2col")
    assert decision.chosen == "im2col"
    assert decision.row("im2col").reason == "backend= argument"
    y = engine.conv2d(x, w, backend="im2col")
    assert_matches_reference(y, x, w)
    assert cheap.execute_calls == 0


def test_unknown_backend_name_is_a_value_error_naming_it():
    registry = registry_with()
    x, w, _ = data()
    with pytest.raises(ValueError, match="no-such-backend"):
        Engine(policy="no-such-backend", registry=registry).conv2d(x, w)
    with pytest.raises(ValueError, match="no-such-backend"):
        Engine(registry=registry).conv2d(x, w, backend="no-such-backend")
    with pytest.raises(ValueError, match="no-such-backend"):
        Engine(policy=["im2col", "no-such-backend"], registry=registry).explain(X_SHAPE, W_SHAPE)
    # the message helps: it lists what is registered
    with pytest.raises(ValueError, match="im2col"):
        Engine(registry=registry).explain(X_SHAPE, W_SHAPE, backend="no-such-backend")


def test_explicit_backend_that_cannot_run_the_problem_says_why():
    registry = registry_with(FakeBackend("flat", unsupported=no_groups))
    with pytest.raises(BackendUnavailableError, match="flat.*groups > 1 not supported"):
        Engine(policy="flat", registry=registry).explain((1, 4, 6, 6), (4, 2, 3, 3), groups=2)


# -- preference lists -------------------------------------------------------------------------


def test_preference_list_falls_back_past_unavailable_and_unsupported():
    registry = registry_with(FakeBackend("gone", unavailable="needs a TPU"), FakeBackend("flat", unsupported=no_groups))
    engine = Engine(policy=["gone", "flat", "im2col", "naive"], registry=registry)
    x, w, _ = data(x_shape=(1, 4, 6, 6), w_shape=(4, 2, 3, 3))
    decision = engine.explain(x, w, groups=2)
    assert decision.chosen == "im2col"
    assert decision.policy == "prefer gone > flat > im2col > naive"
    assert decision.row("gone").status == "excluded" and "needs a TPU" in decision.row("gone").reason
    assert decision.row("flat").status == "excluded" and "groups > 1 not supported" in decision.row("flat").reason
    assert decision.row("naive").status == "candidate" and decision.row("naive").reason == "lower preference"
    assert decision.row("fft").reason == "not in the preference list"
    report = str(decision)
    assert "chosen:  im2col" in report
    assert "not available: needs a TPU" in report
    assert "unsupported: groups > 1 not supported" in report
    assert_matches_reference(engine.conv2d(x, w, groups=2), x, w, groups=2)
    # the same engine, a problem 'flat' supports: now it is first eligible
    assert engine.explain((1, 4, 6, 6), (4, 4, 3, 3)).chosen == "flat"


def test_preference_list_with_none_eligible_lists_every_reason():
    registry = registry_with(FakeBackend("gone", unavailable="needs a TPU"), FakeBackend("flat", unsupported=no_groups))
    engine = Engine(policy=["gone", "flat"], registry=registry)
    with pytest.raises(BackendUnavailableError) as info:
        engine.explain((1, 4, 6, 6), (4, 2, 3, 3), groups=2)
    message = str(info.value)
    assert "gone: not available: needs a TPU" in message
    assert "flat: unsupported: groups > 1 not supported" in message
    assert "im2col" not in message  # only the backends the policy allows
    assert isinstance(info.value, ValueError)


# -- accuracy budget --------------------------------------------------------------------------


def test_tight_budget_never_picks_fft():
    registry = registry_with()
    engine = Engine(max_rel_error=1e-6, registry=registry)
    # a large-kernel problem where fft is the cheapest without a budget
    shapes = [((1, 8, 64, 64), (8, 8, 15, 15)), (X_SHAPE, W_SHAPE), ((4, 16, 32, 32), (16, 16, 9, 9))]
    for x_shape, w_shape in shapes:
        decision = engine.explain(x_shape, w_shape)
        assert decision.chosen != "fft"
        row = decision.row("fft")
        assert row.status == "excluded"
        assert row.reason.startswith("accuracy:") and "1e-04" in row.reason and "max_rel_error=1e-06" in row.reason
        assert "accuracy: lossy backend" in str(decision)
        # exact backends sit exactly at the float32 bound and are admitted
        assert decision.row("im2col").status != "excluded"
    with pytest.raises(BackendUnavailableError, match="accuracy"):
        engine.explain(X_SHAPE, W_SHAPE, backend="fft")


def test_loose_budget_admits_fft():
    registry = registry_with()
    decision = Engine(max_rel_error=1e-3, registry=registry).explain((1, 8, 64, 64), (8, 8, 15, 15))
    assert decision.row("fft").status != "excluded"
    assert decision.row("fft").predicted_s is not None
    x, w, _ = data(x_shape=(1, 2, 12, 12), w_shape=(2, 2, 5, 5))
    y = Engine(policy="fft", max_rel_error=1e-3, registry=registry).conv2d(x, w)
    assert_matches_reference(y, x, w, rtol=1e-3)


def test_budget_follows_the_dtype():
    registry = registry_with(FakeBackend("lossy-fake", numerical_class=LOSSY, estimate=1e-9))
    engine = Engine(max_rel_error=1e-12, registry=registry)
    decision = engine.explain((1, 3, 8, 8), (4, 3, 3, 3), dtype="float64")
    assert decision.problem.dtype == "float64"
    for exact in ("naive", "im2col"):
        assert decision.row(exact).status != "excluded", decision.row(exact).reason
    for lossy in ("fft", "lossy-fake"):
        assert decision.row(lossy).status == "excluded" and "accuracy" in decision.row(lossy).reason
    assert decision.row(decision.chosen).numerical_class == EXACT  # naive or im2col here; cuda on a GPU machine
    x, w, _ = data("float64")
    assert_matches_reference(engine.conv2d(x, w), x, w, rtol=1e-12)
    # the same budget excludes everything for float32: exact float32 is only good to 1e-6
    with pytest.raises(BackendUnavailableError, match="accuracy"):
        engine.explain((1, 3, 8, 8), (4, 3, 3, 3), dtype="float32")


# -- "auto" -----------------------------------------------------------------------------------


def test_auto_picks_the_lowest_estimate_and_reports_predictions():
    cheap = FakeBackend("cheap", estimate=1e-9, unsupported=no_groups)
    general = FakeBackend("general", estimate=3e-9)  # supports everything
    engine = Engine(registry=registry_with(cheap, general))
    decision = engine.explain(X_SHAPE, W_SHAPE)
    assert decision.policy == "auto"
    assert decision.chosen == "cheap"
    assert decision.row("cheap").predicted_s == pytest.approx(1e-9)
    assert decision.row("general").predicted_s == pytest.approx(3e-9)
    assert decision.row("general").reason == "predicted 3x slower"
    assert decision.row("cheap").reason == "lowest predicted time"
    assert decision.row("im2col").predicted_s > 3e-9  # the built-ins predict too
    report = str(decision)
    assert "predicted" in report and "1 ns" in report and "3 ns" in report
    assert any(note.startswith("cost model inputs:") for note in decision.notes)
    # a problem 'cheap' cannot run goes to the next estimate
    grouped = engine.explain((1, 4, 6, 6), (4, 2, 3, 3), groups=2)
    assert grouped.chosen == "general"
    assert grouped.row("cheap").status == "excluded"
    x, w, _ = data()
    assert_matches_reference(engine.conv2d(x, w), x, w)
    assert cheap.execute_calls == 1 and general.execute_calls == 0


@pytest.mark.parametrize("lossy_estimate,chosen", [(0.9e-9, "exact"), (0.8e-9, "lossy")])
def test_auto_asks_a_lossy_backend_to_be_faster_by_a_margin(lossy_estimate, chosen):
    from convengine.core.selection import LOSSY_MARGIN

    assert 0.8 < 1 - LOSSY_MARGIN < 0.9  # the two cases straddle the margin
    exact = FakeBackend("exact", estimate=1e-9)
    lossy = FakeBackend("lossy", estimate=lossy_estimate, numerical_class=LOSSY)
    decision = Engine(registry=registry_with(exact, lossy)).explain(X_SHAPE, W_SHAPE)
    assert decision.chosen == chosen
    assert "lossy" in decision.row(chosen).reason
    if chosen == "exact":  # the loser is told why, not "predicted 0.9x slower"
        assert decision.row("lossy").reason.startswith("predicted 1.1x faster, but a lossy backend must be")


def test_auto_ranks_backends_without_an_estimate_last():
    engine = Engine(registry=registry_with(FakeBackend("silent", estimate=None)))
    decision = engine.explain(X_SHAPE, W_SHAPE)
    assert decision.chosen != "silent"
    assert decision.row("silent").reason == "no estimate"


class _EstimateRaises(FakeBackend):
    def estimate_seconds(self, problem, machine):
        raise RuntimeError("cost model broke")


class _ErrorBoundRaises(FakeBackend):
    def error_bound(self, dtype):
        raise KeyError(dtype)


def only(registry, *keep):
    """Mark every other backend broken, so that a policy decides among ``keep`` alone."""
    with pytest.warns(PluginWarning):
        for name in registry.names():
            if name not in keep:
                registry.mark_broken(name, "excluded by the test")
    return registry


def test_auto_ranks_a_backend_whose_estimate_raises_last_with_the_reason():
    engine = Engine(registry=registry_with(_EstimateRaises("broken-model", estimate=1e-12)))
    decision = engine.explain(X_SHAPE, W_SHAPE)
    assert decision.chosen != "broken-model"
    row = decision.row("broken-model")
    assert row.predicted_s is None
    assert row.reason == "estimate_seconds() raised RuntimeError: cost model broke"
    x, w, _ = data()
    assert_matches_reference(engine.conv2d(x, w), x, w)


def test_estimate_seconds_raising_is_reported_with_a_plugin_warning():
    engine = Engine(registry=registry_with(_EstimateRaises("broken-model", estimate=1e-12)))
    with pytest.warns(PluginWarning, match="broken-model"):
        engine.explain(X_SHAPE, W_SHAPE)


def test_auto_is_not_fooled_by_a_nan_estimate():
    registry = only(registry_with(FakeBackend("nan-model", estimate=float("nan")), FakeBackend("cheap", estimate=1e-9)),
                    "nan-model", "cheap")
    decision = Engine(registry=registry).explain(X_SHAPE, W_SHAPE)
    assert decision.chosen == "cheap", str(decision)


def test_nan_estimate_with_builtins_present_still_gives_a_correct_result():
    registry = registry_with(FakeBackend("nan-model", estimate=float("nan")), FakeBackend("cheap", estimate=1e-9))
    x, w, _ = data()
    assert_matches_reference(Engine(registry=registry).conv2d(x, w), x, w)


def test_error_bound_raising_excludes_the_backend_under_a_budget():
    registry = registry_with(_ErrorBoundRaises("no-bound", estimate=1e-12))
    assert Engine(registry=registry).explain(X_SHAPE, W_SHAPE).chosen == "no-bound"  # no budget: not asked
    decision = Engine(max_rel_error=1e-3, registry=registry).explain(X_SHAPE, W_SHAPE)
    row = decision.row("no-bound")
    assert row.status == "excluded" and row.reason.startswith("error_bound() raised KeyError")
    assert decision.chosen != "no-bound"


class _DeviceProbeRaises(FakeBackend):
    """Probes its device lazily, as a property (the torch plugin does the same, guarded)."""

    @property
    def device(self):
        raise RuntimeError("driver probe failed")


def test_backend_whose_device_property_raises_does_not_take_the_engine_down():
    registry = registry_with(_DeviceProbeRaises("lazy-device", estimate=1e-9))
    x, w, _ = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        y = Engine(registry=registry).conv2d(x, w)  # RuntimeError today
    assert_matches_reference(y, x, w)


# -- explain ----------------------------------------------------------------------------------


def test_explain_accepts_shapes_and_arrays():
    engine = Engine(registry=registry_with())
    from_shapes = engine.explain(X_SHAPE, W_SHAPE, padding=1)
    x, w, b = data(bias=True)
    from_arrays = engine.explain(x, w, b, padding=1)
    from_lists = engine.explain(list(X_SHAPE), list(W_SHAPE), padding=1)
    for decision in (from_shapes, from_arrays, from_lists):
        assert isinstance(decision, Decision)
        assert isinstance(decision.chosen, str) and decision.chosen in engine.registry.names()
        assert decision.problem.input_shape == X_SHAPE and decision.problem.output_shape == (2, 4, 8, 8)
        assert "chosen:  " + decision.chosen in str(decision)
    assert from_arrays.problem.has_bias and not from_shapes.problem.has_bias
    assert from_shapes.problem.dtype == "float32"
    assert engine.explain(X_SHAPE, W_SHAPE, dtype=np.float64).problem.dtype == "float64"
    assert engine.explain(x.astype("float64"), w.astype("float64")).problem.dtype == "float64"
    # every registered backend has a row
    assert {c.name for c in from_shapes.candidates} >= set(engine.registry.names())


def test_module_level_explain_and_list_backends(monkeypatch):
    registry = registry_with(FakeBackend("cheap", estimate=1e-9))
    monkeypatch.setattr(convengine.core.registry, "_default_registry", registry)
    monkeypatch.setattr(convengine.core.engine, "_default_engine", None)
    assert convengine.explain(X_SHAPE, W_SHAPE).chosen == "cheap"
    assert "cheap" in {info.name for info in convengine.list_backends()}


# -- CONVENGINE_BACKEND -----------------------------------------------------------------------


def test_env_backend_forces_a_backend(monkeypatch):
    monkeypatch.setenv(ENV_BACKEND, "im2col")
    registry = registry_with(FakeBackend("cheap", estimate=1e-9))
    for engine, kwargs in [(Engine(registry=registry), {}), (Engine(policy="fft", registry=registry), {}),
                           (Engine(policy=["cheap"], registry=registry), {}),
                           (Engine(registry=registry), {"backend": "cheap"})]:
        decision = engine.explain(X_SHAPE, W_SHAPE, **kwargs)
        assert decision.chosen == "im2col"
        assert any(ENV_BACKEND in note for note in decision.notes)
    x, w, _ = data()
    assert_matches_reference(Engine(policy="fft", registry=registry).conv2d(x, w, backend="cheap"), x, w)
    assert registry.get("cheap").backend.execute_calls == 0


def test_env_backend_unknown_name_is_a_clear_value_error(monkeypatch):
    monkeypatch.setenv(ENV_BACKEND, "not-a-backend")
    engine = Engine(registry=registry_with())
    with pytest.raises(ValueError, match=r"not-a-backend.*CONVENGINE_BACKEND"):
        engine.explain(X_SHAPE, W_SHAPE)
    x, w, _ = data()
    with pytest.raises(ValueError, match="CONVENGINE_BACKEND"):
        engine.conv2d(x, w)


def test_env_backend_empty_means_not_set(monkeypatch):
    monkeypatch.setenv(ENV_BACKEND, "")
    engine = Engine(registry=registry_with(FakeBackend("cheap", estimate=1e-9)))
    assert engine.explain(X_SHAPE, W_SHAPE).chosen == "cheap"


def test_env_backend_set_after_a_decision_is_consistent(monkeypatch):
    registry = registry_with(FakeBackend("bad", estimate=1e-12, mode="wrong_shape"))
    engine = Engine(registry=registry)
    x, w, _ = data()
    assert engine.explain(x, w).chosen == "bad"  # decided (and cached) before the variable is set
    monkeypatch.setenv(ENV_BACKEND, "im2col")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        y = engine.conv2d(x, w)  # BackendError today
    assert_matches_reference(y, x, w)


# -- misbehaving backends ---------------------------------------------------------------------

MISBEHAVIOURS = {
    "wrong_shape": "returned ndarray",
    "wrong_dtype": "returned ndarray",
    "raise_execute": "execute\\(\\) raised RuntimeError: execute exploded",
    "raise_prepare": "prepare\\(\\) raised RuntimeError: prepare exploded",
}


@pytest.mark.parametrize("mode", list(MISBEHAVIOURS))
def test_auto_survives_a_misbehaving_cheapest_backend(mode):
    bad = FakeBackend("bad", estimate=1e-12, mode=mode)
    registry = registry_with(bad)
    engine = Engine(registry=registry)
    x, w, b = data(bias=True)
    assert engine.explain(x, w, b, padding=1).chosen == "bad"
    with pytest.warns(PluginWarning, match="'bad'.*" + MISBEHAVIOURS[mode]):
        y = engine.conv2d(x, w, b, padding=1)
    assert_matches_reference(y, x, w, b, padding=(1, 1, 1, 1), rtol=1e-4)  # wrong output never returned
    entry = registry.get("bad")
    assert not entry.available
    assert entry.unavailable_reason is not None
    assert entry.unavailable_reason.startswith(("returned", "execute() raised", "prepare() raised"))
    # excluded from now on, with the reason, for this and other problems, and other engines on the registry
    decision = engine.explain(x, w, b, padding=1)
    assert decision.chosen != "bad"
    assert decision.row("bad").status == "excluded"
    assert entry.unavailable_reason in decision.row("bad").reason
    assert Engine(registry=registry).explain((1, 1, 5, 5), (1, 1, 2, 2)).chosen != "bad"
    calls = bad.prepare_calls + bad.execute_calls
    y2 = engine.conv2d(x[:1], w, b, padding=1)
    assert_matches_reference(y2, x[:1], w, b, padding=(1, 1, 1, 1), rtol=1e-4)
    assert bad.prepare_calls + bad.execute_calls == calls


@pytest.mark.parametrize("mode", list(MISBEHAVIOURS))
def test_explicit_misbehaving_backend_raises_backend_error(mode):
    registry = registry_with(FakeBackend("bad", estimate=1e-12, mode=mode))
    x, w, _ = data()
    with pytest.warns(PluginWarning):
        with pytest.raises(BackendError, match="'bad' failed: " + MISBEHAVIOURS[mode]):
            Engine(registry=registry).conv2d(x, w, backend="bad")
    assert not registry.get("bad").available


@pytest.mark.parametrize("mode", ["wrong_dtype", "raise_execute"])
def test_explicit_by_policy_or_env_raises_backend_error(mode, monkeypatch):
    x, w, _ = data()
    with pytest.warns(PluginWarning), pytest.raises(BackendError):
        Engine(policy="bad", registry=registry_with(FakeBackend("bad", mode=mode))).conv2d(x, w)
    monkeypatch.setenv(ENV_BACKEND, "bad")
    with pytest.warns(PluginWarning), pytest.raises(BackendError):
        Engine(registry=registry_with(FakeBackend("bad", mode=mode))).conv2d(x, w)


def test_preference_list_falls_back_past_a_misbehaving_backend():
    registry = registry_with(FakeBackend("bad", mode="wrong_shape"))
    engine = Engine(policy=["bad", "im2col"], registry=registry)
    x, w, _ = data()
    with pytest.warns(PluginWarning, match="bad"):
        y = engine.conv2d(x, w)
    assert_matches_reference(y, x, w)
    assert engine.explain(x, w).chosen == "im2col"


def test_prepared_conv_falls_back_past_a_misbehaving_backend():
    bad = FakeBackend("bad", estimate=1e-12, mode="raise_execute")
    engine = Engine(registry=registry_with(bad))
    x, w, _ = data()
    prepared = engine.prepare(w, input_shape=x.shape, padding=1)
    assert prepared.backend == "bad"
    with pytest.warns(PluginWarning, match="execute exploded"):
        y = prepared(x)
    assert_matches_reference(y, x, w, padding=(1, 1, 1, 1))
    assert prepared.backend != "bad"
    assert_matches_reference(prepared(x), x, w, padding=(1, 1, 1, 1))


# -- Engine.prepare ---------------------------------------------------------------------------


def test_prepare_returns_a_callable_for_any_batch_size():
    engine = Engine(registry=registry_with())
    _, w, b = data(bias=True)
    prepared = engine.prepare(w, b, input_shape=(4, 3, 8, 8), stride=2, padding=1)
    assert isinstance(prepared, PreparedConv)
    assert prepared.backend in engine.registry.names()
    for batch in (4, 1, 3, 7):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype("float32")
        y = prepared(x)
        assert y.shape == (batch, 4, 4, 4)
        assert_matches_reference(y, x, w, b, stride=(2, 2), padding=(1, 1, 1, 1), rtol=1e-4)
    assert prepared(np.empty((0, 3, 8, 8), "float32")).shape == (0, 4, 4, 4)
    with pytest.raises(ValueError, match="input must have shape"):
        prepared(np.zeros((1, 3, 9, 8), "float32"))
    with pytest.raises(TypeError, match="dtype"):
        prepared(np.zeros((1, 3, 8, 8), "float64"))


def test_prepare_keeps_its_own_copy_of_the_weights():
    engine = Engine(registry=registry_with())
    x, w, _ = data()
    prepared = engine.prepare(w, input_shape=x.shape)
    expected = conv2d_reference(x, w)
    w[:] = 0
    assert relative_error(prepared(x), expected) < 1e-5


def test_prepare_with_an_explicit_backend_surfaces_errors_early():
    registry = registry_with(FakeBackend("bad", mode="raise_prepare"))
    _, w, _ = data()
    with pytest.warns(PluginWarning), pytest.raises(BackendError, match="prepare exploded"):
        Engine(registry=registry).prepare(w, input_shape=X_SHAPE, backend="bad")


# -- Engine argument validation ---------------------------------------------------------------


@pytest.mark.parametrize("policy", ["", [], (), ["im2col", ""], ["im2col", 3], None, 5])
def test_engine_rejects_a_bad_policy(policy):
    with pytest.raises(ValueError, match="policy"):
        Engine(policy=policy)


@pytest.mark.parametrize("value", [0, -1e-3, "1e-3", float("nan")])
def test_engine_rejects_a_bad_max_rel_error(value):
    with pytest.raises(ValueError, match="max_rel_error"):
        Engine(max_rel_error=value)


@pytest.mark.parametrize("value", [0, -1, None, "1", float("nan")])
def test_engine_rejects_a_bad_tune_budget(value):
    with pytest.raises(ValueError, match="tune_budget_s"):
        Engine(tune_budget_s=value)


def test_engine_accepts_valid_arguments():
    engine = Engine(policy=["im2col", "naive"], max_rel_error=1e-5, tune_budget_s=0.5)
    assert engine.policy == ("im2col", "naive")
    assert engine.max_rel_error == 1e-5 and engine.tune_budget_s == 0.5
    assert Engine(max_rel_error=None).max_rel_error is None
    assert Engine(policy="tune").policy == "tune"


# -- one exception family for "the backend I named cannot run this" (issue 16, point 4) -------


def test_every_way_a_named_backend_cannot_run_is_a_backend_error_with_its_reason():
    """Declined, unavailable, failed: one base class, the reason in the message and in ``.reason``.

    Before, a decline was a ValueError subclass, a first failure a RuntimeError subclass with no
    common base, and an unregistered name a plain ValueError.
    """
    registry = registry_with(FakeBackend("flat", unsupported=no_groups), FakeBackend("gone", unavailable="needs a TPU"),
                             FakeBackend("bad", mode="raise_prepare"))
    x, w, _ = data(x_shape=(1, 4, 6, 6), w_shape=(4, 2, 3, 3))
    engine = Engine(registry=registry)
    cases = [
        ("flat", convengine.BackendDeclinedError, "groups > 1 not supported"),
        ("gone", convengine.BackendUnavailableError, "not available: needs a TPU"),
        ("bad", convengine.BackendFailedError, "prepare() raised RuntimeError: prepare exploded"),
        ("bad", convengine.BackendUnavailableError, "prepare() raised RuntimeError: prepare exploded"),  # a repeat call
        ("nope", convengine.BackendUnavailableError, "no registered backend has this name"),
    ]
    for name, kind, reason in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PluginWarning)
            with pytest.raises(BackendError) as info:
                engine.conv2d(x, w, groups=2, backend=name)
        error = info.value
        assert type(error) is kind, (name, type(error), error)
        assert error.backend == name and reason in error.reason and reason in str(error), (name, str(error))
    # the old names keep catching what they caught: declines are unavailable "for this problem", both ValueErrors
    assert issubclass(convengine.BackendDeclinedError, convengine.BackendUnavailableError)
    assert issubclass(convengine.BackendUnavailableError, ValueError)
    assert issubclass(convengine.BackendFailedError, RuntimeError) and issubclass(BackendError, RuntimeError)
    with pytest.raises(BackendUnavailableError, match="no backend can run"):
        Engine(policy=["flat", "gone"], registry=registry).conv2d(x, w, groups=2)


def test_plugin_warnings_point_at_the_callers_line():
    """Issue 16 (6): the warning about a misbehaving backend names the caller's file and line,
    not convengine's engine.py or registry.py, however deep the call went."""
    registry = registry_with(FakeBackend("bad", estimate=1e-12, mode="raise_execute"))
    x, w, _ = data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = Engine(registry=registry).conv2d(x, w)  # the line every warning must point at
    assert_matches_reference(y, x, w)
    plugin_warnings = [c for c in caught if issubclass(c.category, PluginWarning)]
    assert plugin_warnings and "execute exploded" in str(plugin_warnings[0].message)
    assert {(c.filename, c.lineno) for c in plugin_warnings} == {(__file__, y_line())}


def y_line() -> int:
    """The line of ``y = Engine(registry=registry).conv2d(x, w)`` in the test above."""
    import inspect

    source, first = inspect.getsourcelines(test_plugin_warnings_point_at_the_callers_line)
    return first + next(i for i, line in enumerate(source) if "the line every warning must point at" in line)
