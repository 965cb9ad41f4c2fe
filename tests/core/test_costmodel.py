"""The machine profile behind the "auto" cost model: stored once, refreshed towards the best measurement."""

from __future__ import annotations

import pytest

from convengine.core import costmodel
from convengine.core.costmodel import MachineProfile
from convengine.core.tuning_cache import TuningCache

pytestmark = pytest.mark.usefixtures("isolated_env")

BUSY = MachineProfile(8.8e10, 4.0e10, 2.0e10)  # measured while the machine was loaded
IDLE = MachineProfile(2.0e11, 1.0e11, 1.5e10)  # faster compute, but a slower bandwidth sample


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setattr(costmodel, "_profile", None)
    measured = []
    monkeypatch.setattr(costmodel, "measure_machine", lambda: measured.pop(0))
    return measured, TuningCache(tmp_path / "cache.json")


def test_the_first_profile_is_measured_once_and_stored(fresh, monkeypatch):
    measured, cache = fresh
    measured.append(BUSY)
    assert costmodel.machine_profile(cache) == BUSY
    monkeypatch.setattr(costmodel, "_profile", None)  # a new process: read back, not measured (list is empty)
    assert costmodel.machine_profile(cache) == BUSY


def test_refresh_keeps_the_best_of_stored_and_new_rates(fresh, monkeypatch):
    measured, cache = fresh
    measured += [BUSY, IDLE]
    costmodel.machine_profile(cache)
    refreshed = costmodel.refresh_machine_profile(cache)
    assert refreshed == MachineProfile(IDLE.gemm_flops_float32, IDLE.gemm_flops_float64, BUSY.bandwidth)
    assert costmodel.machine_profile(cache) == refreshed  # this process uses it at once
    monkeypatch.setattr(costmodel, "_profile", None)
    assert costmodel.machine_profile(cache) == refreshed  # and later processes read it


def test_a_profile_stored_before_the_launch_rate_was_measured_still_loads(fresh):
    _, cache = fresh
    cache.put(costmodel._cache_key(), {"gemm_flops_float32": 1e11, "gemm_flops_float64": 5e10, "bandwidth": 1e10})
    profile = costmodel.machine_profile(cache)
    assert profile.gemm_flops_float32 == 1e11
    assert profile.parallel_launch_s == pytest.approx(5e-6)  # the documented default
    assert "parallel kernel start 5 us" in profile.describe()


def test_the_parallel_launch_probe_measures_a_plausible_time():
    seconds = costmodel.measure_parallel_launch_seconds(repeats=20)
    assert 0 < seconds < 0.05  # from ~1 us (spinning workers) to tens of us (a VM waking a vCPU)


def test_estimates_charge_each_parallel_kernel_start():
    from convengine.backends.direct import DirectBackend
    from convengine.core.problem import ConvProblem

    quick = MachineProfile(1e11, 5e10, 1e10, parallel_launches=1e6)  # 1 us per start
    slow = MachineProfile(1e11, 5e10, 1e10, parallel_launches=1e4)  # 100 us per start
    problem = ConvProblem.from_shapes((1, 16, 8, 8), (16, 16, 3, 3), padding=1)
    # the blocked-input copy and the convolution: one kernel, two phases
    difference = DirectBackend().estimate_seconds(problem, slow) - DirectBackend().estimate_seconds(problem, quick)
    assert difference == pytest.approx(1e-4 - 1e-6)
