"""Choosing a backend for a problem, and recording why.

Every policy starts from the same candidate filter (available on this machine, within the
accuracy budget, supports the problem) and then decides among the survivors:

* an explicit name: that backend, or an error saying why it cannot run the problem;
* a preference list: the first listed candidate;
* ``"auto"``: the lowest time predicted by each backend's cost model, nothing is run;
* ``"tune"``: each candidate is measured on the problem, the fastest wins, and the result is
  kept in the per-machine tuning cache so the measurement happens once.

The outcome is a :class:`Decision`, whose ``str()`` is the report ``explain`` prints.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

from .contract import LOSSY
from .errors import BackendDeclinedError, BackendUnavailableError, warn
from .layouts import NCHW
from .problem import ConvProblem
from .registry import BackendEntry, Registry

Policy = Union[str, Sequence[str]]
NAMED_POLICIES = ("auto", "tune")


@dataclass
class Candidate:
    """One backend's row in a decision."""

    name: str
    device: str = "?"
    numerical_class: str = "?"
    status: str = "candidate"  # chosen | candidate | excluded
    reason: str = ""
    predicted_s: Optional[float] = None
    measured_s: Optional[float] = None


@dataclass
class Decision:
    """Which backend runs a problem and why; ``str()`` gives the human-readable report."""

    problem: ConvProblem
    policy: str
    chosen: Optional[str] = None
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    explicit: bool = False  # the caller or operator named the backend: failures raise, no fallback

    def row(self, name: str) -> Candidate:
        return next(c for c in self.candidates if c.name == name)

    @property
    def eligible(self) -> list[str]:
        return [c.name for c in self.candidates if c.status != "excluded"]

    def __str__(self) -> str:
        from ..runtime.tables import format_table  # here, not at the top: only a report needs it, not import convengine

        lines = [f"problem: {self.problem}", f"policy:  {self.policy}"]
        lines += [f"note:    {note}" for note in self.notes]
        lines.append(f"chosen:  {self.chosen or 'none'}")
        header = ("backend", "device", "class", "status", "predicted", "measured", "reason")
        rows = [(c.name, c.device, c.numerical_class, c.status, _fmt_time(c.predicted_s), _fmt_time(c.measured_s),
                 c.reason) for c in self.candidates]
        lines += ["", format_table(header, rows)]
        return "\n".join(line.rstrip() for line in lines)


def _fmt_time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if not math.isfinite(seconds):
        return "inf"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def describe_policy(policy: Policy) -> str:
    return policy if isinstance(policy, str) else "prefer " + " > ".join(policy)


def screen(problem: ConvProblem, registry: Registry, max_rel_error: Optional[float], decision: Decision,
           max_extra_weight_bytes: Optional[int] = None) -> None:
    """Fill ``decision.candidates`` with every registered backend, excluded ones with their reason.

    ``max_extra_weight_bytes`` (the engine's weight-memory budget, where it chooses) excludes a
    backend whose prepared weights would take more than that beyond the layer's own
    (``Backend.extra_weight_bytes``).
    """
    for entry in registry.entries():
        row = Candidate(name=entry.name, device=entry.attribute("device"),
                        numerical_class=entry.attribute("numerical_class"))
        decision.candidates.append(row)
        reason = _exclusion_reason(entry, problem, max_rel_error)
        if not reason and max_extra_weight_bytes is not None:
            reason = _weight_memory_reason(entry, problem, max_extra_weight_bytes)
        if reason:
            row.status, row.reason = "excluded", reason


def _weight_memory_reason(entry: BackendEntry, problem: ConvProblem, limit: int) -> Optional[str]:
    ask = getattr(entry.backend, "extra_weight_bytes", None)  # optional for backends not built on Backend
    if ask is None:
        return None
    try:
        extra = ask(problem)
    except Exception as exc:
        return _plugin_fault(entry.name, f"extra_weight_bytes() raised {type(exc).__name__}: {exc}")
    if extra is None:
        return None
    if not isinstance(extra, numbers.Real) or isinstance(extra, bool) or not extra >= 0:  # (numpy's ints too)
        return _plugin_fault(entry.name, f"extra_weight_bytes() returned {extra!r}, not a number of bytes")
    if extra > limit:
        return (f"memory: its prepared weights would take {extra / 2**20:.1f} MiB more than the layer's own, "
                f"above the budget max_extra_weight_bytes={limit / 2**20:g} MiB")
    return None


