"""ONNX export (``convengine.graph.onnx_export.to_onnx``), checked by ONNX's checker, ONNX Runtime and re-import.

* Every zoo model: the exported file passes ``onnx.checker.check_model`` (full check), ONNX
  Runtime (CPU provider) on it agrees with ``graph.run`` (exact backends: im2col, naive) to
  1e-4 normwise at batch 2, and ``load_onnx(to_onnx(graph))`` gives the same outputs, node
  for node the same operators. LeNet, AlexNet and ResNet-18 also get a structural check
  (names, symbolic batch dimension "N", output shapes, initializers); ResNet-50 and
  DenseNet-121 are exported, compared with ONNX Runtime and round-tripped in one test each;
  SqueezeNet 1.1, ShuffleNet V2 (Split, and the channel shuffle's Reshape-Transpose-Reshape) and
  MobileNetV2 (depthwise convolutions, Clip) are exported and compared with ONNX Runtime.
* One small graph with every other operator the IR has, including those whose attributes
  opset 13+ takes as inputs (Reshape, Squeeze, Unsqueeze, Pad, Clip), non-default float
  attributes, omitted optional inputs and two outputs.
* What cannot be exported, and the opset range.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import convengine as ce  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.graph import Graph, GraphError, Node, TensorSpec  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.graph.onnx import load_onnx  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.graph.onnx_export import to_onnx  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.models import get_model  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)

pytestmark = pytest.mark.usefixtures("no_forced_backend")

BATCH = 2
#: Exact backends only, so ONNX Runtime can be held to 1e-4.
POLICY = ["im2col", "naive"]


def rel_error(got, want) -> float:
    """Normwise relative error max|got - want| / max|want|."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != reference {want.shape}"
    scale = np.max(np.abs(want))
    return float(np.max(np.abs(got - want)) / scale) if scale else float(np.max(np.abs(got - want)))


def as_dict(graph: Graph, outputs) -> dict:
    return outputs if isinstance(outputs, dict) else {graph.outputs[0]: outputs}


def run_convengine(graph: Graph, x) -> dict:
    return as_dict(graph, graph.compile(ce.Engine(policy=POLICY)).run(x))


def run_ort(model, x) -> dict:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))


@functools.lru_cache(maxsize=None)
def exported(name: str):
    """(graph, model, input, convengine's outputs) for a zoo model, built once per session."""
    graph = get_model(name)
    x = np.random.default_rng(0).standard_normal((BATCH, *graph.inputs[0].shape[1:])).astype(np.float32)
    return graph, to_onnx(graph), x, run_convengine(graph, x)


def check_structure(graph: Graph, model) -> None:
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == [n.op for n in graph.nodes]
    assert [n.name for n in model.graph.node] == [n.name for n in graph.nodes]
    assert [o.name for o in model.graph.output] == graph.outputs
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == list(graph.inputs[0].shape[1:])
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        assert dims[0].dim_param == "N"
        assert tuple(d.dim_value for d in dims[1:]) == graph.shapes[output.name][1:]
    used = {n for node in graph.nodes for n in node.inputs if n in graph.params}
    assert used <= {t.name for t in model.graph.initializer}


@pytest.mark.parametrize("name", ["lenet", "alexnet", "resnet18", "squeezenet1_1", "shufflenet_v2_x1_0", "mobilenet_v2"])
def test_zoo_model_exports_and_matches_onnxruntime(name):
    graph, model, x, expected = exported(name)
    check_structure(graph, model)
    got = run_ort(model, x)
    assert set(got) == set(expected)
    for key in expected:
        assert rel_error(got[key], expected[key]) < 1e-4, key


@pytest.mark.parametrize("name", ["lenet", "alexnet", "resnet18"])
def test_zoo_model_round_trips_through_load_onnx(name):
    graph, model, x, expected = exported(name)
    back = load_onnx(model)
    assert [n.op for n in back.nodes] == [n.op for n in graph.nodes]
    assert [s.shape for s in back.inputs] == [s.shape for s in graph.inputs]
    got = run_convengine(back, x)
    for key in expected:
        assert rel_error(got[key], expected[key]) < 1e-6, key


