"""What runs inside a Dask worker process: the model, prepared once, and the functions tasks call.

:class:`ModelPlugin` is a :class:`distributed.WorkerPlugin`: registering it sends the model
(graph and weights, pickled once) to every worker, now and any that joins later (a worker
restarted after a crash too), and each worker prepares it once, in ``setup``: backends chosen,
weights packed, Numba kernels loaded. Tasks then only look it up (:func:`run_chunk`), so a
chunk costs its compute and nothing per task is re-sent or re-prepared, Ray's stateful
``map_batches`` with Dask's machinery.

Thread budget: a worker started with T threads runs convengine with T threads and one chunk
at a time (one lock per process, whichever models it holds), because convengine's kernels
already spread one chunk over every thread they are given. Running T chunks at once with T
threads each would oversubscribe the cores T-fold; the extra Dask threads of the worker only wait.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections import Counter
from typing import Optional

import numpy as np
from distributed import WorkerPlugin, get_worker

from ..core.engine import Engine
from ..graph.executor import CompiledGraph
from ..graph.plan import PlanSet, this_hardware, tune_plan
from ..runtime.hardware import host_fingerprint
from ..runtime.threads import get_num_threads, set_num_threads

#: Preparations of each model (by plugin name) in this process: 1 each, however many chunks ran.
PREPARED: Counter = Counter()
#: One chunk at a time in this process, with all the worker's threads (see the module docstring).
_ONE_CHUNK_AT_A_TIME = threading.Lock()


class ModelPlugin(WorkerPlugin):
    """A convengine model, prepared once on every worker of the cluster it is registered with.

    ``graph`` is a :class:`convengine.graph.Graph` (sent without any compiled state),
    ``policy`` the engine's policy, ``plans`` the JSON of a plan or plans file (or ``None``)
    and ``plans_source`` where it came from (for messages), ``batch`` the chunk size
    preparation targets. ``idempotent``: registering a plugin of the
    same name again (the same model, weights, policy and plan) leaves the prepared one in place.
    """

    idempotent = True

    def __init__(self, name: str, graph, *, policy="auto", plans: Optional[dict] = None, batch: int = 1,
                 plans_source: str = ""):
        self.name = name
        self.plans_source = plans_source
        self.graph = copy.copy(graph)
        self.graph._compiled = None  # the caller's prepared state stays with the caller
        self.policy = policy
        self.plans = plans
        self.batch = batch
        self._reset()

    def _reset(self) -> None:
        self.compiled = None
        self.plan_message = "no plan: the engine's policy chooses"
        self.planned = False
        self.threads = 0
        self.chunks = 0
        self.compute_s = 0.0

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("compiled", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset()

    async def setup(self, worker) -> None:
        # in a thread, not on the worker's event loop: preparing a large model takes seconds,
        # and a blocked loop misses heartbeats
        await asyncio.get_running_loop().run_in_executor(None, self.prepare, worker.state.nthreads)

    def prepare(self, threads: int) -> None:
        """Choose the plan for this machine, set convengine's threads to the worker's, prepare the model."""
        set_num_threads(threads)
        self.threads = get_num_threads()
        plan = None
        if self.plans is not None:
            plans = PlanSet.read(self.plans)
            plans.source = self.plans_source or plans.source
            choice = plans.choose(self.graph, backends=Engine().registry.names())
            plan, self.plan_message, self.planned = choice.plan, choice.message, choice.plan is not None
        self.compiled = CompiledGraph(self.graph, Engine(policy=self.policy), plan=plan, batch=self.batch)
        PREPARED[self.name] += 1

    def run(self, images: np.ndarray) -> np.ndarray:
        """The model's output for one chunk, one chunk at a time in this worker."""
        with _ONE_CHUNK_AT_A_TIME:
            start = time.perf_counter()
            output = self.compiled.run(images)
            self.compute_s += time.perf_counter() - start
            self.chunks += 1
        return output

    def status(self) -> dict:
        return {"model": self.graph.name, "prepared": PREPARED[self.name], "chunks": self.chunks,
                "compute_s": self.compute_s, "threads": self.threads, "plan": self.plan_message, "planned": self.planned,
                "hardware": this_hardware()}


def _plugin(name: str) -> ModelPlugin:
    try:
        worker = get_worker()
    except ValueError:
        raise RuntimeError("convengine.dask arrays compute on the Dask cluster they were made for, not on dask's "
                           "local schedulers: client.compute(array), or array.compute(scheduler=client)") from None
    plugin = worker.plugins.get(name)
    if not isinstance(plugin, ModelPlugin):
        raise RuntimeError(f"worker {worker.address} has no convengine model {name!r}: compute the array on the "
                           "cluster whose client predict() was given")
    return plugin


def run_chunk(images: np.ndarray, plugin: str, output_shape: tuple, out_dtype: str) -> np.ndarray:
    """The task run on each chunk: the worker's prepared model over ``images``, output checked.

    ``output_shape`` is the output of one image; a worker that returns anything else (a
    different model, a broken backend) fails the task naming itself, rather than handing
    Dask a block that disagrees with the array's metadata.
    """
    model = _plugin(plugin)
    output = np.asarray(model.run(images))
    expected = (len(images),) + tuple(output_shape)
    if output.shape != expected or output.dtype != np.dtype(out_dtype):
        raise RuntimeError(f"worker {get_worker().address}: model {model.graph.name!r} returned {output.shape} "
                           f"{output.dtype} for a chunk of {len(images)} images; expected {expected} {out_dtype}")
    return output


def worker_status(dask_worker) -> dict:
    """``{plugin name: status}`` for every convengine model on this worker (``client.run`` passes the worker)."""
    return {name: plugin.status() for name, plugin in dask_worker.plugins.items() if isinstance(plugin, ModelPlugin)}


def fingerprint() -> tuple[str, dict]:
    """This worker's hardware: ``(digest, host fingerprint)``, the key plans are stored under."""
    return this_hardware(), host_fingerprint()


def tune_here(graph, batch: int, budget_s: float, max_rel_error: Optional[float]):
    """The task fleet tuning runs on one worker of each kind of machine: a plan tuned here, with the worker's threads."""
    set_num_threads(get_worker().state.nthreads)
    return tune_plan(graph, batch=batch, budget_s=budget_s, max_rel_error=max_rel_error)
