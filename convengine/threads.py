"""One thread-count setting for every pool the backends use (Numba, BLAS, scipy.fft).

The backends run one after another, never nested, so each may use all the threads the
setting allows without oversubscribing the cores; what must not happen is a BLAS call
spawning its own threads *inside* a Numba parallel region, and no backend does that.

The count comes from ``CONVENGINE_NUM_THREADS`` when set, else the cores this process may
run on. :func:`set_num_threads` changes it at run time.

Idle OpenMP workers busy-wait by default (libgomp spins for a while after each parallel
region). When a Numba kernel (OpenMP threading layer) is followed by a BLAS or torch call,
the spinning workers steal the cores the next call needs, and on a 2-core machine that
costs several times the work itself. So, unless the user chose otherwise, idle OpenMP
threads are told to sleep (``OMP_WAIT_POLICY=PASSIVE``); this must be set before any
OpenMP runtime loads, hence at import.
"""

from __future__ import annotations

import os
from typing import Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _from_environment() -> int:
    raw = os.environ.get("CONVENGINE_NUM_THREADS")
    if not raw:
        return _usable_cores()
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"CONVENGINE_NUM_THREADS must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"CONVENGINE_NUM_THREADS must be a positive integer, got {raw!r}")
    return value


_num_threads = _from_environment()


def get_num_threads() -> int:
    """The number of threads backends may use."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Set the thread count for Numba kernels, BLAS calls and scipy.fft from now on."""
    global _num_threads
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"num_threads must be a positive int, got {n!r}")
    _num_threads = n


def numba_threads() -> int:
    """The thread count for a Numba parallel kernel (capped at Numba's pool size); sets it too.

    ``numba.set_num_threads`` is per calling thread and cheap, so kernels call this each time.
    """
    import numba

    n = min(_num_threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    return n


_blas_limit_applied: Optional[int] = None


def apply_blas_threads() -> None:
    """Limit numpy's BLAS pool to the configured count (once per change: threadpoolctl costs ~1 ms)."""
    global _blas_limit_applied
    if _blas_limit_applied != _num_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=_num_threads, user_api="blas")
        _blas_limit_applied = _num_threads
