"""The machine profile behind the "auto" cost model: stored once, refreshed towards the best measurement."""

from __future__ import annotations

import pytest

from convengine import costmodel
from convengine.costmodel import MachineProfile
from convengine.tuning_cache import TuningCache

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
