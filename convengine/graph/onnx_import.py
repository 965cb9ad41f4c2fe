"""Import ONNX models into the graph IR: ``load_onnx(path | bytes | ModelProto) -> Graph``.

The IR already speaks ONNX's vocabulary, so most nodes map one to one. What needs converting
is converted here, once, at load time:

* attributes that later opsets pass as inputs (``Clip`` min/max, ``Pad`` pads, ``Squeeze`` /
  ``Unsqueeze`` axes, ``Reshape`` shape) must be constants and become attributes;
* ``auto_pad`` becomes explicit ``pads``; ``Softmax`` before opset 13 (coerce-to-2-D) becomes
  ``Flatten -> Softmax -> Reshape`` when it is not already a last-axis softmax;
* ``Constant``, ``ConstantOfShape`` and the shape arithmetic exporters emit
  (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, ``Div``, ``Cast``, ``Slice``...)
  are folded to constants using the known (non-batch) dimensions.

Batch freedom. Graph inputs get a free batch dimension whatever the file says. To tell what
depends on the batch size, the importer evaluates shapes in two "worlds" at once: one with
the batch size the file was exported with (its literal first dimension, or 1) and one with
another batch size. A value equal in both is a constant; one that differs depends on the
batch. A ``Reshape`` target is rewritten so that it works for any batch: an entry equal to
the batch becomes ``0`` (copy the input's dimension), another batch-dependent entry becomes
``-1``, and a literal export batch size (``[1, 9216]`` from a batch-1 export) becomes ``0``.

Anything that cannot be imported (an unknown operator, an unsupported attribute value, a
"constant" input computed from the graph's inputs) is collected over the whole model and
reported in one :class:`GraphError` naming every node (name and index) and operator.

``onnx`` is an optional dependency (``pip install convengine[onnx]``), imported on first use.
"""

from __future__ import annotations

import heapq
import math
import os
from typing import Callable, Optional

import numpy as np

from ..core.arrays import kernel_ready
from .ir import GraphError, Node, TensorSpec
from .network import Graph
from .ops import OPS

__all__ = ["load_onnx", "SUPPORTED_OPS"]

_INSTALL_HINT = "pip install convengine[onnx]"

# Two worlds: 0 has the exported batch size, 1 another one (see the module docstring).
_WORLDS = (0, 1)


def _import_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without onnx
        raise ImportError(f"loading ONNX models needs the 'onnx' package: {_INSTALL_HINT}") from exc
    return onnx


class _Unsupported(Exception):
    """A node cannot be imported; the message says why (collected, then reported together)."""


# -- public entry point --------------------------------------------------------------------------


def load_onnx(model, *, name: Optional[str] = None) -> Graph:
    """Import an ONNX model as a :class:`~convengine.graph.Graph`.

    ``model`` is a path (``str`` / ``os.PathLike``), the serialized bytes, a binary file
    object, or an ``onnx.ModelProto``. Initializers become ``graph.params`` under their ONNX
    names; graph inputs get a free batch dimension (all other dimensions must be known).
    Raises :class:`GraphError` for a file that does not parse, and for every node that cannot
    be imported (all of them listed in one error), before anything runs.
    """
    onnx = _import_onnx()
    proto, label = _read_model(onnx, model)
    return _Importer(onnx, proto, label, name).run()


def _read_model(onnx, source):
    """``(ModelProto, label for messages)``; parse errors become GraphError naming the source."""
    if isinstance(source, onnx.ModelProto):
        proto, label = source, f"model {source.graph.name or '<unnamed>'!r}"
    else:
        if isinstance(source, (str, os.PathLike)):
            label = f"ONNX file {os.fspath(source)!r}"
            with open(source, "rb") as f:  # a missing file is FileNotFoundError, not GraphError
                data = f.read()
            base_dir = os.path.dirname(os.path.abspath(os.fspath(source)))
        elif isinstance(source, (bytes, bytearray, memoryview)):
            data, label, base_dir = bytes(source), "ONNX model bytes", None
        elif hasattr(source, "read"):
            data = source.read()
            label, base_dir = f"ONNX stream {getattr(source, 'name', '<stream>')!r}", None
        else:
            raise TypeError(f"load_onnx needs a path, bytes, a file object or an onnx.ModelProto, "
                            f"got {type(source).__name__}")
        if not data:
            raise GraphError(f"cannot parse {label}: it is empty")
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(data)
        except Exception as exc:
            raise GraphError(f"cannot parse {label} ({len(data)} bytes): the protobuf does not decode "
                             f"({type(exc).__name__}: {exc}); the file is truncated or not an ONNX model") from None
        if base_dir is not None:
            try:
                from onnx.external_data_helper import load_external_data_for_model

                if _uses_external_data(proto):
                    load_external_data_for_model(proto, base_dir)
            except Exception as exc:
                raise GraphError(f"cannot load the external weights of {label}: {type(exc).__name__}: {exc}") from None
    problems = []
    if proto.ir_version <= 0:
        problems.append("no ir_version")
    if not proto.HasField("graph"):
        problems.append("no graph")
    elif not proto.graph.output:
        problems.append("the graph has no outputs")
    if not any(o.domain in ("", "ai.onnx") for o in proto.opset_import):
        problems.append("no opset_import for the default ONNX domain")
    if problems:
        raise GraphError(f"cannot parse {label}: not a valid ONNX model ({'; '.join(problems)}); "
                         f"the file is truncated or corrupt")
    return proto, label


def _uses_external_data(proto) -> bool:
    return any(t.data_location == 1 for t in proto.graph.initializer)  # TensorProto.EXTERNAL


# -- the importer --------------------------------------------------------------------------------


