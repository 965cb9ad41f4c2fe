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
threads are told to sleep (``OMP_WAIT_POLICY=PASSIVE``) after a short spin
(``GOMP_SPINCOUNT``, see :data:`WORKER_SPIN_COUNT`); both must be set before any OpenMP
runtime loads, hence at import.

Too late is possible: ``import torch`` before ``import convengine`` loads torch's libgomp
into the global symbol scope, already initialised to spin, and Numba's OpenMP layer then
binds to it. Measured on ResNet-50: a BLAS call after a Numba kernel stalled ~8 ms (median)
and the model took 9x longer. When that is detected at import, Numba kernels run on one
thread (no worker pool to spin; measured as fast as two threads on ResNet-50 at batch 1)
and a :class:`ThreadingWarning` says how to avoid it.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import Optional

from .environment import positive_int  # it imports only os: safe before the pool variables below are set


class ThreadingWarning(RuntimeWarning):
    """The process's threading set-up will make convengine slower than it could be."""


def _spinning_openmp_loaded() -> bool:
    """Whether an OpenMP runtime is already in the global symbol scope, initialised without PASSIVE."""
    if "OMP_WAIT_POLICY" in os.environ:  # the user chose, or it was set before any runtime loaded
        return False
    try:
        import ctypes

        return hasattr(ctypes.CDLL(None), "GOMP_parallel")
    except (OSError, AttributeError):  # not a POSIX dlopen
        return False


#: Numba's OpenMP workers would spin (see above): run Numba kernels on one thread.
SPINNING_OPENMP = _spinning_openmp_loaded()
#: convengine chose the wait policy (the user did not): other OpenMP users in this process,
#: torch included, run with it too (``convengine bench`` says so next to torch's times).
WAIT_POLICY_SET_HERE = "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
#: ...but not at once. A worker put to sleep after every kernel must be woken for the next
#: one: ~45 us per parallel kernel on this project's 2-vCPU VM, even back to back, against
#: ~2 us for a worker still spinning (measured on an empty kernel), and inside a model the
#: steps between two parallel kernels (a pool, a one-thread element-wise pass, Python) often
#: take longer than a short spin. 100000 rounds of libgomp's count (~1-2.5 ms here) keep the
#: worker awake across them, as ONNX Runtime's pool spins between its operators. Whole models
#: at batch 1, 2000 -> 100000 rounds (fresh processes, median of 20 runs, quiet machine):
#: DenseNet-121 42.0 -> 36.2 ms, EfficientNet-B0 11.2 -> 9.2, GoogLeNet 18.7 -> 16.8,
#: RegNetY-400MF 9.9 -> 8.7, SqueezeNet 5.3 -> 4.8, ResNet-50 42.2 -> 40.6, ConvNeXt-Tiny
#: 53.9 -> 49.6; 1M and 3M rounds gained nothing more. It used to cost ConvNeXt 30%: a
#: spinning worker took a core from the BLAS calls of its Linear layers, which now run as
#: Numba kernels (see ``graph.fusion.channels_last_linears``); a BLAS call right after a
#: parallel kernel may still share the cores for that long. Only when convengine chose the
#: policy: a user's ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is left alone.
WORKER_SPIN_COUNT = "100000"
if WAIT_POLICY_SET_HERE:
    os.environ.setdefault("GOMP_SPINCOUNT", WORKER_SPIN_COUNT)
