"""The "tune" policy: measure every eligible backend, keep the fastest, persist it per machine.

``Registry.load`` always registers the built-ins, so each test marks them broken
(``Registry.mark_broken``) and tunes among throw-away backends whose ``execute`` sleeps a
fixed time: the ranking is then known in advance and independent of this machine's speed.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import time
import warnings

import numpy as np
import pytest
from conftest import make_plugin

from convengine import Backend, BackendUnavailableError, Engine, PluginWarning
from convengine.core.registry import Registry
from convengine.core.tuning import tuning_key
from convengine.core.tuning_cache import TuningCache, TuningCacheWarning
from convengine.testing.reference import conv2d_reference

X_SHAPE, W_SHAPE = (1, 2, 5, 5), (2, 2, 3, 3)


pytestmark = pytest.mark.usefixtures("isolated_env")


class SleepyBackend(Backend):
    """Correct output after sleeping ``delay`` seconds; counts its calls; may fail on purpose."""

    def __init__(self, name, delay, *, version="1", mode="ok"):
        self.name = name
        self.delay = delay
        self.version = version
        self.mode = mode
        self.prepare_calls = 0
        self.execute_calls = 0

    def prepare(self, problem, weight, bias):
        self.prepare_calls += 1
        if self.mode == "raise_prepare":
            raise RuntimeError("cannot prepare here")
        w = weight.copy()
        b = None if bias is None else bias.copy()

        def execute(x):
            self.execute_calls += 1
            time.sleep(self.delay)
            if self.mode == "raise_execute":
                raise RuntimeError("kernel launch failed")
            y = conv2d_reference(x, w, b, problem.stride, problem.padding, problem.dilation,
                                 problem.groups).astype(problem.dtype)
            return y[:, :1] if self.mode == "wrong_shape" else y

        return execute

    @property
    def calls(self):
        return self.prepare_calls + self.execute_calls


def fakes_only(*backends):
    """A registry in which only ``backends`` are usable (the built-ins are marked broken)."""
    registry = Registry.load(extra_plugins=[make_plugin("tuneplugin", *backends)], load_entry_points=False)
    keep = {b.name for b in backends}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        for name in registry.names():
            if name not in keep:
                registry.mark_broken(name, "excluded by the test")
    return registry


def tune_engine(registry, cache, budget=0.1):
    return Engine(policy="tune", tuning_cache=cache, tune_budget_s=budget, registry=registry)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(X_SHAPE).astype("float32"), rng.standard_normal(W_SHAPE).astype("float32")


# -- measuring and choosing -------------------------------------------------------------------


def test_tune_measures_every_candidate_and_picks_the_fastest(tmp_path):
    fast, slow = SleepyBackend("fast", 0.001), SleepyBackend("slow", 0.02)
    registry = fakes_only(slow, fast)  # the slow one registers first: order must not matter
    decision = tune_engine(registry, tmp_path / "tuning.json").explain(X_SHAPE, W_SHAPE)
    assert decision.policy == "tune"
    assert decision.chosen == "fast"
    assert decision.eligible == ["slow", "fast"]
    fast_s, slow_s = decision.row("fast").measured_s, decision.row("slow").measured_s
    assert fast_s is not None and slow_s is not None
    assert 0.001 <= fast_s < slow_s and slow_s >= 0.02
    assert decision.row("fast").reason == "fastest measured"
    assert decision.row("slow").reason.startswith("measured") and "slower" in decision.row("slow").reason
    assert fast.execute_calls >= 2 and slow.execute_calls >= 2  # a checked run plus a warm-up, at least
    assert all(decision.row(n).measured_s is None for n in ("naive", "im2col", "fft", "cuda"))
    report = str(decision)
    assert "measured" in report and "ms" in report
    assert any("measured now" in note for note in decision.notes)


def test_tune_persists_and_a_second_engine_does_not_measure_again(tmp_path):
    path = tmp_path / "tuning.json"
    first = tune_engine(fakes_only(SleepyBackend("fast", 0.001), SleepyBackend("slow", 0.02)), path)
    decision = first.explain(X_SHAPE, W_SHAPE)
    assert decision.chosen == "fast"
    assert path.exists()

    # the file holds the decision, under an opaque key
    document = json.loads(path.read_text())
    records = [e["record"] for e in document["entries"].values() if "chosen" in e["record"]]
    assert len(records) == 1
    assert records[0]["chosen"] == "fast" and set(records[0]["times"]) == {"fast", "slow"}
    assert records[0]["problem"] == decision.problem.key()
    assert TuningCache(path).get(tuning_key(first, decision))["chosen"] == "fast"

    # a new engine (a new process would be the same) with fresh, identical backends: no measuring
    fast2, slow2 = SleepyBackend("fast", 0.001), SleepyBackend("slow", 0.02)
    second = tune_engine(fakes_only(fast2, slow2), TuningCache(path))
    again = second.explain(X_SHAPE, W_SHAPE)
    assert again.chosen == "fast"
    assert fast2.calls == 0 and slow2.calls == 0
    assert again.row("fast").reason == "fastest measured (tuning cache)"
    assert again.row("slow").measured_s == pytest.approx(records[0]["times"]["slow"])
    assert any(str(path) in note for note in again.notes)

    # and the convolution itself runs the cached choice once
    x, w = _data()
    y = second.conv2d(x, w)
    np.testing.assert_allclose(y, conv2d_reference(x, w), rtol=1e-5, atol=1e-5)
    assert (fast2.prepare_calls, fast2.execute_calls, slow2.calls) == (1, 1, 0)


def test_tune_on_an_engine_decides_once_per_problem(tmp_path):
    fast, slow = SleepyBackend("fast", 0.001), SleepyBackend("slow", 0.005)
    engine = tune_engine(fakes_only(fast, slow), tmp_path / "tuning.json")
    x, w = _data()
    engine.conv2d(x, w)
    executes, slow_calls = fast.execute_calls, slow.calls
    engine.conv2d(x, w)
    engine.explain(x, w)
    assert fast.execute_calls == executes + 1  # the call itself, no re-tuning
    assert slow.calls == slow_calls


def test_changed_backend_version_changes_the_key_and_retunes(tmp_path):
    path = tmp_path / "tuning.json"
    first = tune_engine(fakes_only(SleepyBackend("fast", 0.001), SleepyBackend("slow", 0.02)), path)
    d1 = first.explain(X_SHAPE, W_SHAPE)

    upgraded, slow2 = SleepyBackend("fast", 0.001, version="2"), SleepyBackend("slow", 0.02)
    second = tune_engine(fakes_only(upgraded, slow2), path)
    d2 = second.explain(X_SHAPE, W_SHAPE)
    assert tuning_key(first, d1) != tuning_key(second, d2)
    assert upgraded.calls > 0 and slow2.calls > 0  # measured again, both of them
    assert d2.chosen == "fast"
    assert len([e for e in json.loads(path.read_text())["entries"].values() if "chosen" in e["record"]]) == 2

    # a changed fingerprint beyond the version counts too
    class ExtraFingerprint(SleepyBackend):
        def fingerprint(self):
            return {"version": self.version, "device": "a different accelerator"}

    third_fast = ExtraFingerprint("fast", 0.001)
    tune_engine(fakes_only(third_fast, SleepyBackend("slow", 0.02)), path).explain(X_SHAPE, W_SHAPE)
    assert third_fast.calls > 0


def test_other_key_inputs_retune(tmp_path):
    path = tmp_path / "tuning.json"
    tune_engine(fakes_only(SleepyBackend("fast", 0.001), SleepyBackend("slow", 0.01)), path).explain(X_SHAPE, W_SHAPE)
    # another problem
    fast = SleepyBackend("fast", 0.001)
    engine = tune_engine(fakes_only(fast, SleepyBackend("slow", 0.01)), path)
    engine.explain(X_SHAPE, W_SHAPE, padding=1)
    assert fast.calls > 0
    # another set of candidates (a new plugin)
    fast = SleepyBackend("fast", 0.001)
    tune_engine(fakes_only(fast, SleepyBackend("slow", 0.01), SleepyBackend("new", 0.01)), path).explain(X_SHAPE, W_SHAPE)
    assert fast.calls > 0


def test_corrupt_cache_file_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "tuning.json"
    path.write_text('{"format": "convengine-tuning-cache", "version": 1, "entries": {"k": ')  # cut short
    fast, slow = SleepyBackend("fast", 0.001), SleepyBackend("slow", 0.01)
    engine = tune_engine(fakes_only(fast, slow), path)
    with pytest.warns(TuningCacheWarning, match="ignoring tuning cache"):
        decision = engine.explain(X_SHAPE, W_SHAPE)
    assert decision.chosen == "fast"
    assert fast.calls > 0 and slow.calls > 0
    # the bad file was moved aside, not destroyed, and a valid one written
    assert (tmp_path / "tuning.json.corrupt").read_text().endswith('"k": ')
    assert json.loads(path.read_text())["format"] == "convengine-tuning-cache"
    fast2 = SleepyBackend("fast", 0.001)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningCacheWarning)
        assert tune_engine(fakes_only(fast2, SleepyBackend("slow", 0.01)), path).explain(X_SHAPE, W_SHAPE).chosen == "fast"
    assert fast2.calls == 0


def test_unwritable_cache_location_still_tunes(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    fast = SleepyBackend("fast", 0.001)
    engine = tune_engine(fakes_only(fast, SleepyBackend("slow", 0.01)), blocker / "tuning.json")
    with pytest.warns(TuningCacheWarning):
        assert engine.explain(X_SHAPE, W_SHAPE).chosen == "fast"


def test_tuning_without_persistence(tmp_path):
    fast = SleepyBackend("fast", 0.001)
    decision = tune_engine(fakes_only(fast, SleepyBackend("slow", 0.01)), False).explain(X_SHAPE, W_SHAPE)
    assert decision.chosen == "fast"
    assert any("not persisted" in note for note in decision.notes)
    assert not (tmp_path / "cache").exists()


def test_default_cache_location_follows_the_env_var(tmp_path):
    decision = tune_engine(fakes_only(SleepyBackend("fast", 0.001), SleepyBackend("slow", 0.01)), None).explain(
        X_SHAPE, W_SHAPE)
    assert decision.chosen == "fast"
    assert (tmp_path / "cache" / "tuning.json").exists()


# -- budget -----------------------------------------------------------------------------------


def test_budget_is_respected_roughly(tmp_path):
    slow, fast = SleepyBackend("slow", 0.05), SleepyBackend("fast", 0.001)
    engine = tune_engine(fakes_only(slow, fast), tmp_path / "tuning.json", budget=0.2)
    start = time.perf_counter()
    decision = engine.explain(X_SHAPE, W_SHAPE)
    elapsed = time.perf_counter() - start
    assert decision.chosen == "fast"
    # 0.1 s each: one checked run, one warm-up, then about two timed runs of 50 ms
    assert 3 <= slow.execute_calls <= 6, slow.execute_calls
    assert slow.prepare_calls == 1
    assert elapsed < 2.0  # about 0.3 s; generous for a loaded machine
    # the fast one is capped by the run limit, not by the budget
    assert fast.execute_calls <= 20


def test_every_candidate_runs_at_least_once_even_over_budget(tmp_path):
    slow = SleepyBackend("slow", 0.06)
    decision = tune_engine(fakes_only(slow), tmp_path / "tuning.json", budget=0.001).explain(X_SHAPE, W_SHAPE)
    assert decision.chosen == "slow"
    assert decision.row("slow").measured_s >= 0.06
    assert slow.execute_calls == 3  # checked run, warm-up, one timed run


# -- backends failing while tuned -------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::convengine.PluginWarning")  # wrong_shape also marks it broken (tested below)
@pytest.mark.parametrize("mode, reason", [
    ("raise_execute", "failed while tuning: RuntimeError: kernel launch failed"),
    ("raise_prepare", "failed while tuning: RuntimeError: cannot prepare here"),
    ("wrong_shape", "failed while tuning: ValueError: returned ndarray"),
])
def test_backend_failing_during_tuning_is_excluded_and_another_chosen(tmp_path, mode, reason):
    bad, ok = SleepyBackend("bad", 0.0, mode=mode), SleepyBackend("ok", 0.002)
    engine = tune_engine(fakes_only(bad, ok), tmp_path / "tuning.json")
    decision = engine.explain(X_SHAPE, W_SHAPE)
    assert decision.chosen == "ok"
    row = decision.row("bad")
    assert row.status == "excluded" and row.reason.startswith(reason)
    assert row.measured_s is None
    assert reason.split(": ", 1)[1] in str(decision)
    x, w = _data()
    np.testing.assert_allclose(engine.conv2d(x, w), conv2d_reference(x, w), rtol=1e-5, atol=1e-5)
    # the cached record names only backends that were measured
    record = next(e["record"] for e in json.loads((tmp_path / "tuning.json").read_text())["entries"].values()
                  if "chosen" in e["record"])
    assert record["chosen"] == "ok" and set(record["times"]) == {"ok"}


def test_wrong_output_while_tuning_marks_the_backend_broken(tmp_path):
    registry = fakes_only(SleepyBackend("bad", 0.0, mode="wrong_shape"), SleepyBackend("ok", 0.001))
    with pytest.warns(PluginWarning, match="'bad'.*returned ndarray"):
        tune_engine(registry, tmp_path / "tuning.json").explain(X_SHAPE, W_SHAPE)
    assert registry.get("bad").unavailable_reason.startswith("returned ndarray")


@pytest.mark.parametrize("mode, reason", [
    ("raise_prepare", "prepare() raised RuntimeError: cannot prepare here (while tuning)"),
    ("raise_execute", "execute() raised RuntimeError: kernel launch failed (while tuning)"),
])
def test_backend_raising_while_tuned_is_excluded_for_the_process(tmp_path, monkeypatch, mode, reason):
    """Issue 16 (5): a wrong output excluded the backend, but a prepare() that raised left it listed as available."""
    import convengine

    registry = fakes_only(SleepyBackend("bad", 0.0, mode=mode), SleepyBackend("ok", 0.001))
    with pytest.warns(PluginWarning, match="'bad'.* excluded: " + re.escape(reason)):
        assert tune_engine(registry, tmp_path / "tuning.json").explain(X_SHAPE, W_SHAPE).chosen == "ok"
    monkeypatch.setattr(convengine.core.registry, "_default_registry", registry)
    info = {i.name: i for i in convengine.list_backends()}["bad"]
    assert not info.available and info.reason == reason
    # and a later "auto" decision does not consider it either
    assert Engine(registry=registry, tuning_cache=False).explain(X_SHAPE, W_SHAPE).row("bad").status == "excluded"


def test_tuning_with_every_candidate_failing_says_why(tmp_path):
    engine = tune_engine(fakes_only(SleepyBackend("bad", 0.0, mode="raise_execute")), tmp_path / "tuning.json")
    with pytest.raises(BackendUnavailableError, match="bad: failed while tuning: RuntimeError: kernel launch failed"):
        engine.explain(X_SHAPE, W_SHAPE)
    assert not (tmp_path / "tuning.json").exists()


def test_backend_argument_overrides_tune(tmp_path):
    fast, slow = SleepyBackend("fast", 0.001), SleepyBackend("slow", 0.01)
    decision = tune_engine(fakes_only(fast, slow), tmp_path / "tuning.json").explain(X_SHAPE, W_SHAPE, backend="slow")
    assert decision.chosen == "slow" and fast.calls == 0 and slow.calls == 0


# -- concurrent tuners ------------------------------------------------------------------------


def _tune_in_child(cache_path, barrier, results):
    """Runs in a spawned process: tune the same problem into the shared cache."""
    registry = fakes_only(SleepyBackend("fast", 0.002), SleepyBackend("slow", 0.01))
    engine = Engine(policy="tune", tuning_cache=cache_path, tune_budget_s=0.1, registry=registry)
    barrier.wait(timeout=60)
    decision = engine.explain(X_SHAPE, W_SHAPE)
    results.put((decision.chosen, tuning_key(engine, decision)))


def test_two_processes_tuning_at_once_leave_a_valid_cache(tmp_path):
    path = tmp_path / "shared" / "tuning.json"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_tune_in_child, args=(str(path), barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        outcomes = [results.get(timeout=90) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert [chosen for chosen, _ in outcomes] == ["fast", "fast"]
    keys = {key for _, key in outcomes}
    assert len(keys) == 1  # the same machine, backends and problem: the same key

    document = json.loads(path.read_text())  # complete, valid JSON
    assert document["format"] == "convengine-tuning-cache" and document["version"] == 1
    (key,) = keys
    assert document["entries"][key]["record"]["chosen"] == "fast"
    assert not list(path.parent.glob("*.tmp"))  # no temporary file left behind
    assert not (path.parent / "tuning.json.corrupt").exists()

    # and this process reuses it without measuring
    fast, slow = SleepyBackend("fast", 0.002), SleepyBackend("slow", 0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TuningCacheWarning)
        decision = tune_engine(fakes_only(fast, slow), path).explain(X_SHAPE, W_SHAPE)
    assert decision.chosen == "fast" and fast.calls == slow.calls == 0