class _Importer:
    def __init__(self, onnx, model, label: str, name: Optional[str]):
        self.onnx = onnx
        self.model = model
        self.label = label
        self.gp = model.graph
        self.name = name or self.gp.name or "onnx_model"
        self.opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        self.consts: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # value in each world
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}  # activations, each world
        self.dtypes: dict[str, str] = {}  # activations
        self.nodes: list[Node] = []
        self.params: dict[str, np.ndarray] = {}
        self.problems: list[str] = []
        self.bad: set[str] = set()  # tensors downstream of a node that could not be imported
        self.node_names: set[str] = set()
        self.tensor_names: set[str] = set()
        self.consumers: dict[str, int] = {}
        self.batch = (1, 7)

    # -- driver ----------------------------------------------------------------------------------
    def run(self) -> Graph:
        gp = self.gp
        for t in gp.initializer:
            self.tensor_names.add(t.name)
        for n in gp.node:
            self.tensor_names.update(n.input)
            self.tensor_names.update(n.output)
            for name in n.input:
                if name:
                    self.consumers[name] = self.consumers.get(name, 0) + 1
        for o in gp.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1
        if gp.sparse_initializer:
            raise GraphError(f"{self.label}: sparse initializers are not supported "
                             f"({[s.values.name for s in gp.sparse_initializer]})")
        for t in gp.initializer:
            try:
                value = self.onnx.numpy_helper.to_array(t)
            except Exception as exc:
                raise GraphError(f"{self.label}: cannot read initializer {t.name!r}: {type(exc).__name__}: {exc}") from None
            self.consts[t.name] = (value, value)
        inputs = self._inputs()
        for index, node in self._sorted_nodes():
            self._convert(index, node)
        outputs = []
        for o in gp.output:
            if o.name in self.bad:
                continue
            if o.name in self.consts:
                self.problems.append(f"graph output {o.name!r} is a constant (it does not depend on the inputs); "
                                     f"constant outputs are not supported")
            elif o.name not in self.shapes:
                self.problems.append(f"graph output {o.name!r} is produced by no node")
            outputs.append(o.name)
        if self.problems:
            count = len(self.problems)
            listing = "\n  ".join(self.problems)
            raise GraphError(f"cannot import {self.label}: {count} problem{'s' if count > 1 else ''}:\n  {listing}\n"
                             f"(the importer supports: {', '.join(SUPPORTED_OPS)})")
        return Graph(self.name, inputs, outputs, self.nodes, self.params)

    def _inputs(self) -> list[TensorSpec]:
        onnx = self.onnx
        dtypes = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64"}
        specs, exported = [], None
        for vi in self.gp.input:
            if vi.name in self.consts:  # an initializer listed as input (IR < 4 style): a weight
                continue
            what = f"{self.label}: input {vi.name!r}"
            if not vi.type.HasField("tensor_type"):
                raise GraphError(f"{what} is not a tensor")
            tt = vi.type.tensor_type
            if tt.elem_type not in dtypes:
                type_name = onnx.TensorProto.DataType.Name(tt.elem_type) if tt.elem_type else "undefined"
                raise GraphError(f"{what} has element type {type_name}; only float32 (FLOAT) and float64 (DOUBLE) "
                                 f"inputs are supported")
            if not tt.HasField("shape"):
                raise GraphError(f"{what} has no shape; every dimension but the first (batch) must be known")
            dims = list(tt.shape.dim)
            if not dims:
                raise GraphError(f"{what} is a scalar; inputs need a leading batch dimension")
            if exported is None and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                exported = int(dims[0].dim_value)
            rest = []
            for axis, d in enumerate(dims[1:], start=1):
                if not d.HasField("dim_value") or d.dim_value <= 0:
                    shown = repr(d.dim_param) if d.HasField("dim_param") else "unknown"
                    raise GraphError(f"{what}: dimension {axis} is {shown}; every dimension but the first "
                                     f"(batch) must be a known size")
                rest.append(int(d.dim_value))
            specs.append(TensorSpec(vi.name, (None,) + tuple(rest), dtypes[tt.elem_type]))
        if exported is not None:
            self.batch = (exported, 7 if exported != 7 else 11)
        for spec in specs:
            self.shapes[spec.name] = tuple((b,) + tuple(spec.shape[1:]) for b in self.batch)
            self.dtypes[spec.name] = spec.dtype
        return specs

    def _sorted_nodes(self):
        """``(index, node)`` in a topological order (the file's own when it already is one)."""
        nodes = list(self.gp.node)
        producer = {}
        for i, n in enumerate(nodes):
            for out in n.output:
                if out:
                    producer[out] = i
        available = set(self.consts) | set(self.shapes)
        waiting = [0] * len(nodes)
        users: dict[int, list[int]] = {}
        for i, n in enumerate(nodes):
            deps = set()
            for name in n.input:
                if not name or name in available:
                    continue
                if name in producer and producer[name] != i:
                    deps.add(producer[name])
                elif name not in producer:
                    self.problems.append(f"{self._label(i, n)}: reads {name!r}, which no node, input or initializer "
                                         f"provides")
                    self.bad.add(name)
            waiting[i] = len(deps)
            for d in deps:
                users.setdefault(d, []).append(i)
        ready = [i for i in range(len(nodes)) if waiting[i] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for u in users.get(i, ()):
                waiting[u] -= 1
                if waiting[u] == 0:
                    heapq.heappush(ready, u)
        if len(order) != len(nodes):
            stuck = [self._label(i, nodes[i]) for i in range(len(nodes)) if waiting[i] > 0]
            raise GraphError(f"cannot import {self.label}: the graph has a cycle through {', '.join(stuck[:5])}")
        return [(i, nodes[i]) for i in order]

    @staticmethod
    def _label(index: int, node) -> str:
        name = f" {node.name!r}" if node.name else ""
        return f"node #{index}{name} ({node.op_type})"

    def _convert(self, index: int, node) -> None:
        label = self._label(index, node)
        op = node.op_type
        outputs = [o for o in node.output if o]
        if node.domain not in ("", "ai.onnx"):
            self.problems.append(f"{label}: operator {node.domain}::{op} is not supported (custom domain)")
            self.bad.update(outputs)
            return
        if op not in _CONVERTERS and op not in _FOLDERS and op not in _SPECIAL:
            self.problems.append(f"{label}: operator {op} is not supported")
            self.bad.update(outputs)
            return
        if any(name in self.bad for name in node.input if name):
            self.bad.update(outputs)  # already reported upstream
            return
        ctx = _NodeContext(self, index, node, label)
        try:
            data = [name for name in node.input if name]
            if op in _SPECIAL:
                _SPECIAL[op](ctx)
            elif op in _FOLDERS and all(name in self.consts for name in data):
                ctx.check_attrs(_FOLDERS[op][1])
                results = [_FOLDERS[op][0](ctx, [self.consts[n][w] if n else None for n in node.input])
                           for w in _WORLDS]
                for k, out in enumerate(node.output):
                    if out:
                        self.consts[out] = (np.asarray(results[0][k]), np.asarray(results[1][k]))
            elif op in _CONVERTERS:
                ctx.check_attrs(_CONVERTERS[op][1])
                _CONVERTERS[op][0](ctx)
            else:
                computed = [n for n in data if n not in self.consts]
                raise _Unsupported(f"{op} is supported only on constants (shape arithmetic), but input "
                                   f"{computed[0]!r} is computed from the graph's inputs")
        except _Unsupported as exc:
            self.problems.append(f"{label}: {exc}")
            self.bad.update(outputs)
        except GraphError as exc:
            self.problems.append(f"{label}: {exc}")
            self.bad.update(outputs)
        except Exception as exc:  # noqa: BLE001 - report, with the others, rather than crash mid-import
            self.problems.append(f"{label}: cannot be converted ({type(exc).__name__}: {exc})")
            self.bad.update(outputs)

    # -- helpers for converters ------------------------------------------------------------------
    def fresh_tensor(self, base: str) -> str:
        return _fresh_name(base, self.tensor_names)

    def fresh_node(self, base: str) -> str:
        return _fresh_name(base, self.node_names)

    def shape(self, name: str, world: int) -> tuple[int, ...]:
        if name in self.consts:
            return tuple(self.consts[name][world].shape)
        return self.shapes[name][world]

    def use_param(self, name: str, what: str = "input") -> None:
        a, b = self.consts[name]
        if not _same(a, b):
            raise _Unsupported(f"{what} {name!r} depends on the batch size; it cannot be a fixed parameter")
        if a.dtype.kind not in "fc":
            raise _Unsupported(f"{what} {name!r} is a {a.dtype} constant used as data; only floating-point "
                               f"tensors are supported")
        self.params[name] = kernel_ready(a)  # (to_array gives read-only views of the file's bytes)

    def add_param(self, base: str, value: np.ndarray) -> str:
        name = self.fresh_tensor(base)
        self.consts[name] = (value, value)
        self.params[name] = kernel_ready(value)
        return name

    def emit(self, op: str, inputs: list[str], outputs: list[str], attrs: dict, name: str) -> None:
        """Append an IR node (or fold it, when every input is a constant and the op has a kernel)."""
        node = Node(name, op, list(inputs), list(outputs), attrs)
        data = [n for n in inputs if n]
        if data and all(n in self.consts for n in data) and OPS[op].run is not None:
            for n in data:
                if not _same(*self.consts[n]):
                    raise _Unsupported(f"input {n!r} depends on the batch size")
            values = OPS[op].run(node, [self.consts[n][0] if n else None for n in inputs])
            for out, value in zip(outputs, values):
                self.consts[out] = (value, value)
            return
        for n in data:
            if n in self.consts:
                self.use_param(n)
        world_shapes = []
        for w in _WORLDS:
            in_shapes = [self.shape(n, w) for n in data]
            try:
                out_shapes = OPS[op].infer(node, in_shapes)
            except GraphError:
                raise
            except Exception as exc:
                raise _Unsupported(f"cannot infer the output shape of {op} from inputs {in_shapes}: "
                                   f"{type(exc).__name__}: {exc}") from exc
            world_shapes.append([tuple(int(d) for d in s) for s in out_shapes])
        dtype = next((self.dtypes[n] for n in data if n in self.dtypes), None)
        if dtype is None:
            dtype = self.params[data[0]].dtype.name
        for k, out in enumerate(outputs):
            self.shapes[out] = (world_shapes[0][k], world_shapes[1][k])
            self.dtypes[out] = dtype
        self.nodes.append(node)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b))


