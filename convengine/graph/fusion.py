"""Which elementwise nodes after a convolution become its epilogue.

A convolution (with its batch norm already folded in) whose output only feeds an ``Add``
of a same-shaped tensor, and/or then only an activation, can apply those itself: the ResNet
block's ``conv -> bn -> relu`` and ``conv -> bn -> add(shortcut) -> relu``, and MobileNet's
and EfficientNet's activations as ONNX writes them (:data:`ACTIVATION_NODES`):

- ``Relu``; ``Clip`` (ReLU6 is ``Clip(0, 6)``); ``HardSwish``; ``HardSigmoid``; ``Sigmoid``
  (squeeze-and-excitation's gate);
- SiLU, ``x * sigmoid(x)``: a ``Sigmoid`` of the output and a ``Mul`` of the output by it,
  the output read by those two nodes and nothing else.

An intermediate tensor that another node reads too, or that the graph returns, stops the
pattern: it must exist. The absorbed nodes disappear from the schedule; the fused
convolution runs where the last of them was, so the shortcut tensor is always computed by then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

from .ir import Node

if TYPE_CHECKING:  # annotations only: the Graph class sits above this module
    from .network import Graph


#: Single activation nodes, by operator: the epilogue activation (``Engine.prepare``'s
#: ``activation``, see :mod:`convengine.core.epilogue`) each one is, given the node.
ACTIVATION_NODES = {
    "Relu": lambda node: "relu",
    "Clip": lambda node: ("clip", float(node.attrs.get("min", -math.inf)), float(node.attrs.get("max", math.inf))),
    "HardSwish": lambda node: "hardswish",
    "HardSigmoid": lambda node: ("hardsigmoid", float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))),
    "Sigmoid": lambda node: "sigmoid",
}


@dataclass(frozen=True)
class EpilogueFusion:
    """The nodes a convolution absorbs: an optional residual ``Add``, then an optional activation's nodes."""

    absorbed: tuple[Node, ...]
    residual: Optional[str] = None  # the tensor the Add adds to the convolution's output
    activation: Union[None, str, tuple] = None  # as Engine.prepare takes it: "relu", ("clip", 0.0, 6.0), ...

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

    def readers(tensor: str) -> list[Node]:
        return [] if tensor in graph.outputs else consumers.get(tensor, [])

    def sole_consumer(tensor: str) -> Optional[Node]:
        users = readers(tensor)
        return users[0] if len(users) == 1 else None

    fusions = {}
    claimed: set[str] = set()  # an Add of two convolutions' outputs is absorbed by one of them only
    for conv, tensor in conv_outputs.items():
        absorbed: list[Node] = []
        residual = None
        node = sole_consumer(tensor)
        if node is not None and node.op == "Add" and len(node.inputs) == 2 and all(node.inputs) and node.name not in claimed:
            other = node.inputs[1] if node.inputs[0] == tensor else node.inputs[0]
            if other != tensor and graph.shapes.get(other) == graph.shapes.get(tensor) == graph.shapes.get(node.outputs[0]):
                residual = other
                absorbed.append(node)
                tensor = node.outputs[0]
        nodes, activation = _activation_after(tensor, readers)
        absorbed += nodes
        if absorbed:
            fusions[conv] = EpilogueFusion(tuple(absorbed), residual, activation)
            claimed.update(n.name for n in absorbed)
    return fusions


def _activation_after(tensor: str, readers) -> tuple[list[Node], Union[None, str, tuple]]:
    """The activation nodes that alone read ``tensor``, and the epilogue activation they make (``[], None``: none).

    ``readers(tensor)`` lists the nodes reading a tensor (none for a graph output).
    """
    users = readers(tensor)
    if len(users) == 1 and users[0].op in ACTIVATION_NODES and users[0].inputs[:1] == [tensor]:
        node = users[0]
        if node.op == "Clip" and len(node.inputs) > 1 and any(node.inputs[1:]):  # bounds from tensors: not constants
            return [], None
        return [node], ACTIVATION_NODES[node.op](node)
    if len(users) == 2:  # SiLU: Sigmoid(t), then Mul(t, Sigmoid(t)) in either order
        sigmoid = next((n for n in users if n.op == "Sigmoid" and n.inputs == [tensor]), None)
        mul = next((n for n in users if n.op == "Mul" and n is not sigmoid), None)
        if sigmoid is not None and mul is not None and sorted(mul.inputs) == sorted([tensor, sigmoid.outputs[0]]):
            if [n.name for n in readers(sigmoid.outputs[0])] == [mul.name]:
                return [sigmoid, mul], "silu"
    return [], None
