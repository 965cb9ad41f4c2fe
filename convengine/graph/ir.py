"""The graph IR's parts: named tensors flowing through operator nodes, and their order.

Operators and their attributes follow ONNX names and semantics (``Conv``, ``Gemm``,
``MaxPool`` with ``pads``...), so an ONNX file maps onto the IR one node at a time and the
model zoo speaks the same vocabulary. Parameters (weights) live in ``Graph.params`` under
PyTorch ``state_dict`` names. The batch dimension of graph inputs is free (``None``);
every other dimension is fixed, so shapes can be inferred once, at construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class TensorSpec:
    """A graph input: name, shape (``None`` marks the free batch dimension) and dtype."""

    name: str
    shape: tuple[Optional[int], ...]
    dtype: str = "float32"


@dataclass
class Node:
    """One operator application. ``inputs`` name activations or parameters; ``""`` is an omitted optional input."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)


class GraphError(ValueError):
    """The graph, its weights, or an input given to it is not what it must be."""


def consumers(nodes: list[Node]) -> dict[str, list[Node]]:
    """``{tensor: the nodes that read it, in order}``: what batch-norm folding and epilogue fusion
    ask ("is this convolution's output read by one node only, and which?"), built once per graph."""
    readers: dict[str, list[Node]] = {}
    for node in nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    return readers


def topological(nodes: list[Node], available: set[str]) -> list[Node]:
    """Order nodes so each runs after the producers of its inputs (unchanged when already sorted)."""
    names = [node.name for node in nodes]
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise GraphError(f"node names must be unique; repeated: {', '.join(duplicates)}")
    produced_by = {}
    for node in nodes:
        for out in node.outputs:
            if out in produced_by:
                raise GraphError(f"tensor {out!r} is produced by both {produced_by[out].name!r} and {node.name!r}")
            produced_by[out] = node
    for node in nodes:
        for name in node.inputs:
            if name and name not in available and name not in produced_by:
                raise GraphError(f"node {node.name!r} ({node.op}) reads {name!r}, which nothing produces")
    # Repeated passes in the given order (iterative, so deep graphs cannot exhaust the stack);
    # a graph that is already sorted takes one pass.
    ordered, done, pending = [], set(available), list(nodes)
    while pending:
        waiting = []
        for node in pending:
            if all(not name or name in done for name in node.inputs):
                ordered.append(node)
                done.update(node.outputs)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise GraphError(f"graph has a cycle through node {waiting[0].name!r}")
        pending = waiting
    return ordered
