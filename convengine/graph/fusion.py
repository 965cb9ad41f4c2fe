"""Which elementwise nodes after a convolution become its epilogue.

A convolution (with its batch norm already folded in) whose output only feeds an ``Add``
of a same-shaped tensor, and/or then only a ``Relu``, can apply those itself: the ResNet
block's ``conv -> bn -> relu`` and ``conv -> bn -> add(shortcut) -> relu``. The absorbed
nodes disappear from the schedule; the fused convolution runs where the last of them was,
so the shortcut tensor is always computed by then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .ir import Node

if TYPE_CHECKING:  # annotations only: the Graph class sits above this module
    from .network import Graph


@dataclass(frozen=True)
class EpilogueFusion:
    """The nodes a convolution absorbs: an optional residual ``Add``, then an optional ``Relu``."""

    absorbed: tuple[Node, ...]
    residual: Optional[str] = None  # the tensor the Add adds to the convolution's output
    activation: Optional[str] = None

    @property
    def output(self) -> str:
        """The tensor the fused convolution produces (the last absorbed node's output)."""
        return self.absorbed[-1].outputs[0]

    def describe(self) -> str:
        return "+".join(node.op for node in self.absorbed)


def fusible_epilogues(graph: Graph, conv_outputs: dict[str, str],
                      consumers: dict[str, list[Node]]) -> dict[str, EpilogueFusion]:
    """``{conv name: fusion}`` for convolutions (``{name: output tensor}``) whose epilogue can be absorbed.

    ``consumers`` is :func:`.ir.consumers` of the graph's nodes, the map batch-norm folding
    (:mod:`.folding`) reads too; a folded batch norm's output is its convolution's output here.
    """

    def sole_consumer(tensor: str) -> Optional[Node]:
        users = consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in graph.outputs else None

    fusions = {}
    claimed: set[str] = set()  # an Add of two convolutions' outputs is absorbed by one of them only
    for conv, tensor in conv_outputs.items():
        absorbed: list[Node] = []
        residual = activation = None
        node = sole_consumer(tensor)
        if node is not None and node.op == "Add" and len(node.inputs) == 2 and all(node.inputs) and node.name not in claimed:
            other = node.inputs[1] if node.inputs[0] == tensor else node.inputs[0]
            if other != tensor and graph.shapes.get(other) == graph.shapes.get(tensor) == graph.shapes.get(node.outputs[0]):
                residual = other
                absorbed.append(node)
                tensor = node.outputs[0]
                node = sole_consumer(tensor)
        if node is not None and node.op == "Relu":
            activation = "relu"
            absorbed.append(node)
        if absorbed:
            fusions[conv] = EpilogueFusion(tuple(absorbed), residual, activation)
            claimed.update(n.name for n in absorbed)
    return fusions
