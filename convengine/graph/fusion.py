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

Squeeze-and-excitation blocks (EfficientNet, MobileNetV3, RegNetY) become one step too
(:func:`squeeze_excitations`): ``GlobalAveragePool -> 1x1 Conv -> activation -> 1x1 Conv ->
Sigmoid or HardSigmoid -> Mul`` by the block's input. Its two convolutions act on one pixel
per image: as convolutions they cost a backend call each (and a parallel kernel start) for a
few hundred multiply-adds; here they are two small matrix products on the channel means, and
the scaling multiplies the input in place when nothing reads it after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Union

import numpy as np

from ..core.epilogue import Epilogue, apply_activation
from .ir import Node
from .ops import OPS

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


#: The gates a squeeze-and-excitation block ends with.
GATES = ("Sigmoid", "HardSigmoid")


@dataclass(frozen=True)
class SqueezeExcitation:
    """``y = x * gate(W2 @ act(W1 @ mean(x) + b1) + b2)``, per image and channel; the nodes it replaces.

    ``x`` is the block's input; ``absorbed`` its nodes, the ``Mul`` last (the block runs there).
    ``reduce``/``expand`` are the two 1x1 ``Conv`` nodes, ``activation`` and ``gate`` the
    epilogue activations after them (as :class:`~convengine.core.epilogue.Epilogue` takes them).
    """

    x: str
    absorbed: tuple[Node, ...]
    reduce: Node
    expand: Node
    activation: Union[str, tuple]
    gate: Union[str, tuple]

    @property
    def output(self) -> str:
        return self.absorbed[-1].outputs[0]

    def describe(self) -> str:
        return "+".join(node.op for node in self.absorbed)

    def prepare(self, params, dtype) -> Callable[[np.ndarray, bool], np.ndarray]:
        """``run(x, in_place) -> y``, the weights laid out once. ``in_place``: ``y`` may be written over ``x``."""
        stages = []
        for conv, spec in ((self.reduce, self.activation), (self.expand, self.gate)):
            weight = params[conv.inputs[1]]
            matrix = np.ascontiguousarray(weight.reshape(weight.shape[0], -1).T, dtype=dtype)  # (in, out)
            bias = params[conv.inputs[2]].astype(dtype) if len(conv.inputs) > 2 and conv.inputs[2] else None
            epilogue = Epilogue(activation=spec)
            stages.append((matrix, bias, epilogue.activation, epilogue.params))

        pool = OPS["GlobalAveragePool"].run
        pool_node = self.absorbed[0]

        def run(x: np.ndarray, in_place: bool) -> np.ndarray:
            n, c = x.shape[:2]
            scale = pool(pool_node, [x])[0].reshape(n, c)
            for matrix, bias, activation, act_params in stages:
                scale = scale @ matrix
                if bias is not None:
                    scale += bias
                apply_activation(scale, activation, act_params)
            return np.multiply(x, scale.reshape(n, c, *(1,) * (x.ndim - 2)), out=x if in_place else None)

        return run


def squeeze_excitations(graph: Graph, consumers: dict[str, list[Node]]) -> dict[str, SqueezeExcitation]:
    """``{Mul node name: block}`` for every squeeze-and-excitation block whose intermediates nothing else reads.

    Both convolutions must be 1x1, unpadded, stride 1, ungrouped, with constant weights; the
    reduction's activation any one :func:`fusible_epilogues` recognises; the gate a
    ``Sigmoid`` or ``HardSigmoid``; the ``Mul`` of the block's input by the gate, either order.
    """
    producer = {out: node for node in graph.nodes for out in node.outputs}

    def readers(tensor: str) -> list[Node]:
        return [] if tensor in graph.outputs else consumers.get(tensor, [])

    def sole_reader(tensor: str, op) -> Optional[Node]:
        users = readers(tensor)
        return users[0] if len(users) == 1 and users[0].op in op else None

    def pointwise(conv: Optional[Node]) -> bool:
        if conv is None or conv.op != "Conv" or conv.inputs[1] not in graph.params:
            return False
        if len(conv.inputs) > 2 and conv.inputs[2] and conv.inputs[2] not in graph.params:
            return False
        attrs = conv.attrs
        return (graph.params[conv.inputs[1]].shape[2:] == (1, 1) and int(attrs.get("group", 1)) == 1
                and tuple(attrs.get("strides", (1, 1))) == (1, 1) and not any(attrs.get("pads", ()))
                and tuple(attrs.get("dilations", (1, 1))) == (1, 1))

    blocks = {}
    for mul in graph.nodes:
        if mul.op != "Mul" or len(mul.inputs) != 2:
            continue
        for gate_out, x in (mul.inputs, mul.inputs[::-1]):
            gate = producer.get(gate_out)
            if gate is None or gate.op not in GATES or sole_reader(gate_out, ("Mul",)) is not mul:
                continue
            expand = producer.get(gate.inputs[0])
            if not pointwise(expand) or sole_reader(expand.outputs[0], GATES) is not gate:
                continue
            reduce, act_nodes, activation = _reduction_before(expand.inputs[0], producer, readers)
            if not pointwise(reduce) or sole_reader(expand.inputs[0], ("Conv",)) is not expand:
                continue
            pool = producer.get(reduce.inputs[0])
            if (pool is None or pool.op != "GlobalAveragePool" or pool.inputs[0] != x
                    or sole_reader(pool.outputs[0], ("Conv",)) is not reduce
                    or graph.shapes.get(x) != graph.shapes.get(mul.outputs[0])):
                continue
            gate_spec = ACTIVATION_NODES[gate.op](gate)
            blocks[mul.name] = SqueezeExcitation(x, (pool, reduce, *act_nodes, expand, gate, mul), reduce, expand,
                                                 activation, gate_spec)
            break
    return blocks


def _reduction_before(hidden: str, producer: dict[str, Node],
                      readers) -> tuple[Optional[Node], list[Node], Union[None, str, tuple]]:
    """The node whose output an activation turned into ``hidden``, the activation's nodes and spec (``None, [], None``: none)."""
    last = producer.get(hidden)
    if last is None:
        return None, [], None
    if last.op in ACTIVATION_NODES:
        source = last.inputs[0]
    elif last.op == "Mul" and len(last.inputs) == 2:  # SiLU: Mul(t, Sigmoid(t))
        source = next((t for t in last.inputs if getattr(producer.get(t), "op", "") != "Sigmoid"), last.inputs[0])
    else:
        return None, [], None
    nodes, activation = _activation_after(source, readers)
    if not nodes or nodes[-1] is not last:
        return None, [], None
    return producer.get(source), nodes, activation
