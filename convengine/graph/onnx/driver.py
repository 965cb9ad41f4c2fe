"""The importer's driver: nodes in topological order, each converted, folded or reported.

:func:`load_onnx` reads the model (:mod:`.reader`), gives graph inputs a free batch
dimension, then walks the nodes: a node whose inputs are all constants is folded
(:mod:`.folding`), any other is converted (:mod:`.converters`); a node that cannot be is
reported, and everything downstream of it skipped. Every problem is collected and raised
as one :class:`~convengine.graph.GraphError` at the end, before anything runs.
"""

from __future__ import annotations

import heapq
from typing import Optional

import numpy as np

from ...core.arrays import kernel_ready
from ..ir import GraphError, Node, TensorSpec
from ..network import Graph
from ..ops import OPS
from . import converters, folding, shaping  # noqa: F401  (they register themselves)
from .context import CONVERTERS, FOLDERS, SPECIAL, WORLDS, NodeContext, Unsupported, fresh_name, same_value
from .reader import import_onnx, read_model

__all__ = ["load_onnx", "SUPPORTED_OPS"]


def load_onnx(model, *, name: Optional[str] = None) -> Graph:
    """Import an ONNX model as a :class:`~convengine.graph.Graph`.

    ``model`` is a path (``str`` / ``os.PathLike``), the serialized bytes, a binary file
    object, or an ``onnx.ModelProto``. Initializers become ``graph.params`` under their ONNX
    names; graph inputs get a free batch dimension (all other dimensions must be known).
    Raises :class:`GraphError` for a file that does not parse, and for every node that cannot
    be imported (all of them listed in one error), before anything runs.
    """
    onnx = import_onnx()
    proto, label, initializers = read_model(onnx, model)
    return Importer(onnx, proto, label, name).run(initializers)



class Importer:
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
    def run(self, initializers) -> Graph:
        """The graph; ``initializers`` yields ``(name, array)``, one weight at a time (see :func:`.reader.read_model`)."""
        gp = self.gp
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
        for name, value in initializers:
            self.tensor_names.add(name)
            self.consts[name] = (value, value)
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
        if op not in CONVERTERS and op not in FOLDERS and op not in SPECIAL:
            self.problems.append(f"{label}: operator {op} is not supported")
            self.bad.update(outputs)
            return
        if any(name in self.bad for name in node.input if name):
            self.bad.update(outputs)  # already reported upstream
            return
        ctx = NodeContext(self, index, node, label)
        try:
            data = [name for name in node.input if name]
            if op in SPECIAL:
                SPECIAL[op](ctx)
            elif op in FOLDERS and all(name in self.consts for name in data):
                ctx.check_attrs(FOLDERS[op][1])
                results = [FOLDERS[op][0](ctx, [self.consts[n][w] if n else None for n in node.input])
                           for w in WORLDS]
                for k, out in enumerate(node.output):
                    if out:
                        self.consts[out] = (np.asarray(results[0][k]), np.asarray(results[1][k]))
            elif op in CONVERTERS:
                ctx.check_attrs(CONVERTERS[op][1])
                CONVERTERS[op][0](ctx)
            else:
                computed = [n for n in data if n not in self.consts]
                raise Unsupported(f"{op} is supported only on constants (shape arithmetic), but input "
                                  f"{computed[0]!r} is computed from the graph's inputs")
        except Unsupported as exc:
            self.problems.append(f"{label}: {exc}")
            self.bad.update(outputs)
        except GraphError as exc:
            self.problems.append(f"{label}: {exc}")
            self.bad.update(outputs)
        except Exception as exc:  # report it with the others rather than crash mid-import
            self.problems.append(f"{label}: cannot be converted ({type(exc).__name__}: {exc})")
            self.bad.update(outputs)

    # -- helpers for converters ------------------------------------------------------------------
    def fresh_tensor(self, base: str) -> str:
        return fresh_name(base, self.tensor_names)

    def fresh_node(self, base: str) -> str:
        return fresh_name(base, self.node_names)

    def shape(self, name: str, world: int) -> tuple[int, ...]:
        if name in self.consts:
            return tuple(self.consts[name][world].shape)
        return self.shapes[name][world]

    def use_param(self, name: str, what: str = "input") -> None:
        a, b = self.consts[name]
        if not same_value(a, b):
            raise Unsupported(f"{what} {name!r} depends on the batch size; it cannot be a fixed parameter")
        if a.dtype.kind not in "fc":
            raise Unsupported(f"{what} {name!r} is a {a.dtype} constant used as data; only floating-point "
                              f"tensors are supported")
        self.params[name] = kernel_ready(a)  # (a copy only of a read-only view of a parsed proto's bytes)

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
                if not same_value(*self.consts[n]):
                    raise Unsupported(f"input {n!r} depends on the batch size")
            values = OPS[op].run(node, [self.consts[n][0] if n else None for n in inputs])
            for out, value in zip(outputs, values):
                self.consts[out] = (value, value)
            return
        for n in data:
            if n in self.consts:
                self.use_param(n)
        world_shapes = []
        for w in WORLDS:
            in_shapes = [self.shape(n, w) for n in data]
            try:
                out_shapes = OPS[op].infer(node, in_shapes)
            except GraphError:
                raise
            except Exception as exc:
                raise Unsupported(f"cannot infer the output shape of {op} from inputs {in_shapes}: "
                                  f"{type(exc).__name__}: {exc}") from exc
            world_shapes.append([tuple(int(d) for d in s) for s in out_shapes])
        dtype = next((self.dtypes[n] for n in data if n in self.dtypes), None)
        if dtype is None:
            dtype = self.params[data[0]].dtype.name
        for k, out in enumerate(outputs):
            self.shapes[out] = (world_shapes[0][k], world_shapes[1][k])
            self.dtypes[out] = dtype
        self.nodes.append(node)



#: Every ONNX operator the importer knows (some only as constant arithmetic, see :mod:`.folding`).
SUPPORTED_OPS = tuple(sorted(set(CONVERTERS) | set(FOLDERS) | set(SPECIAL)))
