"""Side-by-side timing of backends and peer libraries on one convolution problem.

Absolute times on a shared machine are noise; ratios measured in the same run are not.
Every contender is prepared and warmed first (JIT compilation and weight packing stay out
of the timings), then the contenders are timed in interleaved rounds so that a burst of
load from a neighbour hits them all alike, and the median of the rounds is reported.
Peers (``torch.nn.functional.conv2d``) are used only when installed; they are baselines,
never dependencies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .problem import ConvProblem
from .threads import get_num_threads


@dataclass
class Timing:
    name: str
    kind: str  # "backend" | "peer"
    median_s: Optional[float]
    flops: int
    error: Optional[str] = None

    @property
    def gflops(self) -> Optional[float]:
        return None if not self.median_s else self.flops / self.median_s / 1e9


def problem_data(problem: ConvProblem, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(problem.input_shape).astype(problem.dtype)
    w = rng.standard_normal(problem.weight_shape).astype(problem.dtype)
    b = rng.standard_normal(problem.out_channels).astype(problem.dtype) if problem.has_bias else None
    return x, w, b


def torch_peer(problem: ConvProblem, x, w, b) -> Optional[Callable[[], object]]:
    """A warm ``torch.nn.functional.conv2d`` call on the same data, or ``None`` without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(get_num_threads())
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    tb = None if b is None else torch.from_numpy(b)
    top, bottom, left, right = problem.padding
    if top == bottom and left == right:
        pad_args = dict(padding=(top, left))
    else:  # torch's conv2d takes symmetric padding only; pad explicitly, as a user would
        tx = F.pad(tx, (left, right, top, bottom))
        pad_args = dict(padding=0)

    def run():
        with torch.no_grad():
            return F.conv2d(tx, tw, tb, stride=problem.stride, dilation=problem.dilation, groups=problem.groups, **pad_args)

    return run


def _calibrate(fn: Callable[[], object], target_s: float) -> int:
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, int(target_s / once))


def compare(problem: ConvProblem, backends: dict[str, Callable[[np.ndarray], np.ndarray]],
            peers: dict[str, Callable[[], object]], x: np.ndarray, rounds: int = 7,
            target_s: float = 0.02) -> list[Timing]:
    """Median seconds per call of each backend executor and peer, timed in interleaved rounds."""
    contenders: dict[str, Callable[[], object]] = {name: (lambda e=e: e(x)) for name, e in backends.items()}
    contenders.update(peers)
    for fn in contenders.values():
        fn()  # warm-up: compilation, caches, thread pools
    inner = {name: _calibrate(fn, target_s) for name, fn in contenders.items()}
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / inner[name])
    return [Timing(name, "peer" if name in peers else "backend", float(np.median(samples[name])), problem.flops)
            for name in contenders]


def format_table(problem: ConvProblem, timings: list[Timing], gemm_flops: Optional[float] = None) -> str:
    """One row per contender: median time, ratio to the fastest peer, GFLOP/s and share of GEMM peak."""
    peer_times = [t.median_s for t in timings if t.kind == "peer" and t.median_s]
    reference = min(peer_times) if peer_times else None
    header = ("contender", "median", "vs peer", "GFLOP/s", "of GEMM" if gemm_flops else "")
    rows = [header]
    for t in timings:
        if t.median_s is None:
            rows.append((t.name, "-", "-", "-", t.error or ""))
            continue
        ratio = f"{t.median_s / reference:.2f}x" if reference else "-"
        share = f"{t.gflops * 1e9 / gemm_flops:.0%}" if gemm_flops else ""
        rows.append((t.name, f"{t.median_s * 1e3:.3f} ms", ratio, f"{t.gflops:.1f}", share))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"{problem}  ({problem.flops / 1e9:.3f} GFLOP)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
