"""What this machine can do, measured once: the inputs of the ``"auto"`` cost model.

Backends predict their own time from a :class:`MachineProfile` (``Backend.estimate_seconds``),
because only a backend knows its algorithm's FLOPs and memory traffic. The profile holds the
rates those predictions need: numpy's BLAS GEMM throughput (the practical compute limit
of the machine), its streaming memory bandwidth, and how many Numba parallel kernels it can
start per second (``convengine.runtime.probes``). Measuring takes a fraction of a second,
so the result is kept in the tuning cache, keyed by the hardware fingerprint. The rates are
the fastest of a few calls (:func:`~convengine.runtime.timing.best_seconds`): load from other
processes only ever slows a call down, and a profile kept for good must describe the machine,
not a busy moment.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, astuple, dataclass
from typing import Optional

import numpy as np

from ..runtime.timing import best_seconds, median_seconds

GEMM_SIZE = 1024
BANDWIDTH_BYTES = 64 * 2**20


@dataclass(frozen=True)
class MachineProfile:
    """Measured throughputs: GEMM FLOP/s per dtype, and memory bandwidth in bytes/s.

    This is the ``machine`` a backend's ``estimate_seconds(problem, machine)`` receives.
    """

    #: numpy's BLAS GEMM rate on float32 (1024x1024 matrices, best of five), FLOP/s.
    gemm_flops_float32: float
    #: The same for float64, FLOP/s.
    gemm_flops_float64: float
    #: Streaming memory bandwidth (a large array copy, best of five), bytes/s.
    bandwidth: float
    #: Numba parallel kernels started per second (a rate, so that every field is "higher is
    #: better" for refresh_machine_profile). Every stored profile has it (the cache key's "v3"
    #: leaves older ones unread); the default, a typical 5 us, serves profiles built by hand.
    parallel_launches: float = 2e5

    def gemm_flops(self, dtype: str) -> float:
        """The GEMM rate for ``dtype`` (``"float32"`` or ``"float64"``), FLOP/s: the practical compute limit."""
        return self.gemm_flops_float32 if dtype == "float32" else self.gemm_flops_float64

    @property
    def parallel_launch_s(self) -> float:
        """Seconds to start (and join) one Numba parallel kernel."""
        return 1.0 / self.parallel_launches

    def describe(self) -> str:
        """One line for reports (``explain`` prints it as the cost model's inputs)."""
        return (f"GEMM {self.gemm_flops_float32 / 1e9:.1f} GFLOP/s float32, "
                f"{self.gemm_flops_float64 / 1e9:.1f} GFLOP/s float64; memory {self.bandwidth / 1e9:.1f} GB/s; "
                f"parallel kernel start {self.parallel_launch_s * 1e6:.0f} us")


def measure_gemm_flops(dtype: str = "float32", size: int = GEMM_SIZE, repeats: int = 5) -> float:
    """FLOP/s of numpy's BLAS on a square ``size`` x ``size`` product (with the configured threads)."""
    from ..runtime.threads import apply_blas_threads

    apply_blas_threads()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    out = np.empty_like(a)
    seconds = best_seconds(lambda: np.matmul(a, b, out=out), repeats)
    return 2.0 * size**3 / seconds


def measure_bandwidth(nbytes: int = BANDWIDTH_BYTES, repeats: int = 5) -> float:
    """Bytes/s moved by a large array copy (read + write)."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    seconds = best_seconds(lambda: np.copyto(dst, src), repeats)
    return 2.0 * nbytes / seconds


def measure_parallel_launch_seconds(repeats: int = 200) -> float:
    """Median seconds to start one Numba parallel kernel (``convengine.runtime.probes``): the
    median, not the best, because every kernel call pays it, quiet moment or not."""
    from ..runtime.probes import near_empty_kernel_call

    return median_seconds(near_empty_kernel_call(), repeats)


def measure_machine() -> MachineProfile:
    return MachineProfile(
        gemm_flops_float32=measure_gemm_flops("float32"),
        gemm_flops_float64=measure_gemm_flops("float64"),
        bandwidth=measure_bandwidth(),
        parallel_launches=1.0 / measure_parallel_launch_seconds(),
    )


_profile: Optional[MachineProfile] = None
_lock = threading.Lock()


def _cache_key() -> str:
    from ..runtime.hardware import fingerprint_digest, host_fingerprint

    return "machine-profile-v3:" + fingerprint_digest(host_fingerprint())  # v3: parallel launch rate


def _cached(cache) -> Optional[MachineProfile]:
    record = cache.get(_cache_key())
    try:
        return MachineProfile(**record) if record else None
    except TypeError:  # a record of another shape: measure again
        return None


def machine_profile(cache=None) -> MachineProfile:
    """This machine's profile: from this process, else from ``cache`` (a TuningCache), else measured."""
    global _profile
    with _lock:
        if _profile is not None:
            return _profile
        _profile = _cached(cache) if cache is not None else None
        if _profile is None:
            _profile = measure_machine()
            if cache is not None:
                cache.put(_cache_key(), asdict(_profile))
        return _profile


def refresh_machine_profile(cache=None) -> MachineProfile:
    """Measure again and keep, per rate, the best of this and the stored profile.

    A profile measured while other processes loaded the machine understates it for good;
    every refresh (``convengine bench`` and ``convengine tune`` do one) can only raise the
    rates towards what the idle machine does.
    """
    global _profile
    measured = measure_machine()
    with _lock:
        stored = _cached(cache) if cache is not None else None
        known = [p for p in (measured, stored, _profile) if p is not None]
        _profile = MachineProfile(*(max(rates) for rates in zip(*map(astuple, known))))
        if cache is not None:
            cache.put(_cache_key(), asdict(_profile))
        return _profile
