"""Which Dask cluster the work goes to: a given client, a scheduler address, the current client, or a local one.

The embedded default is a :class:`distributed.LocalCluster` of *processes* sized by Dask's own
rule for this machine (``nprocesses_nthreads``: one single-threaded worker per core up to 4
cores, then about sqrt(cores) workers of several threads). Processes, not threads: convengine's
kernels release the GIL, but a model prepared once per process and one chunk per worker at a
time (see :mod:`.worker`) scale by adding workers without threads fighting over the cores.
"""

from __future__ import annotations

import logging
from typing import Optional, Union

import dask
import distributed
from dask.system import CPU_COUNT
from distributed.deploy.utils import nprocesses_nthreads

from ..runtime.allocator import MALLOC_ENVIRONMENT
from ..runtime.threads import BLAS_THREAD_TIMEOUT, WORKER_SPIN_COUNT

log = logging.getLogger(__name__)

#: The LocalCluster this module started for a caller who gave no client (closed at exit).
_embedded: Optional[distributed.Client] = None


def worker_environment(threads: int) -> dict[str, str]:
    """Environment variables for a worker process running convengine with ``threads`` threads.

    Dask's nanny sets ``OMP_NUM_THREADS`` and the BLAS thread counts to 1 before a worker
    starts; these put them back to the worker's thread count (convengine's own count is set
    when a model is prepared there, :class:`.worker.ModelPlugin`). A worker imports numpy before
    convengine, so the thread-pool settings convengine makes at import
    (:mod:`convengine.runtime.threads`) come too late there: they are set here instead, with
    :data:`~convengine.runtime.allocator.MALLOC_ENVIRONMENT` (against Dask's own
    ``MALLOC_TRIM_THRESHOLD_=65536``, which handed every freed activation back to the system:
    ResNet-50 at batch 16 took 19,041 page faults a run in a worker, 579-2,893 with these).
    All must be in the environment the worker process *starts*
    with (glibc and OpenBLAS read theirs when they load): Dask's
    ``distributed.nanny.pre-spawn-environ`` setting, which :func:`local_cluster` uses and
    docs/scale-out.md shows for ``dask worker``.
    """
    return {
        "OMP_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": "PASSIVE",
        "GOMP_SPINCOUNT": WORKER_SPIN_COUNT,
        "OPENBLAS_THREAD_TIMEOUT": BLAS_THREAD_TIMEOUT,
        **MALLOC_ENVIRONMENT,
    }


def local_cluster(workers: Optional[int] = None, *, threads_per_worker: Optional[int] = None,
                  **kwargs) -> distributed.LocalCluster:
    """A LocalCluster of worker processes for convengine: ``workers`` (default: Dask's rule for this machine).

    ``threads_per_worker`` defaults to the cores divided among the workers. The workers start
    with :func:`worker_environment`. ``kwargs`` go to :class:`distributed.LocalCluster`
    (``dashboard_address``, ``memory_limit``, ``env`` for variables read after start-up...).
    """
    if workers is None:
        workers, threads = nprocesses_nthreads(CPU_COUNT)
    elif not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    else:
        threads = max(1, CPU_COUNT // workers)
    threads = threads_per_worker or threads
    pre_spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **worker_environment(threads)}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}):  # read as each nanny is made
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, **kwargs)


def connect(address: str, *, timeout: float = 10.0) -> distributed.Client:
    """A client of the scheduler at ``address``; ``ConnectionError`` naming it when none answers in ``timeout`` s."""
    if not isinstance(address, str) or not address:
        raise ValueError(f"scheduler address must be a string like 'tcp://host:8786', got {address!r}")
    try:
        return distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:  # distributed raises OSError subclasses and asyncio's TimeoutError
        raise ConnectionError(f"no Dask scheduler answers at {address} (waited {timeout:g} s): {exc}") from None


def resolve_client(client: Union[distributed.Client, str, None] = None) -> distributed.Client:
    """``client`` itself, a client of the scheduler at ``client`` (an address), the current client, or a new LocalCluster's.

    The LocalCluster started here is the *embedded default*: it is started once per process,
    becomes the current client (so later calls and ``.compute()`` use it), and closes at exit.
    """
    global _embedded
    if isinstance(client, distributed.Client):
        return client
    if isinstance(client, str):
        return connect(client)
    if client is not None:
        raise TypeError(f"client must be a distributed.Client, a scheduler address or None, got {type(client).__name__}")
    try:
        return distributed.default_client()
    except ValueError:  # no current client: start the embedded one
        pass
    cluster = local_cluster()
    _embedded = distributed.Client(cluster)
    workers = cluster.scheduler_info["workers"].values()
    log.info("started a LocalCluster of %d worker processes x %s threads (dashboard %s)", len(workers),
             "/".join(sorted({str(w["nthreads"]) for w in workers})), cluster.dashboard_link)
    return _embedded


def describe(client: distributed.Client) -> str:
    """``"3 workers (2 x 1 thread, 1 x 4 threads) at tcp://..."``: the cluster in one line."""
    workers = list(client.scheduler_info(n_workers=-1)["workers"].values())
    counts: dict[int, int] = {}
    for w in workers:
        counts[w["nthreads"]] = counts.get(w["nthreads"], 0) + 1
    shapes = ", ".join(f"{n} x {t} thread{'s' if t > 1 else ''}" for t, n in sorted(counts.items()))
    return f"{len(workers)} worker{'s' if len(workers) != 1 else ''} ({shapes}) at {client.scheduler.address}"