class _NodeContext:
    """One ONNX node being converted: its attributes and inputs, and shortcuts into the importer."""

    def __init__(self, importer: _Importer, index: int, node, label: str):
        self.imp = importer
        self.index = index
        self.node = node
        self.label = label
        self.op = node.op_type
        self.opset = importer.opset
        self.attrs = {a.name: _attribute_value(importer.onnx, a) for a in node.attribute}
        base = node.name or f"{node.op_type}_{index}"
        self.name = importer.fresh_node(base)
        self.inputs = list(node.input)
        self.outputs = list(node.output)

    # attributes
    def check_attrs(self, allowed) -> None:
        unknown = sorted(set(self.attrs) - set(allowed))
        if unknown:
            raise _Unsupported(f"attribute{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
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
            raise _Unsupported(f"input {k} is missing")
        return name

    def const(self, k: int, what: str) -> Optional[np.ndarray]:
        """The constant value of input ``k`` (``None`` when omitted); it must not depend on the inputs."""
        name = self.input(k)
        if not name:
            return None
        if name not in self.imp.consts:
            raise _Unsupported(f"{what} (input {name!r}) must be a constant (an initializer or a Constant), "
                               f"but it is computed from the graph's inputs")
        a, b = self.imp.consts[name]
        if not _same(a, b):
            raise _Unsupported(f"{what} (input {name!r}) depends on the batch size")
        return a

    def worlds(self, k: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        name = self.input(k)
        if name not in self.imp.consts:
            raise _Unsupported(f"{what} (input {name!r}) must be a constant or computable from the known "
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
                raise _Unsupported(f"its output {extra!r} ({what}) is used, but only the first output is supported")


def _attribute_value(onnx, attribute):
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", "replace") for v in value]
    return value


def _batch_axes(shape_a, shape_b) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(shape_a, shape_b)) if a != b]


# -- converters: ONNX node -> IR node(s) ---------------------------------------------------------

_CONVERTERS: dict[str, tuple[Callable[[_NodeContext], None], tuple[str, ...]]] = {}


def converter(*ops: str, attrs: tuple[str, ...] = ()):
    def register(fn):
        for op in ops:
            _CONVERTERS[op] = (fn, attrs)
        return fn

    return register


def _explicit_pads(ctx: _NodeContext, spatial, kernel, strides, dilations) -> list[int]:
    """ONNX ``pads`` ([begin..., end...]) from ``auto_pad`` and ``pads`` for the given spatial sizes."""
    n = len(spatial)
    auto_pad = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto_pad == "NOTSET":
        pads = ctx.ints_attr("pads", [0] * (2 * n))
        if len(pads) != 2 * n:
            raise _Unsupported(f"pads {pads} must have {2 * n} entries for {n} spatial axes")
        if any(p < 0 for p in pads):
            raise _Unsupported(f"negative pads {pads} are not supported")
        return pads
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise _Unsupported(f"auto_pad={auto_pad!r} is not supported (NOTSET, SAME_UPPER, SAME_LOWER, VALID)")
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        begins.append(begin)
        ends.append(end)
    return begins + ends


def _spatial_4d(ctx: _NodeContext, what: str):
    shape_a, shape_b = ctx.shapes(0)
    if len(shape_a) != 4:
        raise _Unsupported(f"only 2-D {what} on 4-D NCHW tensors is supported; the input has shape "
                           f"{_show(shape_a, _batch_axes(shape_a, shape_b))}")
    return shape_a


@converter("Conv", attrs=("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"))
def _conv(ctx: _NodeContext) -> None:
    x = ctx.activation(0)
    shape = _spatial_4d(ctx, "convolution")
    weight = ctx.const(1, "the weight")
    if weight is None:
        raise _Unsupported("the weight input is missing")
    if weight.ndim != 4:
        raise _Unsupported(f"the weight must be 4-D, got shape {weight.shape}")
    kernel = ctx.ints_attr("kernel_shape", list(weight.shape[2:]))
    if tuple(kernel) != tuple(weight.shape[2:]):
        raise _Unsupported(f"kernel_shape {kernel} does not match the weight's shape {weight.shape}")
    strides = ctx.ints_attr("strides", [1, 1])
    dilations = ctx.ints_attr("dilations", [1, 1])
    pads = _explicit_pads(ctx, shape[2:], kernel, strides, dilations)
    inputs = [x, ctx.input(1)]
    if ctx.input(2):
        bias = ctx.const(2, "the bias")
        if bias.shape != (weight.shape[0],):
            raise _Unsupported(f"the bias has shape {bias.shape}, expected ({weight.shape[0]},)")
        inputs.append(ctx.input(2))
    dtype = ctx.imp.dtypes.get(x)
    for k in range(1, len(inputs)):
        value = ctx.imp.consts[inputs[k]][0]
        if dtype is not None and value.dtype.name != dtype:
            raise _Unsupported(f"input {inputs[k]!r} is {value.dtype.name} but the data is {dtype}")
    ctx.emit("Conv", inputs, dict(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                                  group=ctx.int_attr("group", 1)))


def _pool(ctx: _NodeContext, extra: dict) -> None:
    shape = _spatial_4d(ctx, ctx.op)
    kernel = ctx.ints_attr("kernel_shape")
    if not kernel or len(kernel) != 2:
        raise _Unsupported(f"kernel_shape must list 2 sizes, got {kernel}")
    strides = ctx.ints_attr("strides", [1, 1])
    dilations = ctx.ints_attr("dilations", [1, 1])
    ceil_mode = ctx.int_attr("ceil_mode", 0)
    if ceil_mode and (ctx.attr("auto_pad", "NOTSET") or "NOTSET") != "NOTSET":
        raise _Unsupported(f"ceil_mode=1 with auto_pad={ctx.attr('auto_pad')!r} is not supported")
    pads = _explicit_pads(ctx, shape[2:], kernel, strides, dilations)
    ctx.emit(ctx.op, [ctx.activation(0)], dict(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                                              ceil_mode=ceil_mode, **extra))


@converter("MaxPool", attrs=("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides"))
def _maxpool(ctx: _NodeContext) -> None:
    if ctx.int_attr("storage_order", 0) != 0:
        raise _Unsupported(f"storage_order={ctx.attr('storage_order')} is not supported (only 0, row major)")
    ctx.only_first_output("the indices")
    _pool(ctx, {})


@converter("AveragePool", attrs=("auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads",
                                 "strides"))
def _avgpool(ctx: _NodeContext) -> None:
    _pool(ctx, dict(count_include_pad=ctx.int_attr("count_include_pad", 0)))


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx: _NodeContext) -> None:
    shape, _ = ctx.shapes(0)
    if len(shape) < 3:
        raise _Unsupported(f"needs an input of rank >= 3, got shape {shape}")
    ctx.emit(ctx.op, [ctx.activation(0)])


