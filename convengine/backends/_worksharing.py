"""Jobs handed out at run time to the threads of a Numba parallel kernel, not split up front.

Why: Numba's ``prange`` (OpenMP layer) gives each thread an equal, fixed share. A worker
that sleeps between kernels (``OMP_WAIT_POLICY=PASSIVE``) starts its share tens of
microseconds late, and a shared virtual CPU may run it slower than the calling thread; with
fixed shares the caller then waits for it at the end of every kernel. Here each thread
starts on its own contiguous range (so neighbouring jobs, which share inputs, stay on one
core) and, when that is done, takes the jobs still left in the other ranges, one at a time.

Usage inside a ``parallel=True`` kernel::

    claims = job_claims(n_jobs, numba.get_num_threads())
    for me in prange(claims.shape[0]):
        job = next_job(claims, me)
        while job >= 0:
            ...   # job in [0, n_jobs)
            job = next_job(claims, me)
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: int64s between two threads' counters: one 64-byte cache line each, so that claiming a job
#: does not invalidate the other thread's counter.
_STRIDE = 8
#: Column of a claims row holding the end of that thread's range (the counter is column 0).
_END = 1


@intrinsic
def _fetch_add(typingctx, array, index, value):
    """``old = array[index]; array[index] += value; return old``, atomically (int64 array)."""
    if not (isinstance(array, types.Array) and array.dtype == types.int64 and array.ndim == 1
            and isinstance(index, types.Integer) and isinstance(value, types.Integer)):
        return None
    sig = types.int64(array, index, value)

    def codegen(context, builder, sig, args):
        arr = context.make_array(sig.args[0])(context, builder, args[0])
        i = context.cast(builder, args[1], sig.args[1], types.int64)
        ptr = cgutils.gep(builder, arr.data, i)
        amount = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, amount, "monotonic")

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


@numba.njit(inline="always")
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
