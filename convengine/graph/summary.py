"""Per-layer table of a graph: output shape, parameters, multiply-accumulates, backend.

MACs are counted as the course tables count them: convolutions (the direct algorithm's
multiply-accumulates, whatever backend runs them) and dense layers; pooling, activations
and additions count zero. Parameters are the layer's weights and biases; batch-norm
running statistics are buffers, not parameters, as in PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Optional

from ..core.problem import ConvProblem
from ..runtime.tables import format_table
from .ir import Node
from .ops import conv_problem_args

if TYPE_CHECKING:  # annotations only: the Graph class sits above this module
    from .network import Graph

BUFFER_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


@dataclass
class LayerRow:
    name: str
    op: str
    output_shape: tuple
    params: int
    macs: int
    backend: str = "-"


@dataclass
class Summary:
    model: str
    layers: list[LayerRow]

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.layers)

    def to_dict(self) -> dict:
        return {"model": self.model, "layers": [asdict(r) for r in self.layers],
                "total": {"params": self.total_params, "macs": self.total_macs}}

    def __str__(self) -> str:
        rows = [(r.name, r.op, "x".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.macs:,}", r.backend)
                for r in self.layers]
        total = ("total", "", "", f"{self.total_params:,}", f"{self.total_macs:,}", "")
        table = format_table(("layer", "op", "output shape", "params", "MACs", "backend"), rows, right=(3, 4),
                             footer=[total], rules=True)
        return f"model: {self.model}\n{table}"


def node_macs(node: Node, shapes: dict, batch: int = 1) -> int:
    if node.op == "Conv":
        x, w = shapes[node.inputs[0]], shapes[node.inputs[1]]
        return ConvProblem.from_shapes((batch,) + tuple(x[1:]), w, **conv_problem_args(node)).macs
    if node.op in ("Gemm", "MatMul"):  # (batch x ...) outputs, each an inner product of length K
        a = shapes[node.inputs[0]]
        inner = a[0] if node.attrs.get("transA") else a[-1]
        return batch * math.prod(shapes[node.outputs[0]][1:]) * inner
    return 0


def summarize(graph: Graph, compiled=None, input_shape: Optional[tuple] = None) -> Summary:
    """Rows for every node; ``input_shape`` (with batch) defaults to batch 1."""
    batch = input_shape[0] if input_shape else 1
    backends = compiled.layer_backends if compiled is not None else {}
    rows = []
    for node in graph.nodes:
        params = sum(graph.params[n].size for n in node.inputs
                     if n in graph.params and not n.endswith(BUFFER_SUFFIXES))
        out_shape = (batch,) + tuple(graph.shapes[node.outputs[0]][1:])
        rows.append(LayerRow(node.name, node.op, out_shape, int(params), int(node_macs(node, graph.shapes, batch)),
                             backends.get(node.name, "-")))
    return Summary(graph.name, rows)