@converter("BatchNormalization", attrs=("epsilon", "momentum", "spatial", "is_test", "consumed_inputs",
                                        "training_mode"))
def _batchnorm(ctx: _NodeContext) -> None:
    if ctx.int_attr("training_mode", 0) != 0:
        raise _Unsupported("training_mode=1 is not supported (inference only)")
    if ctx.int_attr("spatial", 1) != 1:
        raise _Unsupported("spatial=0 (per-activation statistics) is not supported")
    ctx.only_first_output("a training statistic")
    if len([n for n in ctx.inputs if n]) != 5:
        raise _Unsupported("needs 5 inputs (X, scale, B, mean, var)")
    ctx.emit("BatchNormalization", ctx.inputs[:5], dict(epsilon=float(ctx.attr("epsilon", 1e-5))))


@converter("LRN", attrs=("alpha", "beta", "bias", "size"))
def _lrn(ctx: _NodeContext) -> None:
    if "size" not in ctx.attrs:
        raise _Unsupported("attribute size is required")
    ctx.emit("LRN", [ctx.activation(0)], dict(size=int(ctx.attrs["size"]), alpha=float(ctx.attr("alpha", 1e-4)),
                                             beta=float(ctx.attr("beta", 0.75)), bias=float(ctx.attr("bias", 1.0))))


