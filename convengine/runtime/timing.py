"""Wall-clock timing of calls: the one place convengine measures how long something takes.

Three users, one set of rules. The cost model's machine profile takes the *fastest* of a
few calls (load from other processes only ever slows a call down, and the profile is kept
for good); the ``tune`` policy takes the *median* of as many calls as its budget allows; the
benchmarks time several contenders in *interleaved* rounds, so that a burst of load from a
neighbour hits them all alike. Every measurement starts with one untimed call (Numba
compilation or its cache load, caches, thread pools), so compile time never counts.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np


def call_seconds(fn: Callable[[], object], calls: int = 1, *, budget_s: Optional[float] = None,
                 max_calls: int = 15, warm: bool = True) -> list[float]:
    """Seconds of each timed call of ``fn``, after one untimed call when ``warm``.

    Without ``budget_s``: exactly ``calls`` calls. With it: at least ``calls``, then more
    while ``budget_s`` seconds have not passed since the first, up to ``max_calls``.
    """
    if warm:
        fn()
    times: list[float] = []
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    while len(times) < calls or (deadline is not None and len(times) < max_calls and time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def best_seconds(fn: Callable[[], object], calls: int) -> float:
    """The fastest of ``calls`` warm calls: what the machine does when nothing else runs."""
    return min(call_seconds(fn, calls))


def median_seconds(fn: Callable[[], object], calls: int = 1, *, budget_s: Optional[float] = None,
                   max_calls: int = 15) -> float:
    """The median of warm calls (see :func:`call_seconds`): what a call typically costs, busy or not."""
    return float(np.median(call_seconds(fn, calls, budget_s=budget_s, max_calls=max_calls)))


def calls_per_sample(fn: Callable[[], object], target_s: float) -> int:
    """How many calls of ``fn`` take at least ``target_s`` (from one call, timed now; at least 1),
    so that a sample of a fast call is not mostly timer resolution."""
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, int(target_s / once))


#: Pause before each contender's sample in an interleaved round. BLAS worker threads keep
#: spinning after a call (OpenBLAS: 2**28 cycles by default, about 0.1 s) and would take a
#: core from whichever contender runs next: measured on ResNet-18, ONNX Runtime timed right
#: after convengine took 24 ms, and 17.5 ms once OpenBLAS was told not to spin. So every
#: sample starts after the previous contender's threads have gone to sleep.
SETTLE_S = 0.15


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int = 7, target_s: float = 0.02,
                warm: bool = True, settle_s: Optional[float] = None) -> dict[str, list[float]]:
    """Seconds per call of each contender, one sample per round, the contenders interleaved.

    Each contender is called once first when ``warm`` (compilation, caches, thread pools),
    then once more to calibrate how many calls make a sample of at least ``target_s``
    (:func:`calls_per_sample`). With several contenders, each sample starts ``settle_s``
    (default :data:`SETTLE_S`) after the previous one ended, so that no contender pays for
    another's spinning threads.
    """
    settle = (SETTLE_S if settle_s is None else settle_s) if len(contenders) > 1 else 0.0
    if warm:
        for fn in contenders.values():
            fn()
    inner = {name: calls_per_sample(fn, target_s) for name, fn in contenders.items()}
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            if settle:
                time.sleep(settle)
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / inner[name])
    return samples