@pytest.mark.parametrize("name", ["resnet50", "densenet121"])
def test_large_zoo_model_matches_onnxruntime_and_round_trips(name):
    graph = get_model(name)
    model = to_onnx(graph)
    onnx.checker.check_model(model)
    x = np.random.default_rng(1).standard_normal((BATCH, *graph.inputs[0].shape[1:])).astype(np.float32)
    expected = run_convengine(graph, x)
    got = run_ort(model, x)
    for key in expected:
        assert rel_error(got[key], expected[key]) < 1e-4, key
    back = run_convengine(load_onnx(model), x)
    for key in expected:
        assert rel_error(back[key], expected[key]) < 1e-6, key


# -- every other operator --------------------------------------------------------------------------


def every_op_graph(dtype="float32") -> Graph:
    rng = np.random.default_rng(3)

    def p(*shape):
        return rng.standard_normal(shape).astype(dtype) * 0.5

    # x (N, 3, 5, 4) -> conv (N, 4, 5, 4) -> pads (N, 4, 8, 7), (N, 4, 9, 8) -> average pool, ceil mode
    # (N, 4, 5, 5) -> max-pool (N, 4, 2, 2) -> flatten (N, 16)
    params = {"w1": p(4, 3, 3, 3), "b1": p(4), "w2": p(5, 16), "b2": p(5), "m": p(4, 5), "scale": p(5)}
    nodes = [
        Node("conv", "Conv", ["x", "w1", "b1"], ["c"], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
                                                          dilations=[1, 1], group=1)),
        Node("pad", "Pad", ["c"], ["pd"], dict(pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="constant", value=0.5)),
        Node("reflect", "Pad", ["pd"], ["pr"], dict(pads=[0, 0, 1, 0, 0, 0, 0, 1], mode="reflect")),
        Node("avg", "AveragePool", ["pr"], ["ap"], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                                       ceil_mode=1, count_include_pad=1, dilations=[1, 1])),
        Node("lrn", "LRN", ["ap"], ["ln"], dict(size=3, alpha=2e-4, beta=0.7, bias=1.5)),
        Node("leaky", "LeakyRelu", ["ln"], ["lk"], dict(alpha=0.2)),
        Node("clip", "Clip", ["lk"], ["cl"], dict(min=-0.25, max=0.75)),
        Node("clip_max", "Clip", ["cl"], ["cm"], dict(max=0.5)),  # min omitted: an empty input
        Node("maxpool", "MaxPool", ["cm"], ["mp"], dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0])),
        Node("gmax", "GlobalMaxPool", ["cl"], ["gm"]),
        Node("squeeze", "Squeeze", ["gm"], ["sq"], dict(axes=[2, 3])),
        Node("unsqueeze", "Unsqueeze", ["sq"], ["us"], dict(axes=[1])),
        Node("transpose", "Transpose", ["us"], ["tr"], dict(perm=[0, 2, 1])),
        Node("reshape", "Reshape", ["tr"], ["rs"], dict(shape=[0, -1])),
        Node("flatten", "Flatten", ["mp"], ["fl"], dict(axis=1)),
        Node("gemm", "Gemm", ["fl", "w2", "b2"], ["gy"], dict(transB=1, alpha=0.5, beta=2.0)),
        Node("matmul", "MatMul", ["rs", "m"], ["mm"]),
        Node("mul", "Mul", ["mm", "scale"], ["ml"]),
        Node("sum", "Sum", ["gy", "mm", "ml"], ["sm"]),
        Node("tanh", "Tanh", ["sm"], ["th"]),
        Node("sigmoid", "Sigmoid", ["sm"], ["sg"]),
        Node("concat", "Concat", ["th", "sg"], ["cc"]),  # IR default axis 1; required in ONNX
        Node("softmax", "Softmax", ["cc"], ["sf"], dict(axis=-1)),
        Node("dropout", "Dropout", ["sf"], ["dr"]),
        Node("identity", "Identity", ["dr"], ["probs"]),
        Node("relu", "Relu", ["gm"], ["rl"]),
        Node("gavg", "GlobalAveragePool", ["rl"], ["pooled"]),
        Node("add", "Add", ["pooled", "gm"], ["features"]),
    ]
    return Graph("every_op", [TensorSpec("x", (None, 3, 5, 4), dtype)], ["probs", "features"], nodes, params)