@converter("Relu", "Sigmoid", "Tanh", attrs=("consumed_inputs",))
def _unary(ctx: _NodeContext) -> None:
    ctx.emit(ctx.op, [ctx.activation(0)])


@converter("LeakyRelu", attrs=("alpha", "consumed_inputs"))
def _leaky_relu(ctx: _NodeContext) -> None:
    ctx.emit("LeakyRelu", [ctx.activation(0)], dict(alpha=float(ctx.attr("alpha", 0.01))))


@converter("Clip", attrs=("min", "max", "consumed_inputs"))
def _clip(ctx: _NodeContext) -> None:
    attrs = {}
    for k, key in ((1, "min"), (2, "max")):
        value = ctx.const(k, f"the {key} bound")
        if value is not None:
            if value.size != 1:
                raise _Unsupported(f"the {key} bound must be a scalar, got shape {value.shape}")
            attrs[key] = float(value.reshape(()))
        elif key in ctx.attrs:
            attrs[key] = float(ctx.attrs[key])
    ctx.emit("Clip", [ctx.activation(0)], attrs)


@converter("Softmax", attrs=("axis",))
def _softmax(ctx: _NodeContext) -> None:
    x = ctx.activation(0)
    shape_a, shape_b = ctx.shapes(0)
    rank = len(shape_a)
    if ctx.opset >= 13:
        ctx.emit("Softmax", [x], dict(axis=ctx.int_attr("axis", -1)))
        return
    axis = ctx.int_attr("axis", 1)
    if not -rank <= axis < rank:
        raise _Unsupported(f"axis {axis} is out of range for rank {rank}")
    axis %= rank
    if axis == rank - 1:  # coerce-to-2-D over the last axis is a plain last-axis softmax
        ctx.emit("Softmax", [x], dict(axis=axis))
        return
    # Opset < 13: softmax over all axes from `axis` on, as one row: Flatten, Softmax, Reshape back.
    flat = ctx.imp.fresh_tensor(f"{ctx.outputs[0]}/flat")
    soft = ctx.imp.fresh_tensor(f"{ctx.outputs[0]}/softmax")
    ctx.emit("Flatten", [x], dict(axis=axis), outputs=[flat], name=ctx.imp.fresh_node(f"{ctx.name}/flatten"))
    ctx.emit("Softmax", [flat], dict(axis=1), outputs=[soft])
    target = list(shape_a)
    for i in _batch_axes(shape_a, shape_b):
        target[i] = -1
    ctx.emit("Reshape", [soft], dict(shape=target), outputs=ctx.outputs[:1],
             name=ctx.imp.fresh_node(f"{ctx.name}/reshape"))


@converter("Dropout", attrs=("ratio", "is_test", "seed", "consumed_inputs"))
def _dropout(ctx: _NodeContext) -> None:
    training = ctx.input(2)
    if training and training in ctx.imp.consts:
        value = ctx.imp.consts[training][0]
        if value.size and bool(value.reshape(-1)[0]):
            raise _Unsupported("training_mode=true is not supported (inference only)")
    ctx.only_first_output("the mask")
    ctx.emit("Dropout", [ctx.activation(0)])


@converter("Identity")
def _identity(ctx: _NodeContext) -> None:
    ctx.emit("Identity", [ctx.activation(0)])


@converter("Gemm", attrs=("alpha", "beta", "transA", "transB", "broadcast"))
def _gemm(ctx: _NodeContext) -> None:
    inputs = [ctx.activation(0), ctx.activation(1)] + ([ctx.input(2)] if ctx.input(2) else [])
    ctx.emit("Gemm", inputs, dict(alpha=float(ctx.attr("alpha", 1.0)), beta=float(ctx.attr("beta", 1.0)),
                                  transA=ctx.int_attr("transA", 0), transB=ctx.int_attr("transB", 0)))


def _check_legacy_broadcast(ctx: _NodeContext) -> None:
    if ctx.int_attr("broadcast", 0) and "axis" in ctx.attrs:
        raise _Unsupported("legacy broadcast with an axis attribute (opset < 7) is not supported")


@converter("MatMul")
def _matmul(ctx: _NodeContext) -> None:
    ctx.emit("MatMul", [ctx.activation(0), ctx.activation(1)])


@converter("Add", "Mul", attrs=("broadcast", "axis", "consumed_inputs"))
def _binary(ctx: _NodeContext) -> None:
    _check_legacy_broadcast(ctx)
    ctx.emit(ctx.op, [ctx.activation(0), ctx.activation(1)])


@converter("Sub", attrs=("broadcast", "axis", "consumed_inputs"))
def _sub(ctx: _NodeContext) -> None:
    _check_legacy_broadcast(ctx)
    a, b = ctx.activation(0), ctx.activation(1)
    if b in ctx.imp.consts:  # x - c == x + (-c)
        negated = ctx.imp.add_param(f"{b}/neg", -ctx.const(1, "the subtrahend"))
        ctx.emit("Add", [a, negated])
        return
    minus_one = ctx.imp.add_param(f"{ctx.name}/minus_one", np.array(-1, dtype=ctx.imp.dtypes[b]))
    negated = ctx.imp.fresh_tensor(f"{ctx.outputs[0]}/neg")
    ctx.emit("Mul", [b, minus_one], outputs=[negated], name=ctx.imp.fresh_node(f"{ctx.name}/neg"))
    ctx.emit("Add", [a, negated])


