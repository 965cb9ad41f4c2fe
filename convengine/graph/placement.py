"""Where tensors live: concatenations and channel shuffles planned as views of one buffer.

A ``Concat`` of NCHW tensors along the channels copies each input into the result. Planned
instead, the result is one buffer allocated per run, and each input is *placed*: it lives in
its channels of that buffer from the moment it is produced. A convolution writes there
itself (the engine's ``out=``, see :class:`~convengine.core.contract.OutputSlice`); any other
producer's result is copied there once, as the ``Concat`` would have. The ``Concat`` then
only binds its output to the buffer: no copy (Inception's and GoogLeNet's branches, SqueezeNet's
fire modules).

DenseNet concatenates all earlier features again in every layer (``Concat(x0, f1)``,
``Concat(x0, f1, f2)``, ...): planned from the last one back, the block's features are placed
once in the last, widest buffer and every earlier ``Concat`` is a prefix of it, where each
layer used to copy all of them. Except where a ``Concat``'s one reader runs in place over it
(torchvision's DenseNet held NCHW: batch norm + ReLU after each): that one keeps its copy, which
its reader then overwrites; reading the shared buffer into a new array measured slower. Where the
executor may hold it blocked (float32), the batch norm + ReLU writes a new blocked array anyway
(:mod:`.blocking`), and every ``Concat`` of the block is a view.

ShuffleNet's channel shuffle, ``Reshape(N, g, C/g, H, W) -> Transpose(0, 2, 1, 3, 4) ->
Reshape(N, C, H, W)`` after a ``Concat`` whose inputs each lie within one of the ``g`` groups,
places each input with a channel step of ``g`` (the shuffled order), so the shuffle costs
nothing and its halves (``Slice``/``Split``) are views of the buffer.

A tensor has one place: one that two ``Concat`` nodes want at different places (or a graph
input, a parameter, a graph output) is copied by the ``Concat`` as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..core.layouts import NCHW, NCHW16C, channel_slice, whole_blocks
from .ir import Node

if TYPE_CHECKING:  # annotations only: the Graph class sits above this module
    from .network import Graph


@dataclass(frozen=True)
class Slot:
    """Channels ``start``, ``start + step``, ... (``channels`` of them) of the buffer named ``buffer``."""

    buffer: str
    start: int
    channels: int
    step: int = 1

    def of(self, array: np.ndarray) -> np.ndarray:
        """This slot of ``array``, the buffer itself: an ``(N, channels, H, W)`` view, or of a buffer held
        channel-blocked (``(N, C/16, H, W, 16)``: :mod:`.blocking`) its ``(N, channels/16, H, W, 16)`` blocks."""
        layout = NCHW16C if array.ndim == 5 else NCHW  # (a blocked buffer has whole-block slots only: .blocking)
        return channel_slice(array, self.start, self.channels, self.step, layout)

    @property
    def whole_blocks(self) -> bool:
        """Whether the slot is whole blocks of 16 channels, step 1: one it can have in a blocked buffer."""
        return whole_blocks(self.start, self.channels, self.step)


@dataclass(frozen=True)
class Gather:
    """A ``Concat`` (and the channel shuffle after it) that binds its output to a buffer slot.

    ``inputs`` are the ``Concat``'s, each with its slot; those whose home is elsewhere
    (or nowhere) are copied there when the step runs.
    """

    node: Node
    output: str
    slot: Slot
    inputs: tuple[tuple[str, Slot], ...]
    absorbed: tuple[Node, ...] = ()  # the shuffle's Reshape, Transpose, Reshape

    def describe(self) -> str:
        return "+".join([self.node.op] + [n.op for n in self.absorbed])


@dataclass(frozen=True)
class Placement:
    """The plan: buffers (``{name: (C_total, H, W)}``), tensors' homes, and the ``Concat`` nodes that became views."""

    buffers: dict[str, tuple[int, ...]]
    homes: dict[str, Slot]
    gathers: dict[str, Gather]  # by Concat node name


def _channel_concat(node: Node, graph: Graph) -> bool:
    shape = graph.shapes.get(node.outputs[0], ())
    return (node.op == "Concat" and len(shape) == 4 and node.attrs.get("axis", 1) % 4 == 1
            and bool(node.inputs) and all(node.inputs))


