"""Single layers: every contender timed on one convolution problem, and a catalogue model's totals.

Absolute times on a shared machine are noise; ratios measured in the same run are not.
Every contender (a prepared backend, the engine's own choice, a peer) is warmed first, so JIT
compilation and weight packing stay out of the timings, then the contenders are timed in
interleaved rounds (:func:`convengine.runtime.timing.interleaved`) and the median of the
rounds is reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..core.problem import ConvProblem
from ..runtime.timing import interleaved


@dataclass
class Timing:
    """One contender on one layer: its median seconds per call, or why it did not run."""

    name: str
    kind: str  # "backend" | "peer"
    median_s: Optional[float]
    flops: int
    error: Optional[str] = None

    @property
    def gflops(self) -> Optional[float]:
        return None if not self.median_s else self.flops / self.median_s / 1e9


def simulated(device: str) -> Optional[str]:
    """Why a backend on ``device`` must not be timed here (Numba's CUDA simulator), else ``None``."""
    if device == "cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return "runs on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct, but no measurement"
    return None


def compare(problem: ConvProblem, backends: dict[str, Callable[[np.ndarray], np.ndarray]],
            peers: dict[str, Callable[[], object]], x: np.ndarray, rounds: int = 7,
            target_s: float = 0.02) -> list[Timing]:
    """Median seconds per call of each backend executor and peer, timed in interleaved rounds."""
    contenders: dict[str, Callable[[], object]] = {name: (lambda e=e: e(x)) for name, e in backends.items()}
    contenders.update(peers)
    samples = interleaved(contenders, rounds, target_s)
    return [Timing(name, "peer" if name in peers else "backend", float(np.median(samples[name])), problem.flops)
            for name in contenders]


def model_totals(layer_reports: list[dict], sets: dict[str, tuple[str, ...]]) -> list[dict]:
    """Per catalogue model (``resnet50``, ``alexnet``) whose every layer was run: each contender's
    total, the layer medians weighted by how often the model runs each shape (``count``)."""
    by_name = {r["layer"]: r for r in layer_reports}
    totals = []
    for model in ("resnet50", "alexnet"):
        names = sets[model]
        if not all(n in by_name for n in names):
            continue
        reports = [by_name[n] for n in names]
        flops = sum(r["flops"] * r["count"] for r in reports)

        def total(pick, reports=reports) -> Optional[float]:
            seconds = 0.0
            for r in reports:
                value = pick(r)
                if value is None:
                    return None
                seconds += r["count"] * value
            return seconds

        def median_of(name):
            return lambda report: next((t["median_s"] for t in report["results"] if t["contender"] == name), None)

        def best_of(kind):
            def pick(report):
                times = [t["median_s"] for t in report["results"]
                         if t["kind"] == kind and t["median_s"] and not t["contender"].startswith("auto")]
                return min(times) if times else None
            return pick

        names_seen = list(dict.fromkeys(t["contender"] for r in reports for t in r["results"]
                                        if not t["contender"].startswith("auto")))
        rows = [(name, next(t["kind"] for r in reports for t in r["results"] if t["contender"] == name),
                 total(median_of(name))) for name in names_seen]
        rows.append(("auto", "backend", total(lambda r: next((t["median_s"] for t in r["results"]
                                                               if t["contender"].startswith("auto")), None))))
        rows.append(("best backend per layer", "backend", total(best_of("backend"))))
        peer_totals = [s for _, kind, s in rows if kind == "peer" and s]
        reference = min(peer_totals) if peer_totals else None
        totals.append({
            "model": model, "layers": len(names), "convolutions": sum(r["count"] for r in reports), "flops": flops,
            "results": [{"contender": name, "kind": kind, "total_s": s,
                         "ratio_to_peer": (s / reference) if (s and reference) else None,
                         "gflops": (flops / s / 1e9) if s else None}
                        for name, kind, s in rows],
        })
    return totals