@converter("Div", attrs=("broadcast", "axis", "consumed_inputs"))
def _div(ctx: _NodeContext) -> None:
    _check_legacy_broadcast(ctx)
    divisor = ctx.const(1, "the divisor")
    if divisor is None or divisor.dtype.kind != "f":
        raise _Unsupported("only division by a floating-point constant is supported")
    with np.errstate(divide="ignore"):
        reciprocal = np.reciprocal(divisor)
    ctx.emit("Mul", [ctx.activation(0), ctx.imp.add_param(f"{ctx.input(1)}/reciprocal", reciprocal)])


@converter("Sum", attrs=("consumed_inputs",))
def _sum(ctx: _NodeContext) -> None:
    inputs = [n for n in ctx.inputs if n]
    if not inputs:
        raise _Unsupported("needs at least one input")
    ctx.emit("Sum" if len(inputs) > 1 else "Identity", inputs)


@converter("Concat", attrs=("axis",))
def _concat(ctx: _NodeContext) -> None:
    if "axis" not in ctx.attrs:
        raise _Unsupported("attribute axis is required")
    ctx.emit("Concat", [n for n in ctx.inputs if n], dict(axis=int(ctx.attrs["axis"])))


@converter("Flatten", attrs=("axis",))
def _flatten(ctx: _NodeContext) -> None:
    ctx.emit("Flatten", [ctx.activation(0)], dict(axis=ctx.int_attr("axis", 1)))


@converter("Transpose", attrs=("perm",))
def _transpose(ctx: _NodeContext) -> None:
    shape_a, _ = ctx.shapes(0)
    perm = ctx.ints_attr("perm", list(reversed(range(len(shape_a)))))
    if sorted(p % len(shape_a) for p in perm) != list(range(len(shape_a))):
        raise _Unsupported(f"perm {perm} is not a permutation of {len(shape_a)} axes")
    ctx.emit("Transpose", [ctx.activation(0)], dict(perm=[p % len(shape_a) for p in perm]))


def _onnx_reshape(shape, target, allowzero: int = 0) -> Optional[tuple[int, ...]]:
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


@converter("Reshape", attrs=("shape", "allowzero", "consumed_inputs"))
def _reshape(ctx: _NodeContext) -> None:
    x = ctx.activation(0)
    if ctx.input(1):
        t_a, t_b = (np.asarray(t).astype(np.int64).reshape(-1) for t in ctx.worlds(1, "the target shape"))
    elif "shape" in ctx.attrs:
        t_a = t_b = np.asarray(ctx.ints_attr("shape"), dtype=np.int64)
    else:
        raise _Unsupported("the target shape is missing")
    allowzero = ctx.int_attr("allowzero", 0)
    target = _batch_free_target(ctx, ctx.shapes(0), [int(v) for v in t_a], [int(v) for v in t_b], allowzero)
    ctx.emit("Reshape", [x], dict(shape=target))


def _batch_free_target(ctx, shapes, t_a, t_b, allowzero) -> list[int]:
    """A Reshape target, with ONNX's 0/-1 semantics, that is right for every batch size.

    In order of preference: the file's target made batch-independent (batch entries -> 0 or
    -1) when the output keeps a clean batch axis; the same with a literal export batch size
    rewritten to 0 (``[1, 9216]`` from a batch-1 export -> ``[0, 9216]``); the file's target
    made batch-independent even if it folds the batch into another axis (``[-1, H*W]``), as
    long as it means what the file means at both batch sizes.
    """
    x_a, x_b = shapes
    batch = ctx.imp.batch
    if len(t_a) != len(t_b):
        raise _Unsupported(f"the length of the target shape {t_a} depends on the batch size")
    if allowzero and (0 in t_a or 0 in t_b):
        raise _Unsupported("allowzero=1 with a zero in the target shape is not supported")
    batch_axes = _batch_axes(x_a, x_b)
    target, dynamic = [], []
    for i, (a, b) in enumerate(zip(t_a, t_b)):
        if a == b:
            target.append(a)
        elif i in batch_axes and a == x_a[i] and b == x_b[i]:
            target.append(0)  # "the batch size" at the batch axis: copy the input's dimension
        else:
            target.append(None)
            dynamic.append(i)
    shown = [a if a == b else "N-dependent" for a, b in zip(t_a, t_b)]
    if dynamic:
        if len(dynamic) > 1 or -1 in target:
            raise _Unsupported(f"target shape {shown} has several batch-dependent entries; cannot make it "
                               f"independent of the batch size")
        target[dynamic[0]] = -1

    def outputs(candidate):
        return _onnx_reshape(x_a, candidate), _onnx_reshape(x_b, candidate)

    def faithful(candidate) -> bool:  # the file's own result at both batch sizes
        out = outputs(candidate)
        return None not in out and out == (_onnx_reshape(x_a, t_a), _onnx_reshape(x_b, t_b))

    def clean(candidate) -> bool:  # the output has one batch axis, of the batch size
        out_a, out_b = outputs(candidate)
        if out_a is None or out_b is None:
            return False
        moved = _batch_axes(out_a, out_b)
        return len(moved) == 1 and (out_a[moved[0]], out_b[moved[0]]) == batch

    if faithful(target) and clean(target):
        return target
    # A literal export batch size (e.g. [1, 9216] from a batch-1 export): make it "copy the batch".
    for axis in batch_axes:
        if (x_a[axis], x_b[axis]) == batch and axis < len(target) and target[axis] == batch[0]:
            candidate = list(target)
            candidate[axis] = 0
            if clean(candidate):
                return candidate
    if faithful(target):
        return target
    raise _Unsupported(f"cannot reshape {_show(x_a, batch_axes)} to {shown} for every batch size "
                       f"(N is the batch size)")


def _show(shape, batch_axes) -> str:
    return "(" + ", ".join("N" if i in batch_axes else str(d) for i, d in enumerate(shape)) + ")"


def _axes(ctx: _NodeContext, required: bool) -> Optional[list[int]]:
    if "axes" in ctx.attrs:
        return ctx.ints_attr("axes")
    value = ctx.const(1, "the axes")
    if value is None:
        if required:
            raise _Unsupported("the axes are missing")
        return None
    return [int(v) for v in value.reshape(-1)]