def _shuffle_after(concat: Node, graph: Graph, readers) -> Optional[tuple[tuple[Node, ...], int]]:
    """The ``Reshape -> Transpose -> Reshape`` channel shuffle that alone reads ``concat``'s output, and its groups."""
    chain, tensor = [], concat.outputs[0]
    for op in ("Reshape", "Transpose", "Reshape"):
        users = readers.get(tensor, [])
        if tensor in graph.outputs or len(users) != 1 or users[0].op != op:
            return None
        chain.append(users[0])
        tensor = users[0].outputs[0]
    first, transpose, last = chain
    n, c, h, w = graph.shapes[concat.outputs[0]]
    grouped = graph.shapes.get(first.outputs[0], ())
    if (len(grouped) != 5 or grouped[0] != n or grouped[3:] != (h, w) or grouped[1] * grouped[2] != c
            or tuple(transpose.attrs.get("perm", ())) != (0, 2, 1, 3, 4) or graph.shapes.get(last.outputs[0]) != (n, c, h, w)
            or any(list(r.attrs.get("shape", [None]))[0] not in (0, -1) for r in (first, last))):  # the batch stays free
        return None
    return tuple(chain), grouped[1]


def plan_placement(graph: Graph, produced: set[str], readers: dict[str, list[Node]],
                   overwritten: set[str] = frozenset()) -> Placement:
    """Place the inputs of every channel ``Concat`` of ``graph`` (see the module docstring).

    ``produced`` are the tensors the executor's steps produce (a placed tensor needs a
    producer to put it there); ``readers`` is :func:`.ir.consumers` of the graph's nodes.
    A ``Concat`` whose output is in ``overwritten`` (its one reader may run in place over it)
    keeps its copy: that reader then works in place on a private array, which measured faster
    than reading a shared buffer and writing a new array (DenseNet-121: 4-10%, see
    docs/performance.md); the ``Concat``'s inputs may still be placed in a wider one's buffer.
    """
    protected = set(graph.outputs) | set(graph.params) | {s.name for s in graph.inputs}
    buffers: dict[str, tuple[int, ...]] = {}
    homes: dict[str, Slot] = {}
    gathers: dict[str, Gather] = {}
    concats = [n for n in graph.nodes if _channel_concat(n, graph) and n.outputs[0] not in overwritten]
    for node in reversed(concats):  # outer and wider ones first
        sizes = [graph.shapes[t][1] for t in node.inputs]
        shuffle = _shuffle_after(node, graph, readers)
        if shuffle is not None:
            per_group = sum(sizes) // shuffle[1]
            bounds = np.cumsum([0] + sizes)
            if any(a // per_group != (b - 1) // per_group for a, b in zip(bounds[:-1], bounds[1:])):
                shuffle = None  # an input across two groups: not one strided slot
        absorbed, groups = shuffle if shuffle is not None else ((), 1)
        output = absorbed[-1].outputs[0] if absorbed else node.outputs[0]
        slot = homes.get(output)
        if slot is None:
            slot = _prefix_of(node.inputs, homes) if not absorbed and output not in graph.outputs else None
            if slot is None:
                buffers[node.name] = graph.shapes[node.outputs[0]][1:]
                slot = Slot(node.name, 0, sum(sizes))
        per_group = sum(sizes) // groups
        inputs, offset = [], 0
        for tensor, size in zip(node.inputs, sizes):
            group, within = divmod(offset, per_group)
            place = Slot(slot.buffer, slot.start + slot.step * (within * groups + group), size, slot.step * groups)
            if tensor in produced and tensor not in protected and tensor not in homes:
                homes[tensor] = place
            inputs.append((tensor, place))
            offset += size
        gathers[node.name] = Gather(node, output, slot, tuple(inputs), absorbed)
    return Placement(buffers, homes, gathers)


def _prefix_of(inputs: list[str], homes: dict[str, Slot]) -> Optional[Slot]:
    """The slot spanning ``inputs`` when they already lie side by side in one buffer, in order (DenseNet's earlier layers)."""
    slots = [homes.get(t) for t in inputs]
    if any(s is None for s in slots) or len(set(inputs)) != len(inputs):
        return None
    first = slots[0]
    at = first.start
    for s in slots:
        if s.buffer != first.buffer or s.step != first.step or s.start != at:
            return None
        at += s.step * s.channels
    return Slot(first.buffer, first.start, sum(s.channels for s in slots), first.step)
