"""Fleet tuning: one plan per kind of machine in a Dask cluster, gathered into one plans file.

Workers are grouped by hardware fingerprint (:func:`convengine.runtime.hardware.host_fingerprint`:
CPU model and flags, cores, BLAS, versions). Each group is tuned once, on one of its workers,
as a task pinned there: two workers on one machine would tune the same thing and, measuring at
the same time, disturb each other's timings. The plans come back as one :class:`PlanSet`,
which ``predict(plan=...)`` and ``convengine run --plan`` read on any machine, each picking
the plan for its own hardware.
"""

from __future__ import annotations

from typing import Optional, Union

import distributed

from ..graph.plan import PlanSet
from .cluster import resolve_client
from .predict import as_graph
from .worker import fingerprint, tune_here


def machines(client: distributed.Client) -> dict[str, list[str]]:
    """``{hardware digest: [worker addresses]}`` of the cluster's workers, addresses sorted."""
    groups: dict[str, list[str]] = {}
    for address, (digest, _) in client.run(fingerprint).items():
        groups.setdefault(digest, []).append(address)
    return {digest: sorted(addresses) for digest, addresses in groups.items()}


def tune(model, client: Union[distributed.Client, str, None] = None, *, batch: int = 1, budget_s: float = 1.0,
         max_rel_error: Optional[float] = None, output=None) -> PlanSet:
    """Tune ``model`` on every kind of machine of the cluster; the plans, one per hardware fingerprint.

    ``model`` and ``client`` are as for :func:`.predict`; ``batch``, ``budget_s`` and
    ``max_rel_error`` as for ``convengine tune``. ``output``, when given, is the plans file to
    write. A worker whose plan comes back keyed by another fingerprint than it reported (its
    host changed under it) fails the call rather than filing a plan under the wrong machine.
    """
    graph = as_graph(model)
    client = resolve_client(client)
    groups = machines(client)
    if not groups:
        raise RuntimeError(f"the cluster at {client.scheduler.address} has no workers to tune on")
    chosen = {digest: addresses[0] for digest, addresses in groups.items()}
    graph = graph.__class__(graph.name, graph.inputs, graph.outputs, graph.nodes, graph.params)  # no compiled state
    [shared] = client.scatter([graph], workers=sorted(chosen.values()), broadcast=True, hash=False)
    futures = {digest: client.submit(tune_here, shared, batch, budget_s, max_rel_error, workers=[address],
                                     allow_other_workers=False, pure=False, key=f"convengine-tune-{graph.name}-{digest}")
               for digest, address in chosen.items()}
    plans = []
    for digest, plan in zip(futures, client.gather(list(futures.values()))):
        if plan.hardware != digest:
            raise RuntimeError(f"worker {chosen[digest]} reported hardware {digest} but tuned on {plan.hardware}")
        plans.append(plan)
    result = PlanSet.of(plans, source=f"plans for {graph.name}")
    if output is not None:
        result.save(output)
    return result