@converter("Squeeze", attrs=("axes",))
def _squeeze(ctx: _NodeContext) -> None:
    shape_a, shape_b = ctx.shapes(0)
    batch_axes = _batch_axes(shape_a, shape_b)
    axes = _axes(ctx, required=False)
    rank = len(shape_a)
    if axes is None:  # all axes of size 1, but never the batch axis (size 1 only in a batch-1 export)
        axes = [i for i in range(rank) if shape_a[i] == 1 and shape_b[i] == 1]
    if any(not -rank <= a < rank for a in axes):
        raise _Unsupported(f"axes {axes} are out of range for rank {rank}")
    axes = sorted({a % rank for a in axes})
    if any(a in batch_axes for a in axes):
        raise _Unsupported(f"squeezing the batch axis of {_show(shape_a, batch_axes)} is not supported")
    bad = [a for a in axes if shape_a[a] != 1]
    if bad:
        raise _Unsupported(f"cannot squeeze axes {bad} of shape {shape_a}: their size is not 1")
    ctx.emit("Squeeze", [ctx.activation(0)], dict(axes=axes))


@converter("Unsqueeze", attrs=("axes",))
def _unsqueeze(ctx: _NodeContext) -> None:
    shape_a, _ = ctx.shapes(0)
    axes = _axes(ctx, required=True)
    rank = len(shape_a) + len(axes)
    if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        raise _Unsupported(f"axes {axes} are out of range or repeated for output rank {rank}")
    ctx.emit("Unsqueeze", [ctx.activation(0)], dict(axes=sorted(a % rank for a in axes)))


@converter("Pad", attrs=("pads", "mode", "value", "paddings"))
def _pad(ctx: _NodeContext) -> None:
    shape_a, shape_b = ctx.shapes(0)
    rank = len(shape_a)
    mode = ctx.attr("mode", "constant") or "constant"
    if mode not in ("constant", "reflect", "edge"):
        raise _Unsupported(f"mode={mode!r} is not supported (constant, reflect, edge)")
    if "pads" in ctx.attrs or "paddings" in ctx.attrs:
        pads = ctx.ints_attr("pads") or ctx.ints_attr("paddings")
        value = float(ctx.attr("value", 0.0))
    else:
        raw = ctx.const(1, "the pads")
        if raw is None:
            raise _Unsupported("the pads are missing")
        pads = [int(v) for v in raw.reshape(-1)]
        fill = ctx.const(2, "the constant value")
        value = 0.0 if fill is None or fill.size == 0 else float(fill.reshape(-1)[0])
        axes = ctx.const(3, "the axes")
        if axes is not None:  # opset 18: pads only for the listed axes
            axes = [int(a) % rank for a in axes.reshape(-1)]
            if len(pads) != 2 * len(axes):
                raise _Unsupported(f"pads {pads} do not match axes {axes}")
            full = [0] * (2 * rank)
            for j, a in enumerate(axes):
                full[a], full[a + rank] = pads[j], pads[j + len(axes)]
            pads = full
    if len(pads) != 2 * rank:
        raise _Unsupported(f"pads {pads} must have {2 * rank} entries for an input of rank {rank}")
    if any(p < 0 for p in pads):
        raise _Unsupported(f"negative pads (cropping) {pads} are not supported")
    for axis in _batch_axes(shape_a, shape_b):
        if pads[axis] or pads[axis + rank]:
            raise _Unsupported(f"padding the batch axis ({pads}) is not supported")
    ctx.emit("Pad", [ctx.activation(0)], dict(pads=pads, mode=mode, value=value))


# -- special: Shape works on activations too -------------------------------------------------


def _shape_op(ctx: _NodeContext) -> None:
    ctx.check_attrs(("start", "end"))
    name = ctx.activation(0)
    start, end = ctx.attr("start"), ctx.attr("end")
    values = []
    for w in _WORLDS:
        shape = ctx.imp.shape(name, w)
        values.append(np.array(shape[slice(start, end)], dtype=np.int64))
    ctx.imp.consts[ctx.outputs[0]] = tuple(values)


def _size_op(ctx: _NodeContext) -> None:
    name = ctx.activation(0)
    ctx.imp.consts[ctx.outputs[0]] = tuple(np.array(math.prod(ctx.imp.shape(name, w)), dtype=np.int64)
                                           for w in _WORLDS)


_SPECIAL: dict[str, Callable[[_NodeContext], None]] = {"Shape": _shape_op, "Size": _size_op}


# -- folders: numpy evaluation of nodes whose inputs are all constant --------------------------

_FOLDERS: dict[str, tuple[Callable[[_NodeContext, list], list], tuple[str, ...]]] = {}


def folder(*ops: str, attrs: tuple[str, ...] = ()):
    def register(fn):
        for op in ops:
            _FOLDERS[op] = (fn, attrs)
        return fn

    return register


@folder("Constant", attrs=("value", "value_float", "value_floats", "value_int", "value_ints"))
def _fold_constant(ctx, values):
    attrs = ctx.attrs
    onnx = ctx.imp.onnx
    if "value" in attrs:
        return [onnx.numpy_helper.to_array(attrs["value"])]
    if "value_float" in attrs:
        return [np.array(attrs["value_float"], dtype=np.float32)]
    if "value_floats" in attrs:
        return [np.array(attrs["value_floats"], dtype=np.float32)]
    if "value_int" in attrs:
        return [np.array(attrs["value_int"], dtype=np.int64)]
    if "value_ints" in attrs:
        return [np.array(attrs["value_ints"], dtype=np.int64)]
    raise _Unsupported("a Constant needs one of value, value_float(s), value_int(s)")


