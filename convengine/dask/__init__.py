"""Scale-out on Dask: batch inference over a cluster, and tuning for every kind of machine in a fleet.

Needs the ``dask`` extra (``pip install "convengine[dask]"``: ``dask[array]``, ``distributed``,
``zarr``); without it, importing this module is one ``ImportError`` saying so.

* :func:`predict` runs a model over a dask array (or a numpy array, ``.npy`` file or ``.zarr``
  store) of images, chunk by chunk, and returns a lazy dask array. The model goes to each
  worker once and is prepared there once (:class:`ModelPlugin`).
* :func:`tune` tunes a model on every kind of machine in the cluster and returns one plans
  file's worth of plans, a plan per hardware fingerprint.
* Without a client, both use the current one, or start a :class:`distributed.LocalCluster` of
  worker processes sized to this machine (:func:`resolve_client`).

A worker with T threads runs convengine with T threads, one chunk at a time (see
:mod:`.worker`); docs/scale-out.md has the measurements and how to start a real cluster.
"""

from __future__ import annotations

import importlib.util

_MISSING = [name for name in ("dask", "distributed", "zarr") if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ImportError(f"convengine.dask needs the 'dask' extra ({', '.join(_MISSING)} not installed): "
                      "pip install \"convengine[dask]\"", name=_MISSING[0])

from .cluster import connect, describe, local_cluster, resolve_client, worker_environment  # noqa: E402  (after the check above: a missing extra gives the install hint, not a bare ImportError)
from .fleet import machines, tune  # noqa: E402  (after the check above: a missing extra gives the install hint, not a bare ImportError)
from .io import check_output, read, save  # noqa: E402  (after the check above: a missing extra gives the install hint, not a bare ImportError)
from .predict import DEFAULT_BATCH_SIZE, as_graph, as_images, predict  # noqa: E402  (after the check above: a missing extra gives the install hint, not a bare ImportError)
from .worker import PREPARED, ModelPlugin, worker_status  # noqa: E402  (after the check above: a missing extra gives the install hint, not a bare ImportError)

__all__ = ["DEFAULT_BATCH_SIZE", "ModelPlugin", "PREPARED", "as_graph", "as_images", "check_output", "connect",
           "describe", "local_cluster", "machines", "predict", "read", "resolve_client", "save", "status", "tune",
           "worker_environment", "worker_status"]


def status(client=None) -> dict:
    """``{worker address: {model key: {model, prepared, chunks, compute_s, threads, plan, planned, hardware}}}``.

    ``prepared`` counts preparations of that model in the worker's process (1, however many
    chunks ran); ``chunks`` and ``compute_s`` are what it ran since.
    """
    return resolve_client(client).run(worker_status)
