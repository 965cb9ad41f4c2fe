"""The ``"tune"`` policy: measure every eligible backend on the problem, keep the fastest.

Measurements are persisted in the per-machine :class:`~convengine.core.tuning_cache.TuningCache`
under a key that digests everything the timing depends on: the host (CPU model and flags,
cores, BLAS), convengine's version, each eligible backend's own fingerprint (its version,
Numba/scipy/plugin versions, GPU name) and the problem. Any upgrade or new plugin changes
the key, so a stale choice is never reused.
"""

from __future__ import annotations

import time

from .._version import __version__
from ..runtime.hardware import fingerprint_digest, host_fingerprint
from ..runtime.timing import median_seconds
from .arrays import output_violation, problem_data
from .selection import Decision, choose_by_measurement, pick_fastest, predict, prune_hopeless

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
        times = {name: float(t) for name, t in record.get("times", {}).items() if name in decision.eligible}
        times.setdefault(record["chosen"], 0.0)  # a record without its winner's time still names the winner
        pick_fastest(decision, times, record["chosen"], " (tuning cache)")
        decision.notes.append(f"measured on {time.strftime('%Y-%m-%d %H:%M', time.localtime(record.get('when', 0)))}, "
                              f"cached in {cache.path}")
        return
    from .costmodel import machine_profile

    predict(decision, engine.registry, machine_profile(cache))
    prune_hopeless(decision, PRUNE_FACTOR, engine.tune_budget_s)
    eligible = decision.eligible
    budget = engine.tune_budget_s / max(len(eligible), 1)
    inputs = problem_data(decision.problem)
    times = choose_by_measurement(decision, lambda name: _measure(engine, name, decision.problem, inputs, budget))
    decision.notes.append(f"measured now, {engine.tune_budget_s:g} s budget"
                          + (f"; saved to {cache.path}" if cache is not None else "; not persisted"))
    if cache is not None:
        cache.put(key, {"chosen": decision.chosen, "times": times, "when": time.time(),
                        "problem": decision.problem.key()})


def _measure(engine, name: str, problem, inputs, budget_s: float) -> float:
    """Median time of ``name`` on ``inputs``; a backend that raises or returns a wrong output is excluded
    for the rest of the process, as the engine would exclude it at run time (and the error re-raised)."""
    x, w, b = inputs
    backend = engine.registry.get(name).backend
    step = "prepare()"
    try:
        execute = backend.prepare(problem, w, b)
        step = "execute()"
        violation = output_violation(execute(x), problem)
        if not violation:
            return median_seconds(lambda: execute(x), budget_s=budget_s)
    except Exception as exc:
        engine.registry.mark_broken(name, f"{step} raised {type(exc).__name__}: {exc} (while tuning)")
        raise
    engine.registry.mark_broken(name, violation)
    raise ValueError(violation)