@folder("ConstantOfShape", attrs=("value",))
def _fold_constant_of_shape(ctx, values):
    fill = ctx.attr("value")
    fill = np.zeros(1, np.float32) if fill is None else ctx.imp.onnx.numpy_helper.to_array(fill).reshape(-1)
    return [np.full(tuple(int(d) for d in values[0].reshape(-1)), fill[0], dtype=fill.dtype)]


@folder("Identity")
def _fold_identity(ctx, values):
    return [values[0]]


@folder("Cast", attrs=("to", "saturate", "round_mode"))
def _fold_cast(ctx, values):
    dtype = ctx.imp.onnx.helper.tensor_dtype_to_np_dtype(int(ctx.attrs["to"]))
    return [values[0].astype(dtype)]


@folder("Gather", attrs=("axis",))
def _fold_gather(ctx, values):
    data, indices = values
    return [np.take(data, indices.astype(np.int64), axis=ctx.int_attr("axis", 0))]


@folder("Slice", attrs=("starts", "ends", "axes"))
def _fold_slice(ctx, values):
    data = values[0]
    if "starts" in ctx.attrs:
        starts, ends = ctx.ints_attr("starts"), ctx.ints_attr("ends")
        axes = ctx.ints_attr("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = [int(v) for v in values[1].reshape(-1)], [int(v) for v in values[2].reshape(-1)]
        axes = ([int(v) for v in values[3].reshape(-1)] if len(values) > 3 and values[3] is not None
                else list(range(len(starts))))
        steps = ([int(v) for v in values[4].reshape(-1)] if len(values) > 4 and values[4] is not None
                 else [1] * len(starts))
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a % data.ndim] = slice(s, e, st)
    return [data[tuple(index)]]


@folder("Concat", attrs=("axis",))
def _fold_concat(ctx, values):
    return [np.concatenate([v for v in values if v is not None], axis=int(ctx.attrs["axis"]))]


@folder("Unsqueeze", attrs=("axes",))
def _fold_unsqueeze(ctx, values):
    axes = ctx.ints_attr("axes") if "axes" in ctx.attrs else [int(v) for v in values[1].reshape(-1)]
    x = values[0]
    rank = x.ndim + len(axes)
    shape = list(x.shape)
    for a in sorted(a % rank for a in axes):
        shape.insert(a, 1)
    return [x.reshape(shape)]


@folder("Squeeze", attrs=("axes",))
def _fold_squeeze(ctx, values):
    x = values[0]
    if "axes" in ctx.attrs:
        axes = ctx.ints_attr("axes")
    elif len(values) > 1 and values[1] is not None:
        axes = [int(v) for v in values[1].reshape(-1)]
    else:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    return [np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]


@folder("Reshape", attrs=("shape", "allowzero", "consumed_inputs"))
def _fold_reshape(ctx, values):
    x = values[0]
    target = ctx.ints_attr("shape") if len(values) < 2 or values[1] is None else [int(v) for v in values[1]]
    out = _onnx_reshape(x.shape, target, ctx.int_attr("allowzero", 0))
    if out is None:
        raise _Unsupported(f"cannot reshape constant of shape {x.shape} to {target}")
    return [x.reshape(out)]


@folder("Flatten", attrs=("axis",))
def _fold_flatten(ctx, values):
    x = values[0]
    axis = ctx.int_attr("axis", 1) % (x.ndim + 1)
    return [x.reshape(math.prod(x.shape[:axis]), -1)]


@folder("Transpose", attrs=("perm",))
def _fold_transpose(ctx, values):
    return [np.transpose(values[0], ctx.ints_attr("perm"))]


def _int_div(a, b):
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":  # ONNX (C++) integer division truncates
        q = np.abs(a) // np.abs(b)
        return (np.sign(a) * np.sign(b) * q).astype(np.result_type(a, b))
    return a / b


_ARITHMETIC = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _int_div}


@folder("Add", "Sub", "Mul", "Div", attrs=("broadcast", "axis", "consumed_inputs"))
def _fold_arithmetic(ctx, values):
    _check_legacy_broadcast(ctx)
    a, b = values
    out = _ARITHMETIC[ctx.op](a, b)
    return [np.asarray(out).astype(np.result_type(a, b), copy=False)]


_UNARY = {"Neg": np.negative, "Floor": np.floor, "Ceil": np.ceil, "Abs": np.abs, "Sqrt": np.sqrt}


@folder(*_UNARY)
def _fold_unary(ctx, values):
    return [_UNARY[ctx.op](values[0])]


@folder("Equal")
def _fold_equal(ctx, values):
    return [np.equal(values[0], values[1])]


@folder("Where")
def _fold_where(ctx, values):
    return [np.where(values[0], values[1], values[2])]


@folder("Range")
def _fold_range(ctx, values):
    start, limit, delta = (v.reshape(()) for v in values)
    return [np.arange(start, limit, delta, dtype=np.result_type(start, limit, delta))]


@folder("ReduceProd", attrs=("axes", "keepdims", "noop_with_empty_axes"))
def _fold_reduce_prod(ctx, values):
    x = values[0]
    axes = ctx.ints_attr("axes")
    if axes is None and len(values) > 1 and values[1] is not None:
        axes = [int(v) for v in values[1].reshape(-1)]
    if not axes and ctx.int_attr("noop_with_empty_axes", 0):
        return [x]
    axis = None if not axes else tuple(a % x.ndim for a in axes)
    return [np.prod(x, axis=axis, keepdims=bool(ctx.int_attr("keepdims", 1))).astype(x.dtype)]


@folder("Expand")
def _fold_expand(ctx, values):
    x, shape = values
    shape = tuple(int(d) for d in shape.reshape(-1))
    out = np.broadcast_shapes(x.shape, shape)
    return [np.broadcast_to(x, out).copy()]


#: Every ONNX operator the importer knows (some only as constant arithmetic, see the docstring).
SUPPORTED_OPS = tuple(sorted(set(_CONVERTERS) | set(_FOLDERS) | set(_SPECIAL)))


def _fresh_name(base: str, taken: set) -> str:
    """``base``, or ``base_2``, ``base_3``... whichever is free first; recorded as taken."""
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name
