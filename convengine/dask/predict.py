"""``predict``: a model over a dask array of images, block by block, on a Dask cluster (dask-ml's ``ParallelPostFit``).

Everything that can be wrong is checked on the client before anything runs on the cluster:
the model loads, it has one input and one output, the images have its input's shape and
dtype, the plan fits it. Then the model goes to the workers once (:class:`.worker.ModelPlugin`,
prepared there once; a worker that cannot prepare it fails the call, here) and the result is a
lazy array whose every chunk is one task on the prepared model.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import warnings
import weakref
from contextlib import suppress
from typing import Optional, Union

import dask.array as da
import distributed
import numpy as np
from dask.base import tokenize

from ..core.engine import Engine
from ..graph.network import Graph
from ..graph.plan import PlanSet, PlanWarning
from ..models.loading import load_model
from .cluster import resolve_client
from .io import read
from .worker import ModelPlugin, run_chunk, worker_status

log = logging.getLogger(__name__)

#: Images per chunk when the images are not already a chunked dask array. ResNet-50 at 32
#: images a chunk spent under 1% of a chunk's time on anything but the model (docs/scale-out.md).
DEFAULT_BATCH_SIZE = 32


def as_graph(model) -> Graph:
    """A :class:`Graph` from a graph, a zoo name or the path of an ``.onnx`` file."""
    if isinstance(model, Graph):
        graph = model
    elif isinstance(model, (str, os.PathLike)):
        graph = load_model(os.fspath(model))
    else:
        raise TypeError(f"model must be a convengine Graph, a zoo name or an .onnx path, got {type(model).__name__}")
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError(f"model {graph.name!r} has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs; "
                         "predict runs models of one input and one output")
    return graph


def as_images(images, graph: Graph, batch_size: Optional[int] = None) -> da.Array:
    """``images`` (a dask or numpy array, or a ``.npy``/``.zarr`` path) checked against ``graph``'s input, chunked.

    Chunks are ``batch_size`` images (default: a dask array's own chunks on the first axis,
    else :data:`DEFAULT_BATCH_SIZE`) and whole images on the other axes.
    """
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(images, (str, os.PathLike)):
        images = read(images, batch_size or DEFAULT_BATCH_SIZE)
    elif isinstance(images, np.ndarray):
        images = da.from_array(images, chunks=(batch_size or DEFAULT_BATCH_SIZE,) + images.shape[1:])
    elif not isinstance(images, da.Array):
        raise TypeError("images must be a dask array, a numpy array or the path of a .npy file or .zarr store, "
                        f"got {type(images).__name__}")
    spec = graph.inputs[0]
    expected = "(N, " + ", ".join(str(d) for d in spec.shape[1:]) + ")"
    if images.ndim != len(spec.shape) or tuple(images.shape[1:]) != tuple(spec.shape[1:]):
        raise ValueError(f"images: model {graph.name!r} takes images of shape {expected}, got {tuple(images.shape)}")
    if images.dtype != np.dtype(spec.dtype):
        raise ValueError(f"images: model {graph.name!r} takes {spec.dtype} images, got {images.dtype} "
                         f"(convert them first: images.astype({spec.dtype!r}))")
    if any(math.isnan(c) for c in images.chunks[0]):
        raise ValueError("images: unknown chunk sizes on the first axis; call images.compute_chunk_sizes() first")
    if images.shape[0] == 0:
        raise ValueError("images: no images (the first axis is empty)")
    chunks = {axis: -1 for axis in range(1, images.ndim)}
    if batch_size is not None:
        chunks[0] = batch_size
    return images.rechunk(chunks)


def as_plans(plan, graph: Graph) -> Optional[PlanSet]:
    """A plan or plans file (path, its JSON, a :class:`PlanSet` or ``None``), checked to fit ``graph``."""
    if plan is None:
        return None
    plans = plan if isinstance(plan, PlanSet) else PlanSet.read(plan)
    plans.check(graph)
    return plans


#: Plugin names each client has registered: the model is pickled and sent once per client, not per call.
_registered: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def register(client: distributed.Client, plugin: ModelPlugin) -> dict:
    """Send ``plugin`` to every worker and wait for each to prepare it; ``{worker: status}`` afterwards.

    A worker that fails to prepare fails this call with its error, and the plugin is taken
    back, so that no worker is left without the model and none joining later tries again.
    A plugin of the same name (same model, weights, policy, plan) already registered stays:
    the scheduler ignores the new one (``idempotent``), and this client does not even send it.
    """
    names = _registered.setdefault(client, set())
    if plugin.name not in names:
        try:
            client.register_plugin(plugin, name=plugin.name)
        except Exception:
            with suppress(Exception):
                client.unregister_worker_plugin(plugin.name)
            raise
        names.add(plugin.name)
    return {address: models[plugin.name] for address, models in client.run(worker_status).items()
            if plugin.name in models}


def predict(model, images, *, client: Union[distributed.Client, str, None] = None, batch_size: Optional[int] = None,
            policy="auto", plan=None) -> da.Array:
    """The outputs of ``model`` for ``images``, as a lazy dask array chunked like the images on the first axis.

    ``model``: a :class:`convengine.graph.Graph`, a zoo name or an ``.onnx`` path (one input,
    one output). ``images``: NCHW images of the model's input shape and dtype, as a dask array,
    a numpy array, or the path of a ``.npy`` file or ``.zarr`` store the workers can read.
    ``client``: a :class:`distributed.Client` or a scheduler address; ``None`` takes the current
    client, or starts the embedded :class:`distributed.LocalCluster` (:func:`.resolve_client`).
    ``batch_size``: images per chunk (see :func:`as_images`). ``policy``: the engine's policy on
    the workers. ``plan``: a plan or plans file (path, its JSON, or a :class:`PlanSet`); each
    worker runs the plan for its hardware, or ``policy`` with a :class:`PlanWarning` when the
    file has none.

    Raises ``ValueError``/``TypeError`` for a model, images or plan that do not fit, before any
    work; ``ConnectionError`` when no scheduler answers at an address.
    """
    graph = as_graph(model)
    images = as_images(images, graph, batch_size)
    plans = as_plans(plan, graph)
    Engine(policy=policy)  # a bad policy fails here, not on every worker
    client = resolve_client(client)
    batch = max(images.chunks[0])
    structure = pickle.dumps((graph.name, graph.inputs, graph.outputs, graph.nodes))
    plans_json = plans.to_json() if plans is not None else None  # the JSON, not a path: workers need not see it
    name = f"convengine-{graph.name}-{tokenize(structure, graph.params, policy, plans_json, batch)}"
    status = register(client, ModelPlugin(name, graph, policy=policy, plans=plans_json, batch=batch,
                                          plans_source=plans.source if plans is not None else ""))
    _report_plans(status, plans is not None)
    out_rest = tuple(graph.shapes[graph.outputs[0]][1:])
    dtype = graph.inputs[0].dtype
    out_index = (0,) + tuple(range(images.ndim, images.ndim + len(out_rest)))
    return da.blockwise(run_chunk, out_index, images, tuple(range(images.ndim)), concatenate=True,
                        new_axes=dict(zip(out_index[1:], out_rest)), dtype=dtype,
                        meta=np.empty((0,) * len(out_index), dtype), name=f"{name}-{tokenize(images.name)}",
                        plugin=name, output_shape=out_rest, out_dtype=dtype)


def _report_plans(status: dict, planned: bool) -> None:
    for address, model in sorted(status.items()):
        threads = model["threads"]
        log.info("worker %s: %s, %d thread%s, %s", address, model["model"], threads, "s" * (threads != 1), model["plan"])
        if planned and not model["planned"]:
            warnings.warn(f"worker {address}: {model['plan']}", PlanWarning, stacklevel=3)
