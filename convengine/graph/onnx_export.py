"""Export a graph to ONNX: ``to_onnx(graph, opset=17) -> onnx.ModelProto``.

The IR already uses ONNX operator names and attribute conventions (``Conv`` with ``pads =
[top, left, bottom, right]``, ``Gemm`` with ``transB``...), so every IR node becomes exactly
one ONNX node with the same name, inputs and outputs. What differs is only where opsets
13 and later want a value:

* attributes that became inputs are written as constant initializers next to the node:
  ``Reshape``'s ``shape``, ``Squeeze``/``Unsqueeze``'s ``axes`` (int64), ``Pad``'s ``pads``
  (int64) and ``value``, ``Clip``'s ``min``/``max`` (scalars of the data's dtype), ``Split``'s
  ``split`` (int64);
* the remaining attributes are typed by the operator's schema in the target opset (an IR
  ``alpha=1`` becomes a FLOAT attribute), and dropped when they only repeat the default
  (the schema's, or all-ones ``strides``/``dilations`` and all-zero ``pads``), so the file
  reads like one a framework would write; ``Concat``'s ``axis``, required by ONNX, is
  always written;
* parameters become initializers (only those some node reads), under their IR names;
* the graph input keeps its shape with a symbolic batch dimension ``"N"``; outputs get the
  inferred shapes, ``"N"`` where the batch size goes.

Anything that cannot be expressed (an operator unknown to the opset, an attribute its
schema lacks with a non-default value, e.g. ``AveragePool`` dilations before opset 19) is
collected over the whole graph and reported in one :class:`~convengine.graph.GraphError`.

The result passes ``onnx.checker.check_model`` and runs in ONNX Runtime; ``load_onnx``
reads it back into an equivalent graph. ``onnx`` is an optional dependency
(``pip install convengine[onnx]``), imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .ir import GraphError, Node
from .ops import OPS

if TYPE_CHECKING:  # annotations only: the Graph class sits above this module
    from .network import Graph

__all__ = ["to_onnx", "MIN_OPSET"]

#: Oldest opset written: Squeeze/Unsqueeze take ``axes`` as an input and Softmax works on one
#: axis (the IR's meaning) from opset 13 on.
MIN_OPSET = 13

#: Symbolic name of the batch dimension in the exported inputs and outputs.
BATCH_DIM = "N"

_DTYPES = {"float32": "FLOAT", "float64": "DOUBLE"}

#: IR attribute defaults that ONNX does not share (there the attribute is required).
_IR_DEFAULTS = {"Concat": {"axis": 1}}

#: Attributes that the opset takes as inputs: op -> [(attribute, input position, kind[, since opset])]
#: (since 13, the oldest opset written, unless stated). kind "int64" is an int64 1-D tensor;
#: "indices" an int64 tensor of the value's own shape; "scalar" a 0-D tensor of the data's dtype.
_AS_INPUTS = {
    "Reshape": [("shape", 1, "int64")],
    "Squeeze": [("axes", 1, "int64")],
    "Unsqueeze": [("axes", 1, "int64")],
    "Pad": [("pads", 1, "int64"), ("value", 2, "scalar")],
    "Clip": [("min", 1, "scalar"), ("max", 2, "scalar")],
    "Slice": [("starts", 1, "int64"), ("ends", 2, "int64"), ("axes", 3, "int64"), ("steps", 4, "int64")],
    "Gather": [("indices", 1, "indices")],
    "ReduceSum": [("axes", 1, "int64")],
    **{op: [("axes", 1, "int64", 18)] for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                                                  "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")},
    "Split": [("split", 1, "int64")],
}


def _import_onnx():
    try:
        import onnx
        from onnx import defs, helper, numpy_helper  # noqa: F401  (loads the submodules read as onnx.defs, onnx.helper...)
    except ImportError as exc:  # pragma: no cover - exercised only without onnx
        raise ImportError("exporting to ONNX needs the 'onnx' package: pip install convengine[onnx]") from exc
    return onnx


def to_onnx(graph: Graph, *, opset: int = 17):
    """``graph`` as an ``onnx.ModelProto`` of the default domain at ``opset`` (13 or later).

    One ONNX node per IR node (same names), parameters as initializers, the input's batch
    dimension symbolic (``"N"``). Raises :class:`GraphError` listing every node that the
    opset cannot express. The model is not checked here: ``onnx.checker.check_model(model)``.
    """
    onnx = _import_onnx()
    latest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= latest:
        raise ValueError(f"opset must be an int from {MIN_OPSET} to {latest} (this onnx's newest), got {opset!r}")
    return _Exporter(onnx, graph, opset).run()


class _Exporter:
    def __init__(self, onnx, graph: Graph, opset: int):
        self.onnx = onnx
        self.helper = onnx.helper
        self.graph = graph
        self.opset = opset
        self.problems: list[str] = []
        self.initializers: list = []
        self.names: set[str] = set(graph.params) | {s.name for s in graph.inputs}
        for node in graph.nodes:
            self.names.update(n for n in node.inputs if n)
            self.names.update(node.outputs)
        self.dtypes = self._dtypes()

    # -- driver ----------------------------------------------------------------------------------
    def run(self):
        helper, graph = self.helper, self.graph
        used_params = []
        for node in graph.nodes:
            for name in node.inputs:
                if name in graph.params and name not in used_params:
                    used_params.append(name)
        onnx_nodes = []
        for index, node in enumerate(graph.nodes):
            made = self._node(index, node)
            if made is not None:
                onnx_nodes.append(made)
        if self.problems:
            count = len(self.problems)
            listing = "\n  ".join(self.problems)
            raise GraphError(f"cannot export graph {graph.name!r} to ONNX opset {self.opset}: "
                             f"{count} problem{'s' if count > 1 else ''}:\n  {listing}")
        params = [self.onnx.numpy_helper.from_array(np.ascontiguousarray(graph.params[name]), name)
                  for name in used_params]
        inputs = [helper.make_tensor_value_info(spec.name, self._elem(spec.dtype, spec.name),
                                                [BATCH_DIM if d is None else int(d) for d in spec.shape])
                  for spec in graph.inputs]
        outputs = [helper.make_tensor_value_info(name, self._elem(self.dtypes.get(name, "float32"), name), dims)
                   for name, dims in self._output_dims().items()]
        onnx_graph = helper.make_graph(onnx_nodes, graph.name, inputs, outputs, params + self.initializers,
                                       doc_string=f"exported by convengine from graph {graph.name!r}")
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="convengine",
                                  producer_version=_version())
        # The oldest IR version that knows this opset, so that older runtimes load the file.
        model.ir_version = helper.find_min_ir_version_for(opsets)
        return model

    # -- nodes -----------------------------------------------------------------------------------
    def _node(self, index: int, node: Node):
        label = f"node #{index} {node.name!r} ({node.op})"
        try:
            schema = self.onnx.defs.get_schema(node.op, self.opset, "")
        except Exception:
            self.problems.append(f"{label}: operator {node.op} does not exist in ONNX opset {self.opset}")
            return None
        attrs = dict(_IR_DEFAULTS.get(node.op, {}))
        attrs.update({k: v for k, v in node.attrs.items() if v is not None})
        inputs = list(node.inputs)
        if node.op == "Resize":
            problem = self._resize_inputs(node, attrs, inputs)
            if problem:
                self.problems.append(f"{label}: {problem}")
                return None
        for key, position, kind, *since in _AS_INPUTS.get(node.op, ()):
            if key not in attrs or self.opset < (since[0] if since else MIN_OPSET):
                continue
            value = attrs.pop(key)
            if node.op == "Pad" and key == "value" and (attrs.get("mode", "constant") != "constant" or value == 0):
                continue  # only constant padding has a value; 0 is ONNX's default
            inputs += [""] * (position + 1 - len(inputs))
            inputs[position] = self._constant(node, key, value, kind)
        while inputs and inputs[-1] == "":  # trailing omitted optional inputs are simply absent
            inputs.pop()
        kwargs = {}
        for key, value in attrs.items():
            spec = schema.attributes.get(key)
            if _is_trivial(key, value):
                continue
            if spec is None:
                self.problems.append(f"{label}: attribute {key}={_show(value)} has no equivalent in ONNX opset "
                                     f"{self.opset} ({node.op} version {schema.since_version})")
                continue
            try:
                typed = _typed(self.onnx, spec.type, value)
            except (TypeError, ValueError) as exc:
                self.problems.append(f"{label}: attribute {key}={_show(value)}: {exc}")
                continue
            if spec.default_value.type and _as_stored(typed) == _default(self.helper, spec.default_value):
                continue
            kwargs[key] = typed
        missing = [k for k, a in schema.attributes.items() if a.required and k not in kwargs]
        if missing:
            self.problems.append(f"{label}: required attribute{'s' if len(missing) > 1 else ''} "
                                 f"{', '.join(missing)} missing")
            return None
        return self.helper.make_node(node.op, inputs, list(node.outputs), name=node.name, **kwargs)

    def _resize_inputs(self, node: Node, attrs: dict, inputs: list) -> Optional[str]:
        """The IR's output ``sizes`` and ``scales`` (axes after the channels) as Resize's inputs; a problem, or None."""
        sizes, scales = attrs.pop("sizes"), attrs.pop("scales", None)
        if scales is not None:  # the file's own scales: [1, 1, *scales]
            inputs += ["", self._constant(node, "scales", [1.0, 1.0, *scales], "float32")]
        elif self.opset >= 18:  # sizes of the listed axes only, so the batch size need not be written
            inputs += ["", "", self._constant(node, "sizes", sizes, "int64")]
            attrs["axes"] = list(range(2, 2 + len(sizes)))
        else:
            return (f"resizing to fixed sizes {list(sizes)} needs opset 18 or later (before, the sizes input "
                    f"includes the batch size)")
        return None

    def _constant(self, node: Node, key: str, value: Any, kind: str) -> str:
        """A fresh initializer holding ``value``; returns its name."""
        if kind == "int64":
            array = np.asarray([int(v) for v in value], dtype=np.int64)
        elif kind == "indices":
            array = np.asarray(value, dtype=np.int64)
        elif kind == "float32":
            array = np.asarray(value, dtype=np.float32)
        else:
            data = next((n for n in node.inputs if n), "")
            array = np.asarray(value, dtype=self.dtypes.get(data, "float32")).reshape(())
        base = f"{node.name}/{key}"
        name, k = base, 1
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    # -- types and shapes ------------------------------------------------------------------------
    def _elem(self, dtype: str, name: str) -> int:
        if dtype not in _DTYPES:
            raise GraphError(f"tensor {name!r} is {dtype}; only float32 and float64 graphs can be exported")
        return getattr(self.onnx.TensorProto, _DTYPES[dtype])

    def _dtypes(self) -> dict[str, str]:
        """Every tensor's dtype: inputs and params as declared, node outputs as their first input's."""
        dtypes = {spec.name: spec.dtype for spec in self.graph.inputs}
        dtypes.update({name: value.dtype.name for name, value in self.graph.params.items()})
        for node in self.graph.nodes:
            dtype = next((dtypes[n] for n in node.inputs if n in dtypes), "float32")
            for out in node.outputs:
                dtypes[out] = dtype
        return dtypes

    def _output_dims(self) -> dict[str, list]:
        """Each output's dims: ints, ``"N"`` for the batch axis, ``None`` for another batch-dependent one."""
        graph = self.graph
        other = _shapes_at_batch(graph, 3)
        dims = {}
        for name in graph.outputs:
            at_1 = graph.shapes[name]
            at_3 = other.get(name) if other is not None else None
            if at_3 is None or len(at_3) != len(at_1):  # could not tell: assume the batch leads
                dims[name] = [BATCH_DIM] + [int(d) for d in at_1[1:]]
                continue
            dims[name] = [int(a) if a == b else (BATCH_DIM if (a, b) == (1, 3) else None)
                          for a, b in zip(at_1, at_3)]
        return dims


