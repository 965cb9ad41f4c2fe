"""Weights as ``.npz`` files, by PyTorch ``state_dict`` names; never pickle.

Loading checks the whole file against the graph before changing anything: a missing,
extra or mis-shaped tensor is one error listing every offender, and the graph keeps its
old weights. ``num_batches_tracked`` entries (a PyTorch training counter) are ignored.
"""

from __future__ import annotations

import zipfile
from typing import TYPE_CHECKING

import numpy as np

from .ir import GraphError

if TYPE_CHECKING:  # annotations only: the Graph class sits above this module
    from .network import Graph

IGNORED_SUFFIXES = (".num_batches_tracked",)


def save_weights(graph: Graph, path) -> None:
    np.savez(path, **graph.params)


def load_weights(graph: Graph, path) -> None:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files if not name.endswith(IGNORED_SUFFIXES)}
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise GraphError(f"{path}: holds object arrays or is malformed ({exc}); weights must be plain numeric arrays") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise GraphError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    missing = sorted(set(graph.params) - set(arrays))
    extra = sorted(set(arrays) - set(graph.params))
    misshaped = [f"{n} {arrays[n].shape} (expected {graph.params[n].shape})"
                 for n in sorted(set(arrays) & set(graph.params)) if arrays[n].shape != graph.params[n].shape]
    non_numeric = [f"{n} ({arrays[n].dtype})" for n in arrays if arrays[n].dtype.kind not in "fiu"]
    problems = [f"{label}: {', '.join(items)}" for label, items in
                (("missing", missing), ("unexpected", extra), ("wrong shape", misshaped), ("not numeric", non_numeric)) if items]
    if problems:
        raise GraphError(f"{path}: weights do not match graph {graph.name!r}; " + "; ".join(problems))
    for name, array in arrays.items():
        graph.params[name] = np.ascontiguousarray(array, dtype=graph.params[name].dtype)