#: OpenBLAS's idle workers spin for 2**28 cycles (~0.1 s) after every call, so a Numba kernel
#: that follows a BLAS call (``direct`` after a 1x1 ``im2col`` layer) finds one core taken:
#: measured on ResNet's 64->64 3x3 layer, 2.5 ms instead of 1.4 ms. Sleeping at once (2**4)
#: has its own cost: a stacked product (32 GEMMs at batch 32) then wakes the threads 32 times,
#: and after an idle pause that took 44 ms instead of 19. 2**17 cycles (~40 us) keeps them
#: awake between the GEMMs of one call and lets them sleep before the next kernel starts
#: (measured: 19-21 ms in both cases). OpenBLAS reads the variable when it loads, so it only
#: takes effect when convengine is imported before numpy (``convengine`` on the command line
#: always is); :func:`blas_spin_limited` says whether it did.
BLAS_THREAD_TIMEOUT = "17"
#: Whether OpenBLAS could have read the variable: it was set before this process started (the
#: user's choice), or numpy, hence OpenBLAS, was not loaded yet when convengine set it.
_TIMEOUT_SEEN_BY_BLAS = "OPENBLAS_THREAD_TIMEOUT" in os.environ or "numpy" not in sys.modules
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", BLAS_THREAD_TIMEOUT)


def blas_spin_limited() -> bool:
    """Whether OpenBLAS's idle threads stop spinning soon in this process (see ``OPENBLAS_THREAD_TIMEOUT``)."""
    value = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "")
    return _TIMEOUT_SEEN_BY_BLAS and value.isdigit() and int(value) <= 20
if SPINNING_OPENMP:
    warnings.warn("an OpenMP runtime (e.g. torch's) was loaded before convengine without OMP_WAIT_POLICY=PASSIVE; "
                  "its idle threads spin and would stall BLAS between Numba kernels, so Numba kernels run on one "
                  "thread. Import convengine first, or set OMP_WAIT_POLICY=PASSIVE in the environment.",
                  ThreadingWarning, stacklevel=2)


def usable_cores() -> int:
    """Cores this process may run on: fewer than the machine's under taskset or a container."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_num_threads = positive_int("CONVENGINE_NUM_THREADS", usable_cores())


def get_num_threads() -> int:
    """The number of threads backends may use."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Set the thread count for Numba kernels, BLAS calls and scipy.fft from now on."""
    global _num_threads
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"num_threads must be a positive int, got {n!r}")
    _num_threads = n


_applied = threading.local()  # per thread: (the setting, the count numba_threads applied for it)


def numba_threads() -> int:
    """The thread count for a Numba parallel kernel (capped at Numba's pool size); sets it too.

    ``numba.set_num_threads`` is per calling thread, so kernels call this each time; what it
    applied is remembered per thread, so that the usual call (the setting unchanged) costs a
    lookup instead of Numba's ~1 us read (a model's 50-100 kernel calls per run at batch 1).
    """
    done = getattr(_applied, "last", None)
    if done is not None and done[0] == _num_threads:
        return done[1]
    import numba

    n = 1 if SPINNING_OPENMP else min(_num_threads, numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != n:  # per thread in Numba; setting it costs ~5 us
        numba.set_num_threads(n)
    _applied.last = (_num_threads, n)
    return n


def serial_or_parallel(size: int, parallel_min: int, serial, parallel):
    """``parallel`` (the thread count applied for it, :func:`numba_threads`) for ``size`` elements of
    work from ``parallel_min`` on, else ``serial``: the one rule of the two-form kernels, whose
    parallel start costs more than a small array's work."""
    if size >= parallel_min:
        numba_threads()
        return parallel
    return serial


def parallel_chunks(size: int, parallel_min: int, jobs: int) -> int:
    """How many contiguous runs a chunked kernel (``prange(chunks)``) splits its ``jobs`` into for ``size``
    elements of work: one per thread (at most one per job) from ``parallel_min`` on, else one, which starts
    no parallel region (:func:`serial_or_parallel`'s rule, for kernels of one form)."""
    return 1 if size < parallel_min else max(1, min(numba_threads(), jobs))


_blas_limit_applied: Optional[int] = None


def apply_blas_threads() -> None:
    """Limit numpy's BLAS pool to the configured count (once per change: threadpoolctl costs ~1 ms)."""
    global _blas_limit_applied
    if _blas_limit_applied != _num_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=_num_threads, user_api="blas")
        _blas_limit_applied = _num_threads