def _shapes_at_batch(graph: Graph, batch: int) -> Optional[dict]:
    """Shape inference with ``batch`` as the inputs' batch size (``None`` if it fails)."""
    shapes = {name: tuple(p.shape) for name, p in graph.params.items()}
    for spec in graph.inputs:
        shapes[spec.name] = tuple(batch if d is None else int(d) for d in spec.shape)
    try:
        for node in graph.nodes:
            out = OPS[node.op].infer(node, [shapes[n] for n in node.inputs if n])
            shapes.update(zip(node.outputs, (tuple(int(d) for d in s) for s in out)))
    except Exception:
        return None
    return shapes


def _is_trivial(key: str, value) -> bool:
    """Spatial attributes that only state the default: all-ones strides/dilations, all-zero pads."""
    if key in ("strides", "dilations"):
        return all(int(v) == 1 for v in value)
    if key == "pads":
        return all(int(v) == 0 for v in value)
    return False


def _typed(onnx, attr_type, value):
    """``value`` as the Python type ``helper.make_node`` turns into ``attr_type``."""
    kinds = onnx.defs.OpSchema.AttrType
    if attr_type == kinds.INT:
        if isinstance(value, (float, np.floating)) and not float(value).is_integer():
            raise ValueError("expected an integer")
        return int(value)
    if attr_type == kinds.FLOAT:
        return float(value)
    if attr_type == kinds.INTS:
        return [int(v) for v in value]
    if attr_type == kinds.FLOATS:
        return [float(v) for v in value]
    if attr_type == kinds.STRING:
        return value.decode() if isinstance(value, bytes) else str(value)
    if attr_type == kinds.STRINGS:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value]
    raise TypeError(f"attribute type {attr_type} is not exported")


def _as_stored(value):
    """``value`` as an attribute stores it: FLOAT attributes are float32."""
    if isinstance(value, float):
        return float(np.float32(value))
    if isinstance(value, list) and value and isinstance(value[0], float):
        return [float(np.float32(v)) for v in value]
    return value


def _default(helper, attribute):
    value = helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode()
    return _as_stored(value)


def _show(value) -> str:
    return str(list(value)) if isinstance(value, (tuple, list, np.ndarray)) else repr(value)


def _version() -> str:
    from .._version import __version__

    return __version__
