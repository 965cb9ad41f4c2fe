"""The ``"tune"`` policy: measure every eligible backend on the problem, keep the fastest.

Measurements are persisted in the per-machine :class:`~convengine.tuning_cache.TuningCache`
under a key that digests everything the timing depends on: the host (CPU model and flags,
cores, BLAS), convengine's version, each eligible backend's own fingerprint (its version,
Numba/scipy/plugin versions, GPU name) and the problem. Any upgrade or new plugin changes
the key, so a stale choice is never reused.
"""

from __future__ import annotations

import time

import numpy as np

from . import __version__
from .hardware import fingerprint_digest, host_fingerprint
from .selection import Decision, choose_by_measurement, predict, prune_hopeless, timed_median

#: Candidates predicted slower than this many times the best prediction (and than the whole
#: tuning budget) are not measured.
PRUNE_FACTOR = 20.0


def tuning_key(engine, decision: Decision) -> str:
    registry = engine.registry
    backends = {}
    for name in decision.eligible:
        try:
            backends[name] = registry.get(name).backend.fingerprint()
        except Exception as exc:  # an unreadable fingerprint still must not collide with a readable one
            backends[name] = {"fingerprint_error": f"{type(exc).__name__}: {exc}"}
    return fingerprint_digest({
        "host": host_fingerprint(),
        "convengine": __version__,
        "backends": backends,
        "problem": decision.problem.key(),
        "max_rel_error": engine.max_rel_error,
    })


def tune(engine, decision: Decision) -> None:
    """Fill ``decision`` from the cache, or by measuring and then caching."""
    cache = engine.tuning_cache
    key = tuning_key(engine, decision)
    record = cache.get(key) if cache is not None else None
    if record and record.get("chosen") in decision.eligible:
        times = record.get("times", {})
        for row in decision.candidates:
            if row.name in times:
                row.measured_s = float(times[row.name])
        best = record["chosen"]
        row = decision.row(best)
        decision.chosen, row.status, row.reason = best, "chosen", "fastest measured (tuning cache)"
        for name, seconds in times.items():
            if name != best and name in decision.eligible:
                decision.row(name).reason = f"measured {seconds / times[best]:.2g}x slower (tuning cache)"
        decision.notes.append(f"measured on {time.strftime('%Y-%m-%d %H:%M', time.localtime(record.get('when', 0)))}, "
                              f"cached in {cache.path}")
        return
    from .costmodel import machine_profile

    predict(decision, engine.registry, machine_profile(cache))
    prune_hopeless(decision, PRUNE_FACTOR, engine.tune_budget_s)
    eligible = decision.eligible
    budget = engine.tune_budget_s / max(len(eligible), 1)
    inputs = _problem_data(decision.problem)
    times = choose_by_measurement(decision, lambda name: _measure(engine, name, decision.problem, inputs, budget))
    decision.notes.append(f"measured now, {engine.tune_budget_s:g} s budget"
                          + (f"; saved to {cache.path}" if cache is not None else "; not persisted"))
    if cache is not None:
        cache.put(key, {"chosen": decision.chosen, "times": times, "when": time.time(),
                        "problem": decision.problem.key()})


def _problem_data(problem):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(problem.input_shape).astype(problem.dtype)
    w = rng.standard_normal(problem.weight_shape).astype(problem.dtype)
    b = rng.standard_normal(problem.out_channels).astype(problem.dtype) if problem.has_bias else None
    return x, w, b


def _measure(engine, name: str, problem, inputs, budget_s: float) -> float:
    from .engine import output_violation

    x, w, b = inputs
    backend = engine.registry.get(name).backend
    execute = backend.prepare(problem, w, b)
    violation = output_violation(execute(x), problem)
    if violation:
        engine.registry.mark_broken(name, violation)
        raise ValueError(violation)
    return timed_median(lambda: execute(x), budget_s)