def _exclusion_reason(entry: BackendEntry, problem: ConvProblem, max_rel_error: Optional[float]) -> Optional[str]:
    unavailable = entry.unavailable_reason
    if unavailable:
        return f"not available: {unavailable}"
    backend = entry.backend
    if max_rel_error is not None:
        try:
            bound = float(backend.error_bound(problem.dtype))
        except Exception as exc:
            return _plugin_fault(entry.name, f"error_bound() raised {type(exc).__name__}: {exc}")
        if bound > max_rel_error:
            return (f"accuracy: {entry.attribute('numerical_class')} backend, expected error {bound:.0e} "
                    f"exceeds the budget max_rel_error={max_rel_error:.0e}")
    try:
        unsupported = backend.supports(problem)
    except Exception as exc:
        return _plugin_fault(entry.name, f"supports() raised {type(exc).__name__}: {exc}")
    if unsupported:
        return f"unsupported: {unsupported}"
    if problem.layouts != (NCHW, NCHW):
        layouts = getattr(backend, "supports_layouts", None)  # optional for backends not built on Backend
        try:
            unsupported = "NCHW only" if layouts is None else layouts(problem)
        except Exception as exc:
            return _plugin_fault(entry.name, f"supports_layouts() raised {type(exc).__name__}: {exc}")
        if unsupported:
            return f"layouts {problem.input_layout} -> {problem.output_layout}: {unsupported}"
    return None


def _plugin_fault(name: str, reason: str) -> str:
    """Report a backend method that misbehaved; the reason goes into the decision too."""
    warn(f"backend {name!r}: {reason}")
    return reason


#: How a row excluded for these reasons is reported when the backend was named: unavailable, not declined.
_UNAVAILABLE_PREFIXES = ("not available:", "not registered:")


def choose_explicit(decision: Decision, name: str, source: str, registry: Registry) -> None:
    """Pick ``name``, or raise why it cannot run the problem: a :class:`BackendUnavailableError` when it is
    not registered or not available, a :class:`BackendDeclinedError` when it refuses the problem."""
    if name not in {c.name for c in decision.candidates}:
        reason = registry.why_not_registered(name)
        raise BackendUnavailableError(
            f"backend {name!r} ({source}) is not registered: {reason}; registered backends: {', '.join(registry.names())}",
            backend=name, reason=reason)
    row = decision.row(name)
    if row.status == "excluded":
        error = BackendUnavailableError if row.reason.startswith(_UNAVAILABLE_PREFIXES) else BackendDeclinedError
        raise error(f"backend {name!r} ({source}) cannot run {decision.problem}: {row.reason}", backend=name,
                    reason=row.reason)
    _pick(decision, name, source)


def choose_preferred(decision: Decision, preference: Sequence[str], registry: Registry) -> None:
    """Pick the first eligible backend in ``preference``.

    A listed name that is not registered is skipped, with the reason in its row, when a plugin
    that did not load (it failed, or ``CONVENGINE_LOAD_PLUGINS`` left it out) may have provided it:
    one list can then serve machines with and without that plugin. When every plugin loaded, an
    unknown name can only be a typo, and raises.
    """
    names = {c.name for c in decision.candidates}
    unknown = [p for p in dict.fromkeys(preference) if p not in names]
    if unknown and not registry.absent:
        raise BackendUnavailableError(f"unknown backend(s) in preference list: {', '.join(unknown)}; "
                                      f"registered: {', '.join(sorted(names))}", reason="no such backend")
    for name in unknown:
        decision.candidates.append(Candidate(name=name, device="-", numerical_class="-", status="excluded",
                                             reason=f"not registered: {registry.why_not_registered(name)}"))
    for rank, name in enumerate(preference):
        if decision.row(name).status != "excluded":
            _pick(decision, name, f"first eligible in the preference list (position {rank + 1})")
            for other in decision.candidates:
                if other.status == "candidate":
                    other.reason = "not in the preference list" if other.name not in preference else "lower preference"
            return
    _raise_none_eligible(decision, only=preference)


def predict(decision: Decision, registry: Registry, machine) -> None:
    """Fill ``predicted_s`` of every eligible row from the backend's own cost model."""
    decision.notes.append(f"cost model inputs: {machine.describe()}")
    for row in decision.candidates:
        if row.status == "excluded":
            continue
        try:
            estimate = registry.get(row.name).backend.estimate_seconds(decision.problem, machine)
        except Exception as exc:
            row.reason = _plugin_fault(row.name, f"estimate_seconds() raised {type(exc).__name__}: {exc}")
            continue
        if estimate is None:
            row.reason = "no estimate"
        elif isinstance(estimate, (int, float)) and math.isfinite(estimate) and estimate >= 0:
            row.predicted_s = float(estimate)
        else:
            row.reason = _plugin_fault(row.name, f"estimate_seconds() returned {estimate!r}, not a time in seconds")


