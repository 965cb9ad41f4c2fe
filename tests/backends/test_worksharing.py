"""Jobs claimed at run time (``backends.direct._worksharing``): each job exactly once, whatever the thread count."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from numba import prange

from convengine.backends.direct._worksharing import job_claims, next_job


@numba.njit(parallel=True, cache=True)
def _claim_all(n_jobs, workers, seen, owner):
    claims = job_claims(n_jobs, workers)
    for me in prange(claims.shape[0]):
        job = next_job(claims, me)
        while job >= 0:
            seen[job] += 1
            owner[job] = me
            job = next_job(claims, me)
    return claims.shape[0]


@pytest.mark.parametrize("n_jobs", [0, 1, 2, 7, 224, 1000])
@pytest.mark.parametrize("workers", [1, 2, 3, 16])
def test_every_job_is_claimed_exactly_once(n_jobs, workers):
    seen = np.zeros(n_jobs, np.int64)
    owner = np.full(n_jobs, -1, np.int64)
    rows = _claim_all(n_jobs, workers, seen, owner)
    assert rows == max(1, min(workers, n_jobs))  # no idle thread rows when jobs are few
    np.testing.assert_array_equal(seen, 1)
    assert ((owner >= 0) & (owner < rows)).all()


def test_one_thread_takes_the_jobs_in_order():
    """With one claims row, jobs come out 0, 1, 2, ...: the serial order the kernels' cache reuse assumes."""

    @numba.njit
    def order(n):
        claims = job_claims(n, 1)
        out = np.empty(n, np.int64)
        for i in range(n):
            out[i] = next_job(claims, 0)
        return out, next_job(claims, 0)

    jobs, after = order(50)
    np.testing.assert_array_equal(jobs, np.arange(50))
    assert after == -1


def test_a_thread_finishes_the_ranges_of_the_others():
    """A thread whose own range is done takes what another has left: here thread 0 claims everything."""

    @numba.njit
    def drain(n, workers):
        claims = job_claims(n, workers)
        got = np.zeros(n, np.int64)
        job = next_job(claims, 0)
        while job >= 0:
            got[job] += 1
            job = next_job(claims, 0)
        return got

    np.testing.assert_array_equal(drain(101, 3), 1)
