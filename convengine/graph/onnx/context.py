"""What a converter or a folder is handed, and the registries they enter.

A *converter* (``@converter("Conv", attrs=(...))``) turns one ONNX node whose data inputs
are activations into IR nodes (:meth:`NodeContext.emit`); a *folder* (``@folder(...)``)
evaluates one ONNX node whose inputs are all constants, with numpy, in both "worlds" (see
:mod:`convengine.graph.onnx`). ``attrs`` lists the attributes the function understands: any
other attribute on the node is reported as unsupported before the function runs. A
function that cannot handle a node raises :class:`Unsupported` with the reason; the driver
collects every such reason over the whole model into one error.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

if TYPE_CHECKING:  # annotations only: the driver imports this module
    from .driver import Importer

#: Two worlds: 0 has the exported batch size, 1 another one (see :mod:`convengine.graph.onnx`).
WORLDS = (0, 1)


class Unsupported(Exception):
    """A node cannot be imported; the message says why (collected, then reported together)."""


def same_value(a: np.ndarray, b: np.ndarray) -> bool:
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b))


class NodeContext:
    """One ONNX node being converted: its attributes and inputs, and shortcuts into the importer."""

    def __init__(self, importer: Importer, index: int, node, label: str):
        self.imp = importer
        self.index = index
        self.node = node
        self.label = label
        self.op = node.op_type
        self.opset = importer.opset
        self.attrs = {a.name: attribute_value(importer.onnx, a) for a in node.attribute}
        base = node.name or f"{node.op_type}_{index}"
        self.name = importer.fresh_node(base)
        self.inputs = list(node.input)
        self.outputs = list(node.output)

    # attributes
    def check_attrs(self, allowed) -> None:
        unknown = sorted(set(self.attrs) - set(allowed))
        if unknown:
            raise Unsupported(f"attribute{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                              f"{'are' if len(unknown) > 1 else 'is'} not supported")

    def attr(self, key: str, default=None):
        return self.attrs.get(key, default)

    def int_attr(self, key: str, default: int) -> int:
        return int(self.attrs.get(key, default))

    def ints_attr(self, key: str, default=None):
        value = self.attrs.get(key)
        return default if value is None else [int(v) for v in value]

    # inputs
    def input(self, k: int) -> str:
        return self.inputs[k] if k < len(self.inputs) else ""

    def activation(self, k: int = 0) -> str:
        name = self.input(k)
        if not name:
            raise Unsupported(f"input {k} is missing")
        return name

    def const(self, k: int, what: str) -> Optional[np.ndarray]:
        """The constant value of input ``k`` (``None`` when omitted); it must not depend on the inputs."""
        name = self.input(k)
        if not name:
            return None
        if name not in self.imp.consts:
            raise Unsupported(f"{what} (input {name!r}) must be a constant (an initializer or a Constant), "
                              f"but it is computed from the graph's inputs")
        a, b = self.imp.consts[name]
        if not same_value(a, b):
            raise Unsupported(f"{what} (input {name!r}) depends on the batch size")
        return a

    def worlds(self, k: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        name = self.input(k)
        if name not in self.imp.consts:
            raise Unsupported(f"{what} (input {name!r}) must be a constant or computable from the known "
                              f"dimensions, but it is computed from the graph's data")
        return self.imp.consts[name]

    def shapes(self, k: int = 0):
        name = self.activation(k)
        return self.imp.shape(name, 0), self.imp.shape(name, 1)

    def emit(self, op: str, inputs: list[str], attrs: Optional[dict] = None, *, outputs=None, name=None) -> None:
        outs = outputs if outputs is not None else self.outputs[:1]
        self.imp.emit(op, inputs, outs, dict(attrs or {}), name or self.name)

    def only_first_output(self, what: str) -> None:
        """Optional extra outputs (Dropout's mask, MaxPool's indices...) must be unused."""
        for extra in self.outputs[1:]:
            if extra and self.imp.consumers.get(extra):
                raise Unsupported(f"its output {extra!r} ({what}) is used, but only the first output is supported")


def attribute_value(onnx, attribute):
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", "replace") for v in value]
    return value


def batch_axes(shape_a, shape_b) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(shape_a, shape_b)) if a != b]


def show_shape(shape, n_axes) -> str:
    """``shape`` for messages, with ``N`` at the batch axes ``n_axes``: ``(N, 3, 224, 224)``."""
    return "(" + ", ".join("N" if i in n_axes else str(d) for i, d in enumerate(shape)) + ")"


def check_legacy_broadcast(ctx: NodeContext) -> None:
    if ctx.int_attr("broadcast", 0) and "axis" in ctx.attrs:
        raise Unsupported("legacy broadcast with an axis attribute (opset < 7) is not supported")


def onnx_reshape(shape, target, allowzero: int = 0) -> Optional[tuple[int, ...]]:
    """ONNX Reshape's output shape, or ``None`` when the target does not fit ``shape``."""
    out = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            if i >= len(shape):
                return None
            d = shape[i]
        out.append(int(d))
    if out.count(-1) > 1 or any(d < -1 for d in out):
        return None
    total = math.prod(shape)
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    return tuple(out) if math.prod(out) == total else None

def fresh_name(base: str, taken: set) -> str:
    """``base``, or ``base_2``, ``base_3``... whichever is free first; recorded as taken."""
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def axes_of(ctx: NodeContext, required: bool) -> Optional[list[int]]:
    """The ``axes`` attribute, or (later opsets) the constant input 1; ``None`` when neither is given."""
    if "axes" in ctx.attrs:
        return ctx.ints_attr("axes")
    value = ctx.const(1, "the axes")
    if value is None:
        if required:
            raise Unsupported("the axes are missing")
        return None
    return [int(v) for v in value.reshape(-1)]


# -- registries ----------------------------------------------------------------------------------

#: ``{ONNX op: (converter, attributes it understands)}``
CONVERTERS: dict[str, tuple[Callable[[NodeContext], None], tuple[str, ...]]] = {}
#: ``{ONNX op: (folder, attributes it understands)}``
FOLDERS: dict[str, tuple[Callable[[NodeContext, list], list], tuple[str, ...]]] = {}
#: ``{ONNX op: handler}`` for ops that read activations but make constants (``Shape``, ``Size``).
SPECIAL: dict[str, Callable[[NodeContext], None]] = {}


def converter(*ops: str, attrs: tuple[str, ...] = ()):
    """Register ``fn(ctx)`` as the converter of ``ops`` (nodes with activation inputs)."""

    def register(fn):
        for op in ops:
            CONVERTERS[op] = (fn, attrs)
        return fn

    return register


def folder(*ops: str, attrs: tuple[str, ...] = ()):
    """Register ``fn(ctx, values) -> [outputs]`` as the folder of ``ops`` (nodes whose inputs are all constant).

    ``values`` holds one world's input values (``None`` for an omitted input); the function is
    called once per world.
    """

    def register(fn):
        for op in ops:
            FOLDERS[op] = (fn, attrs)
        return fn

    return register


def special(op: str):
    """Register ``fn(ctx)`` for ``op``, a node that reads an activation's shape, not its values."""

    def register(fn):
        SPECIAL[op] = fn
        return fn

    return register