#: A lossy backend (FFT, Winograd) is chosen by the cost model only when predicted this much
#: faster than the best exact one: estimates are good to 10-30%, and within that a caller is
#: better served by the result without transform round-off.
LOSSY_MARGIN = 0.15


def choose_by_cost(decision: Decision, registry: Registry, machine) -> None:
    """Rank eligible backends by their own prediction (lossy ones handicapped by :data:`LOSSY_MARGIN`);
    those without a prediction rank last."""
    predict(decision, registry, machine)

    def rank(c: Candidate):  # a lossy time counts as if it were LOSSY_MARGIN closer to the exact ones'
        handicap = 1.0 / (1.0 - LOSSY_MARGIN) if c.numerical_class == LOSSY else 1.0
        return (c.predicted_s is None, (c.predicted_s or 0.0) * handicap)

    ranked = sorted((c for c in decision.candidates if c.status != "excluded"), key=rank)
    if not ranked:
        _raise_none_eligible(decision)
    best = ranked[0]
    if best.predicted_s is None:
        reason = "no backend has an estimate"
    elif best.numerical_class == LOSSY:
        reason = f"lowest predicted time, by more than the {LOSSY_MARGIN:.0%} asked of a lossy backend"
    else:
        reason = "lowest predicted time"
    if any(c.numerical_class == LOSSY and c.predicted_s is not None and c.predicted_s < (best.predicted_s or 0.0)
           for c in ranked[1:]):
        reason += f" (lossy backends must be predicted {LOSSY_MARGIN:.0%} faster than the best exact one)"
    _pick(decision, best.name, reason)
    for row in ranked[1:]:
        if row.predicted_s is None:
            continue
        if best.predicted_s and row.predicted_s < best.predicted_s:  # a lossy one kept out by the margin
            row.reason = (f"predicted {best.predicted_s / row.predicted_s:.2g}x faster, but a lossy backend "
                          f"must be predicted {LOSSY_MARGIN:.0%} faster than the best exact one")
        else:
            row.reason = f"predicted {row.predicted_s / best.predicted_s:.2g}x slower" if best.predicted_s else "predicted slower"


def prune_hopeless(decision: Decision, factor: float, floor_s: float) -> None:
    """Exclude from measuring the backends predicted slower than ``factor`` x the best and ``floor_s``.

    Measuring costs at least one run; a candidate predicted to take minutes (a GPU simulator,
    naive's plain loops on a huge layer) would blow the tuning budget to confirm that it loses.
    """
    predictions = [c.predicted_s for c in decision.candidates if c.status != "excluded" and c.predicted_s is not None]
    if not predictions:
        return
    best = min(predictions)
    for row in decision.candidates:
        if row.status != "excluded" and row.predicted_s is not None and row.predicted_s > max(factor * best, floor_s):
            row.status = "excluded"
            row.reason = (f"not measured: predicted {row.predicted_s:.3g} s, "
                          f"{row.predicted_s / best:.0f}x the best prediction" if best else "not measured")


def choose_by_measurement(
    decision: Decision,
    measure: Callable[[str], float],
) -> dict[str, float]:
    """Measure every eligible backend with ``measure(name) -> seconds``; pick the fastest."""
    times: dict[str, float] = {}
    for row in decision.candidates:
        if row.status == "excluded":
            continue
        try:
            row.measured_s = times[row.name] = measure(row.name)
        except Exception as exc:
            row.status = "excluded"
            row.reason = _plugin_fault(row.name, f"failed while tuning: {type(exc).__name__}: {exc}")
    if not times:
        _raise_none_eligible(decision)
    pick_fastest(decision, times, min(times, key=times.get))
    return times


def pick_fastest(decision: Decision, times: dict[str, float], best: str, source: str = "") -> None:
    """Choose ``best`` and record every measured time, the others as "Nx slower" than it."""
    for name, seconds in times.items():
        decision.row(name).measured_s = seconds
        if name != best:
            ratio = f"{seconds / times[best]:.2g}x" if times[best] else "more"
            decision.row(name).reason = f"measured {ratio} slower{source}"
    _pick(decision, best, f"fastest measured{source}")


def _pick(decision: Decision, name: str, reason: str) -> None:
    decision.chosen = name
    row = decision.row(name)
    row.status, row.reason = "chosen", reason


def _raise_none_eligible(decision: Decision, only: Optional[Sequence[str]] = None) -> None:
    rows = [c for c in decision.candidates if only is None or c.name in only]
    detail = "; ".join(f"{c.name}: {c.reason or c.status}" for c in rows)
    raise BackendUnavailableError(f"no backend can run {decision.problem} under policy {decision.policy!r}: {detail}",
                                  reason=detail)

