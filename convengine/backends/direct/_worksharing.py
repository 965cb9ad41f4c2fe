"""Jobs handed out at run time to the threads of a Numba parallel kernel, not split up front.

Why: Numba's ``prange`` (OpenMP layer) gives each thread an equal, fixed share. A worker
that sleeps between kernels (``OMP_WAIT_POLICY=PASSIVE``) starts its share tens of
microseconds late, and a shared virtual CPU may run it slower than the calling thread; with
fixed shares the caller then waits for it at the end of every kernel. Here each thread
starts on its own contiguous range (so neighbouring jobs, which share inputs, stay on one
core) and, when that is done, takes the jobs still left in the other ranges, one at a time.

Two phases in one kernel (a copy every job of the second reads, then the jobs themselves)
need no second kernel start: :func:`phase_done` is a barrier on a counter of finished jobs.
It only ever waits for jobs that a running thread has claimed (a thread that has not woken
yet claims none), so the wait is at most one job long.

Usage inside a ``parallel=True`` kernel::

    claims = job_claims(n_jobs, workers)
    for me in prange(claims.shape[0]):
        while True:
            job = next_job(claims, me)
            if job < 0:
                break
            ...   # job in [0, n_jobs)
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: int64s between two threads' counters: one 64-byte cache line each, so that claiming a job
#: does not invalidate the other thread's counter.
_STRIDE = 8
#: Column of a claims row holding the end of that thread's range (the counter is column 0).
_END = 1


def _is_int64_vector(array) -> bool:
    return isinstance(array, types.Array) and array.dtype == types.int64 and array.ndim == 1


def _element(context, builder, sig, args):
    arr = context.make_array(sig.args[0])(context, builder, args[0])
    return cgutils.gep(builder, arr.data, context.cast(builder, args[1], sig.args[1], types.int64))


@intrinsic
def _fetch_add(typingctx, array, index, value):
    """``old = array[index]; array[index] += value; return old``, atomically (int64 array).

    Acquire-release: what this thread wrote before is visible to a thread that reads the sum.
    """
    if not (_is_int64_vector(array) and isinstance(index, types.Integer) and isinstance(value, types.Integer)):
        return None
    sig = types.int64(array, index, value)

    def codegen(context, builder, sig, args):
        amount = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", _element(context, builder, sig, args), amount, "acq_rel")

    return sig, codegen


@intrinsic
def _load_acquire(typingctx, array, index):
    """``array[index]``, read atomically: a fresh value on every call of a waiting loop."""
    if not (_is_int64_vector(array) and isinstance(index, types.Integer)):
        return None
    sig = types.int64(array, index)

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_element(context, builder, sig, args), "acquire", 8)

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def job_claims(n_jobs, workers):
    """Per-thread counters over ``n_jobs`` jobs in ``workers`` contiguous ranges, one row per thread."""
    workers = max(1, min(workers, n_jobs))
    claims = np.empty((workers, _STRIDE), np.int64)
    for t in range(workers):
        claims[t, 0] = n_jobs * t // workers
        claims[t, _END] = n_jobs * (t + 1) // workers
    return claims


@numba.njit(cache=True, nogil=True)  # a call per job; inlined copies cost compile time, not run time
def next_job(claims, me):
    """The next unclaimed job for thread ``me``: from its own range, then from the others'; -1 when none is left."""
    workers = claims.shape[0]
    flat = claims.reshape(-1)
    for k in range(workers):
        t = (me + k) % workers
        if claims[t, 0] < claims[t, _END]:  # a plain read first: no atomic on a finished range
            job = _fetch_add(flat, t * _STRIDE, 1)
            if job < claims[t, _END]:
                return job
    return -1


@numba.njit(cache=True, nogil=True)
def phase_counter():
    """A counter of finished jobs for :func:`phase_done` (one cache line)."""
    return np.zeros(_STRIDE, np.int64)


@numba.njit(inline="always")
def phase_done(counter, finished_here, total):
    """Add this thread's ``finished_here`` jobs to ``counter``, then wait until all ``total`` are done."""
    _fetch_add(counter, 0, finished_here)
    while _load_acquire(counter, 0) < total:
        pass
