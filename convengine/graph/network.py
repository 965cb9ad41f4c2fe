"""The :class:`Graph` users hold: a network's nodes and weights, which it can run, summarise and save.

The IR's parts (:mod:`.ir`) sit below everything else in the package; this class sits above
the executor, shape inference and the summary, so that ``graph.run(x)`` needs no import inside
a method (and none of those modules imports it back)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .executor import CompiledGraph
from .ir import Node, TensorSpec, topological
from .shapes import infer_shapes
from .summary import summarize
from .weights import load_weights, save_weights


@dataclass
class Graph:
    """A CNN as an ordered list of nodes (topologically sorted at construction)."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[str]
    nodes: list[Node]
    params: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # inferred, batch dimension as 1

    def __post_init__(self):
        self.nodes = topological(self.nodes, {s.name for s in self.inputs} | set(self.params))
        self.shapes = infer_shapes(self)
        self._compiled = None

    # -- execution ---------------------------------------------------------------------------
    def compile(self, engine=None, *, fold_batchnorm: bool = True, plan=None, precompile: bool = True):
        """Prepare every layer (backend choice, weight packing) once; returns an executable graph.

        ``precompile`` compiles the layers' Numba kernels ahead, in parallel processes, where
        they are not in the disk cache yet (:mod:`convengine.runtime.precompile`).
        """
        self._compiled = CompiledGraph(self, engine=engine, fold_batchnorm=fold_batchnorm, plan=plan,
                                       precompile=precompile)
        return self._compiled

    def run(self, inputs):
        """Run on one array (single-input graphs) or ``{input name: array}``; compiles on first use."""
        if self._compiled is None:
            self.compile()
        return self._compiled.run(inputs)

    def summary(self, input_shape=None):
        """Per-layer rows (name, op, output shape, parameters, MACs, backend) and totals."""
        return summarize(self, self._compiled, input_shape)

    # -- weights -----------------------------------------------------------------------------
    def save_weights(self, path) -> None:
        save_weights(self, path)

    def load_weights(self, path) -> None:
        load_weights(self, path)
        self._compiled = None  # packed weights are stale

