"""The one timing helper (convengine.runtime.timing): how many calls it makes, and what it returns.

No time is judged here (the machine is shared): only the counting and the contract.
"""

import time

import pytest

from convengine.runtime import timing


class Counter:
    def __init__(self, sleep_s: float = 0.0):
        self.calls, self.sleep_s = 0, sleep_s

    def __call__(self):
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)


def test_a_fixed_number_of_calls_after_one_untimed_warm_up():
    fn = Counter()
    assert len(timing.call_seconds(fn, 5)) == 5 and fn.calls == 6
    fn = Counter()
    assert len(timing.call_seconds(fn, 3, warm=False)) == 3 and fn.calls == 3


def test_a_budget_adds_calls_up_to_the_cap():
    fn = Counter()
    times = timing.call_seconds(fn, 1, budget_s=60.0, max_calls=4)  # a long budget: the cap ends it
    assert len(times) == 4 and fn.calls == 5
    fn = Counter(sleep_s=0.02)
    times = timing.call_seconds(fn, 2, budget_s=0.0, max_calls=10)  # no budget left: the minimum only
    assert len(times) == 2 and all(t >= 0.02 for t in times)


def test_best_and_median_of_the_calls():
    fn = Counter(sleep_s=0.01)
    assert timing.best_seconds(fn, 3) >= 0.01
    assert timing.median_seconds(fn, 3) >= 0.01


def test_interleaved_rounds_give_one_sample_per_contender_and_round():
    a, b = Counter(), Counter()
    samples = timing.interleaved({"a": a, "b": b}, rounds=3, target_s=0.0, settle_s=0.0)
    assert set(samples) == {"a", "b"} and all(len(v) == 3 for v in samples.values())
    # one warm-up, one calibration, then a call per sample (target 0: one call makes a sample)
    assert a.calls == b.calls == 2 + 3


@pytest.mark.parametrize("once_s, target_s, expected", [(0.01, 0.05, 5), (0.01, 0.001, 1)])
def test_calls_per_sample(monkeypatch, once_s, target_s, expected):
    clock = iter([0.0, once_s])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    assert timing.calls_per_sample(lambda: None, target_s) == expected