def test_every_operator_exports_and_matches_onnxruntime():
    graph = every_op_graph()
    model = to_onnx(graph)
    check_structure(graph, model)
    nodes = {n.name: n for n in model.graph.node}
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    # attributes that opset 13+ takes as inputs became constant inputs
    assert constants[nodes["reshape"].input[1]].tolist() == [0, -1]
    assert constants[nodes["squeeze"].input[1]].tolist() == [2, 3]
    assert constants[nodes["unsqueeze"].input[1]].tolist() == [1]
    assert constants[nodes["pad"].input[1]].tolist() == [0, 0, 1, 2, 0, 0, 2, 1]
    assert constants[nodes["pad"].input[2]] == np.float32(0.5) and constants[nodes["pad"].input[2]].ndim == 0
    assert len(nodes["reflect"].input) == 2
    assert constants[nodes["clip"].input[1]] == np.float32(-0.25)
    assert nodes["clip_max"].input[1] == "" and constants[nodes["clip_max"].input[2]] == np.float32(0.5)
    for node in model.graph.node:
        assert not {a.name for a in node.attribute} & {"shape", "axes", "value", "min", "max"}, node.name
    # defaults dropped, the rest typed by the schema
    attrs = {n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in model.graph.node}
    assert attrs["conv"] == {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    assert attrs["maxpool"] == {"kernel_shape": [2, 2], "strides": [2, 2]}
    assert attrs["reflect"] == {"mode": b"reflect"}
    assert attrs["gemm"] == {"transB": 1, "alpha": 0.5, "beta": 2.0}
    assert attrs["concat"] == {"axis": 1}
    assert attrs["softmax"] == {} and attrs["flatten"] == {}
    x = np.random.default_rng(4).standard_normal((BATCH, 3, 5, 4)).astype(np.float32)
    expected = run_convengine(graph, x)
    got = run_ort(model, x)
    assert set(got) == {"probs", "features"}
    for key in expected:
        assert rel_error(got[key], expected[key]) < 1e-4, key
    back = load_onnx(model)
    assert [n.op for n in back.nodes] == [n.op for n in graph.nodes]
    again = run_convengine(back, x)
    for key in expected:
        assert rel_error(again[key], expected[key]) < 1e-6, key


def test_float64_graphs_export_as_double():
    graph = get_model("lenet", dtype="float64")
    model = to_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    x = np.random.default_rng(5).standard_normal((BATCH, 1, 28, 28))
    back = load_onnx(model)
    assert back.inputs[0].dtype == "float64"
    assert rel_error(run_convengine(back, x)["fc3"], run_convengine(graph, x)["fc3"]) < 1e-12


def test_what_an_opset_cannot_express_is_reported_for_every_node():
    params = {"w": np.ones((2, 1, 1, 1), np.float32)}
    nodes = [
        Node("pool", "AveragePool", ["x"], ["a"], dict(kernel_shape=[2, 2], dilations=[2, 2])),
        Node("conv", "Conv", ["a", "w"], ["c"], dict(kernel_shape=[1, 1], foo=3)),
        Node("relu", "Relu", ["c"], ["y"]),
    ]
    graph = Graph("bad", [TensorSpec("x", (None, 1, 6, 6))], ["y"], nodes, params)
    with pytest.raises(GraphError) as info:
        to_onnx(graph)
    message = str(info.value)
    assert "2 problems" in message
    assert "'pool' (AveragePool): attribute dilations=[2, 2]" in message
    assert "'conv' (Conv): attribute foo=3" in message
    # AveragePool has dilations from opset 19 on
    graph.nodes[1].attrs.pop("foo")
    model = to_onnx(graph, opset=19)
    onnx.checker.check_model(model, full_check=True)
    assert {a.name for a in model.graph.node[0].attribute} == {"kernel_shape", "dilations"}


def test_opset_range():
    graph = get_model("lenet")
    for bad in (12, onnx.defs.onnx_opset_version() + 1, "17"):
        with pytest.raises(ValueError, match="opset must be"):
            to_onnx(graph, opset=bad)
    model = to_onnx(graph, opset=13)
    assert model.opset_import[0].version == 13 and model.ir_version == 7
    onnx.checker.check_model(model, full_check=True)
