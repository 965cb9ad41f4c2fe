"""ONNX import (``convengine.graph.onnx.load_onnx``), checked against ONNX Runtime.

* Every supported operator through a tiny model built with ``onnx.helper``: the imported graph
  and ONNX Runtime (CPUExecutionProvider) agree to 1e-5 (float32, normwise) on random input,
  at batch 1 and batch 3 (the batch dimension of an imported graph is free).
* Small but real architectures written as plain torch modules (AlexNet, VGG, ResNet basic and
  bottleneck blocks, DenseNet block, SqueezeNet fire modules, Inception block, ShuffleNet unit,
  MobileNetV2 block), exported with ``torch.onnx.export`` (the TorchScript exporter,
  ``dynamo=False``: the new exporter needs onnxscript), imported and compared with ONNX
  Runtime on the same file to 1e-4.
* Bad files, unsupported operators and attribute values, and bad inputs to ``run``.

Files exported with a fixed batch size (``[1, C, H, W]``) are compared sample by sample, as
ONNX Runtime cannot run them on another batch size; the importer makes them batch-free.
"""

from __future__ import annotations

import io
import sys
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)

import convengine as ce  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.graph import Graph, GraphError  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.graph.onnx import load_onnx  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)

pytestmark = pytest.mark.usefixtures("no_forced_backend")

#: Exact backends only, so operator tests can hold ONNX Runtime to 1e-5 in float32.
EXACT_ENGINE = ce.Engine(max_rel_error=1e-6)


# -- helpers ------------------------------------------------------------------------------------


def rel_error(got, want) -> float:
    """Normwise relative error max|got - want| / max|want|."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != reference {want.shape}"
    scale = np.max(np.abs(want)) if want.size else 0.0
    return float(np.max(np.abs(got - want)) / scale) if scale else float(np.max(np.abs(got - want), initial=0.0))


def make_model(nodes, inputs, outputs, inits=None, *, opset=17, dtype=np.float32, batch="N", name="test"):
    """A model with ``inputs`` ``{name: shape without batch}``, batch ``batch`` (a dim_param or an int)."""
    elem = TensorProto.FLOAT if np.dtype(dtype) == np.float32 else TensorProto.DOUBLE
    g_inputs = [helper.make_tensor_value_info(n, elem, [batch, *s]) for n, s in inputs.items()]
    g_outputs = [helper.make_tensor_value_info(n, elem, None) for n in outputs]
    initializers = [numpy_helper.from_array(np.asarray(v), name=k) for k, v in (inits or {}).items()]
    graph = helper.make_graph(nodes, name, g_inputs, g_outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 18 else 9
    return model


def ort_session(model):
    ort = pytest.importorskip("onnxruntime")
    data = model if isinstance(model, (bytes, str)) else model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def ort_run(session, feeds: dict, *, per_sample: bool = False) -> list:
    """ONNX Runtime outputs; ``per_sample`` runs a fixed-batch-1 file on each sample and stacks."""
    if not per_sample:
        return session.run(None, feeds)
    batch = next(iter(feeds.values())).shape[0]
    runs = [session.run(None, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(batch)]
    return [np.concatenate([r[k] for r in runs]) for k in range(len(runs[0]))]


def check_with_ort(model, inputs: dict, *, batches=(1, 3), tol=1e-5, dtype=np.float32, engine=EXACT_ENGINE,
                   per_sample=False, seed=0) -> Graph:
    """Import ``model`` and compare every output with ONNX Runtime at each batch size."""
    graph = load_onnx(model.SerializeToString())
    graph.compile(engine)
    session = ort_session(model)
    rng = np.random.default_rng(seed)
    names = [o.name for o in model.graph.output]
    for batch in batches:
        feeds = {n: rng.standard_normal((batch, *s)).astype(dtype) for n, s in inputs.items()}
        got = graph.run(feeds)
        got = {names[0]: got} if len(names) == 1 else got
        want = ort_run(session, feeds, per_sample=per_sample)
        for name, w in zip(names, want):
            assert got[name].dtype == w.dtype, f"output {name!r}: dtype {got[name].dtype} != {w.dtype}"
            err = rel_error(got[name], w)
            assert err <= tol, f"output {name!r} at batch {batch}: relative error {err:.3g} > {tol:g}"
    return graph


def node(op, inputs, outputs, **attrs):
    return helper.make_node(op, inputs, outputs, name=f"{op.lower()}_{outputs[0]}", **attrs)


def const_node(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name=name))


def rand(*shape, seed=1, scale=1.0, dtype=np.float32):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


# -- operator cases -----------------------------------------------------------------------------
# Each returns (model, {input: shape without batch}) and, optionally, a dict of check options.

X = {"x": (4, 9, 9)}
W44 = rand(6, 4, 3, 3, scale=0.3)


def single(op, attrs=None, inits=None, extra_inputs=(), inputs=X, opset=17, **options):
    names = ["x", *extra_inputs]
    return make_model([node(op, names, ["y"], **(attrs or {}))], inputs, ["y"], inits, opset=opset), inputs, options


OP_CASES = {
    # Conv: pads/strides/dilations, no kernel_shape, no bias, groups, depthwise, auto_pad
    "conv": lambda: single("Conv", dict(kernel_shape=[3, 3], pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]),
                           {"w": W44, "b": rand(6, seed=2)}, ["w", "b"]),
    "conv_defaults_nobias": lambda: single("Conv", {}, {"w": W44}, ["w"]),
    "conv_group2": lambda: single("Conv", dict(group=2, pads=[1, 1, 1, 1]), {"w": rand(6, 2, 3, 3)}, ["w"]),
    "conv_depthwise": lambda: single("Conv", dict(group=4, pads=[1, 1, 1, 1]), {"w": rand(4, 1, 3, 3), "b": rand(4)},
                                     ["w", "b"]),
    "conv_same_upper": lambda: single("Conv", dict(auto_pad="SAME_UPPER", strides=[2, 2]), {"w": rand(6, 4, 4, 4)},
                                      ["w"]),
    "conv_same_lower": lambda: single("Conv", dict(auto_pad="SAME_LOWER", strides=[2, 1]), {"w": rand(6, 4, 4, 2)},
                                      ["w"]),
    "conv_valid": lambda: single("Conv", dict(auto_pad="VALID", strides=[2, 3]), {"w": W44}, ["w"]),
    # pooling
    "maxpool": lambda: single("MaxPool", dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1])),
    "maxpool_ceil_dilation": lambda: single("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 1],
                                                            ceil_mode=1, storage_order=0)),
    "maxpool_same_upper": lambda: single("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    "maxpool_same_lower": lambda: single("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER")),
    "maxpool_valid": lambda: single("MaxPool", dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID")),
    "avgpool_exclude_pad": lambda: single("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "avgpool_include_pad": lambda: single("AveragePool", dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
                                                              count_include_pad=1)),
    "avgpool_ceil": lambda: single("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "avgpool_same_upper": lambda: single("AveragePool", dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER")),
    "avgpool_dilations_opset19": lambda: single("AveragePool", dict(kernel_shape=[2, 2], dilations=[2, 2]), opset=19),
    "global_avgpool": lambda: single("GlobalAveragePool"),
    "global_maxpool": lambda: single("GlobalMaxPool"),
    # normalisation and activations
    "batchnorm_opset9": lambda: single("BatchNormalization", dict(epsilon=1e-3), bn_params(), BN_NAMES, opset=9),
    "batchnorm_opset15": lambda: single("BatchNormalization", dict(training_mode=0, momentum=0.8), bn_params(),
                                        BN_NAMES, opset=15),
    "lrn": lambda: single("LRN", dict(size=5, alpha=1e-3, beta=0.75, bias=2.0), inputs={"x": (7, 5, 5)}),
    "lrn_defaults": lambda: single("LRN", dict(size=3), inputs={"x": (7, 5, 5)}),
    "relu": lambda: single("Relu"),
    "sigmoid": lambda: single("Sigmoid"),
    "tanh": lambda: single("Tanh"),
    "leaky_relu": lambda: single("LeakyRelu", dict(alpha=0.2)),
    "leaky_relu_default": lambda: single("LeakyRelu"),
    "clip_attrs_opset6": lambda: single("Clip", dict(min=-0.5, max=0.7), opset=6),
    "clip_inputs": lambda: single("Clip", {}, {"lo": np.float32(-0.3), "hi": np.float32(0.4)}, ["lo", "hi"]),
    "clip_min_only": lambda: single("Clip", {}, {"lo": np.float32(0.1)}, ["lo"]),
    "clip_max_only": lambda: (make_model([const_node("hi", np.float32(0.2)), node("Clip", ["x", "", "hi"], ["y"])],
                                         X, ["y"]), X, {}),
    "softmax_opset13_axis1": lambda: single("Softmax", dict(axis=1)),
    "softmax_opset13_default": lambda: single("Softmax"),
    "softmax_opset11_2d": lambda: single("Softmax", {}, inputs={"x": (10,)}, opset=11),
    "softmax_opset11_coerce_axis1": lambda: single("Softmax", dict(axis=1), opset=11),
    "softmax_opset11_coerce_axis2": lambda: single("Softmax", dict(axis=2), opset=11),
    "softmax_opset11_last_axis": lambda: single("Softmax", dict(axis=-1), opset=11),
    "dropout_opset10": lambda: single("Dropout", dict(ratio=0.3), opset=10),
    "dropout_opset13_inputs": lambda: single("Dropout", {}, {"r": np.float32(0.5), "t": np.bool_(False)}, ["r", "t"],
                                             opset=13),
    "identity": lambda: single("Identity"),
    # dense and elementwise
    "gemm": lambda: (make_model([node("Flatten", ["x"], ["f"]),
                                 node("Gemm", ["f", "w", "c"], ["y"], alpha=0.5, beta=2.0, transB=1)],
                                X, ["y"], {"w": rand(5, 324, scale=0.1), "c": rand(5)}), X, {}),
    "gemm_no_c_transb0": lambda: (make_model([node("Flatten", ["x"], ["f"]), node("Gemm", ["f", "w"], ["y"])],
                                             X, ["y"], {"w": rand(324, 5, scale=0.1)}), X, {}),
    "gemm_transa": lambda: (make_model([node("Flatten", ["x"], ["f"]), node("Transpose", ["f"], ["ft"]),
                                        node("Gemm", ["ft", "w", "c"], ["gt"], transA=1, alpha=1.5, beta=0.5),
                                        node("Transpose", ["gt"], ["y"])],
                                       X, ["y"], {"w": rand(324, 5, scale=0.1), "c": rand(1, 5)}), X, {}),
    "matmul": lambda: single("MatMul", {}, {"w": rand(9, 5)}, ["w"]),
    "matmul_2d": lambda: (make_model([node("Flatten", ["x"], ["f"]), node("MatMul", ["f", "w"], ["y"])],
                                     X, ["y"], {"w": rand(324, 7, scale=0.1)}), X, {}),
    "add_broadcast": lambda: single("Add", {}, {"b": rand(4, 1, 1)}, ["b"]),
    "add_two_inputs": lambda: single("Add", {}, extra_inputs=["z"], inputs={"x": (4, 9, 9), "z": (4, 9, 9)}),
    "mul_broadcast": lambda: single("Mul", {}, {"s": rand(1, 9)}, ["s"]),
    "mul_two_inputs": lambda: single("Mul", {}, extra_inputs=["z"], inputs={"x": (4, 9, 9), "z": (1, 9, 1)}),
    "sub_const": lambda: single("Sub", {}, {"b": rand(9)}, ["b"]),
    "sub_from_const": lambda: (make_model([node("Sub", ["b", "x"], ["y"])], X, ["y"], {"b": rand(4, 1, 1)}), X, {}),
    "sub_two_inputs": lambda: single("Sub", {}, extra_inputs=["z"], inputs={"x": (4, 9, 9), "z": (4, 9, 9)}),
    "div_const": lambda: single("Div", {}, {"d": rand(4, 1, 1) + 3}, ["d"]),
    "sum": lambda: (make_model([node("Relu", ["x"], ["r"]), node("Sigmoid", ["x"], ["s"]),
                                node("Sum", ["x", "r", "s", "z"], ["y"])],
                               {"x": (4, 9, 9), "z": (4, 9, 9)}, ["y"]), {"x": (4, 9, 9), "z": (4, 9, 9)}, {}),
    "sum_single": lambda: single("Sum"),
    # structure
    "concat_channels": lambda: (make_model([node("Relu", ["x"], ["r"]), node("Concat", ["x", "r", "z"], ["y"], axis=1)],
                                           {"x": (4, 9, 9), "z": (2, 9, 9)}, ["y"]), {"x": (4, 9, 9), "z": (2, 9, 9)}, {}),
    "concat_negative_axis": lambda: (make_model([node("Tanh", ["x"], ["t"]), node("Concat", ["x", "t"], ["y"], axis=-1)],
                                                X, ["y"]), X, {}),
    "flatten": lambda: single("Flatten"),
    "flatten_axis2": lambda: single("Flatten", dict(axis=2)),
    "reshape_const_0_-1": lambda: single("Reshape", {}, {"s": np.array([0, -1, 9], np.int64)}, ["s"]),
    "reshape_opset1_attr": lambda: single("Reshape", dict(shape=[0, 36, 9]), opset=1),
    "reshape_literal_batch_static_file": lambda: (
        make_model([node("Reshape", ["x", "s"], ["y"])], X, ["y"], {"s": np.array([1, 324], np.int64)}, batch=1),
        X, dict(per_sample=True)),
    "reshape_literal_batch_minus1_static_file": lambda: (
        make_model([node("Reshape", ["x", "s"], ["y"])], X, ["y"], {"s": np.array([1, -1, 3, 3], np.int64)}, batch=1),
        X, dict(per_sample=True)),
    "reshape_batch_into_rows_and_back": lambda: (make_model(
        [node("Reshape", ["x", "rows"], ["r"]), node("Softmax", ["r"], ["sm"], axis=1), node("Shape", ["x"], ["s"]),
         node("Reshape", ["sm", "s"], ["y"])], X, ["y"], {"rows": np.array([-1, 81], np.int64)}), X, {}),
    "reshape_flatten_all": lambda: single("Reshape", {}, {"s": np.array([-1], np.int64)}, ["s"]),
    "transpose": lambda: single("Transpose", dict(perm=[0, 2, 3, 1])),
    "transpose_default_twice": lambda: (make_model([node("Transpose", ["x"], ["t"]), node("Transpose", ["t"], ["y"])],
                                                   X, ["y"]), X, {}),
    "squeeze_opset11_attr": lambda: single("Squeeze", dict(axes=[1, -1]), inputs={"x": (1, 4, 1)}, opset=11),
    "squeeze_opset13_input": lambda: single("Squeeze", {}, {"a": np.array([3], np.int64)}, ["a"],
                                            inputs={"x": (2, 4, 1)}),
    # without axes ONNX squeezes every size-1 axis, the batch too at batch 1: compare at 2 and 3
    "squeeze_no_axes": lambda: single("Squeeze", inputs={"x": (1, 4, 1)}, batches=(2, 3)),
    "unsqueeze_opset11_attr": lambda: single("Unsqueeze", dict(axes=[1, -1]), opset=11),
    "unsqueeze_opset13_input": lambda: single("Unsqueeze", {}, {"a": np.array([2, 0], np.int64)}, ["a"]),
    "pad_opset2_attrs": lambda: single("Pad", dict(pads=[0, 0, 1, 2, 0, 1, 0, 3], value=1.5), opset=2),
    "pad_constant_inputs": lambda: single("Pad", {}, {"p": np.array([0, 1, 2, 0, 0, 0, 1, 2], np.int64),
                                                      "v": np.float32(-2.0)}, ["p", "v"]),
    "pad_reflect": lambda: single("Pad", dict(mode="reflect"), {"p": np.array([0, 0, 2, 1, 0, 0, 1, 3], np.int64)}, ["p"]),
    "pad_edge": lambda: single("Pad", dict(mode="edge"), {"p": np.array([0, 0, 2, 1, 0, 0, 1, 3], np.int64)}, ["p"]),
    "pad_opset18_axes": lambda: single("Pad", {}, {"p": np.array([1, 2, 3, 0], np.int64), "a": np.array([-1, 2], np.int64)},
                                       ["p", "", "a"], opset=18),
    # constants and shape arithmetic (folded at load time)
    "constant_value_tensor": lambda: (make_model([const_node("c", rand(4, 1, 1)), node("Mul", ["x", "c"], ["y"])],
                                                 X, ["y"]), X, {}),
    "constant_value_float": lambda: (make_model([helper.make_node("Constant", [], ["c"], value_float=2.5),
                                                 node("Add", ["x", "c"], ["y"])], X, ["y"]), X, {}),
    "constant_value_floats": lambda: (make_model([helper.make_node("Constant", [], ["c"], value_floats=[1.0, -2.0] * 4 + [3.0]),
                                                  node("Add", ["x", "c"], ["y"])], X, ["y"]), X, {}),
    "constant_value_ints_shape": lambda: (make_model([helper.make_node("Constant", [], ["s"], value_ints=[0, 4, 81]),
                                                      node("Reshape", ["x", "s"], ["y"])], X, ["y"]), X, {}),
    "constant_of_shape": lambda: (make_model(
        [const_node("s", np.array([4, 1, 1], np.int64)),
         helper.make_node("ConstantOfShape", ["s"], ["c"], value=numpy_helper.from_array(np.array([0.25], np.float32))),
         node("Add", ["x", "c"], ["y"])], X, ["y"]), X, {}),
    "constant_of_shape_default_zero": lambda: (make_model(
        [const_node("s", np.array([4, 9, 9], np.int64)), helper.make_node("ConstantOfShape", ["s"], ["c"]),
         node("Add", ["x", "c"], ["y"])], X, ["y"]), X, {}),
    "shape_gather_unsqueeze_concat_reshape": lambda: (make_model(
        [node("Shape", ["x"], ["s"]), const_node("i0", np.int64(0)), node("Gather", ["s", "i0"], ["n"], axis=0),
         const_node("ax", np.array([0], np.int64)), node("Unsqueeze", ["n", "ax"], ["n1"]),
         const_node("m1", np.array([-1], np.int64)), node("Concat", ["n1", "m1"], ["t"], axis=0),
         node("Reshape", ["x", "t"], ["y"])], X, ["y"]), X, {}),
    "shape_slice_reduceprod": lambda: (make_model(
        [node("Shape", ["x"], ["s"]), const_node("b1", np.array([1], np.int64)), const_node("e4", np.array([4], np.int64)),
         const_node("b0", np.array([0], np.int64)),
         node("Slice", ["s", "b1", "e4"], ["rest"]), node("ReduceProd", ["rest"], ["p"], keepdims=1),
         node("Slice", ["s", "b0", "b1"], ["n"]), node("Concat", ["n", "p"], ["t"], axis=0),
         node("Reshape", ["x", "t"], ["y"])], X, ["y"], opset=13), X, {}),
    "shape_start_end_opset15": lambda: (make_model(
        [helper.make_node("Shape", ["x"], ["hw"], start=2), helper.make_node("Shape", ["x"], ["nc"], end=2),
         node("ReduceProd", ["hw"], ["p"], keepdims=1), node("Concat", ["nc", "p"], ["t"], axis=0),
         node("Reshape", ["x", "t"], ["y"])], X, ["y"]), X, {}),
    "channel_shuffle_div_cast": lambda: (make_model(
        [node("Shape", ["x"], ["s"])]
        + [const_node(f"i{k}", np.int64(k)) for k in range(4)]
        + [node("Gather", ["s", f"i{k}"], [f"d{k}"], axis=0) for k in range(4)]
        + [const_node("g", np.int64(2)), node("Div", ["d1", "g"], ["cg"]),
           helper.make_node("Cast", ["cg"], ["cgc"], to=TensorProto.INT64)]
        + [node("Unsqueeze", [v], [f"{v}u"], axes=[0]) for v in ("d0", "cgc", "d2", "d3")]
        + [const_node("g1", np.array([2], np.int64)), const_node("m1", np.array([-1], np.int64)),
           node("Concat", ["d0u", "g1", "cgcu", "d2u", "d3u"], ["t5"], axis=0),
           node("Reshape", ["x", "t5"], ["r5"]), node("Transpose", ["r5"], ["tr"], perm=[0, 2, 1, 3, 4]),
           node("Concat", ["d0u", "m1", "d2u", "d3u"], ["t4"], axis=0), node("Reshape", ["tr", "t4"], ["y"])],
        X, ["y"], opset=11), X, {}),
    "size_div_mul_sub_add": lambda: (make_model(
        [node("Size", ["x"], ["sz"]), node("Shape", ["x"], ["s"]), const_node("i0", np.int64(0)),
         node("Gather", ["s", "i0"], ["n"], axis=0), node("Div", ["sz", "n"], ["per"]),       # C*H*W
         const_node("k9", np.int64(9)), node("Div", ["per", "k9"], ["a"]),                   # 36
         const_node("k2", np.int64(2)), node("Mul", ["a", "k2"], ["b"]),                      # 72
         const_node("k36", np.int64(36)), node("Sub", ["b", "k36"], ["c"]),                   # 36
         const_node("k0", np.int64(0)), node("Add", ["c", "k0"], ["d"]),
         node("Unsqueeze", ["n"], ["nu"], axes=[0]), node("Unsqueeze", ["d"], ["du"], axes=[0]),
         const_node("m1", np.array([-1], np.int64)), node("Concat", ["nu", "du", "m1"], ["t"], axis=0),
         node("Reshape", ["x", "t"], ["y"])], X, ["y"], opset=11), X, {}),
    "equal_where_reshape_zero": lambda: (make_model(
        [const_node("t", np.array([0, -1], np.int64)), const_node("z", np.int64(0)), node("Equal", ["t", "z"], ["eq"]),
         node("Shape", ["x"], ["s"]), const_node("b0", np.array([0], np.int64)), const_node("b2", np.array([2], np.int64)),
         node("Slice", ["s", "b0", "b2"], ["s2"]), node("Where", ["eq", "s2", "t"], ["tt"]),
         node("Reshape", ["x", "tt"], ["y"])], X, ["y"]), X, {}),
    "const_weight_folding": lambda: (make_model(
        [const_node("zero", np.int64(0)), const_node("four", np.int64(4)), const_node("one", np.int64(1)),
         node("Range", ["zero", "four", "one"], ["r"]), helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
         node("Neg", ["rf"], ["neg"]), node("Abs", ["neg"], ["abs"]), node("Sqrt", ["abs"], ["sq"]),
         node("Floor", ["sq"], ["fl"]), node("Ceil", ["sq"], ["ce"]), node("Add", ["fl", "ce"], ["fc"]),
         node("Identity", ["fc"], ["fi"]), const_node("shp", np.array([4, 1, 1], np.int64)),
         node("Reshape", ["fi", "shp"], ["w3"]), node("Add", ["x", "w3"], ["a"]),
         const_node("half", np.float32(0.5)), const_node("eshape", np.array([1, 9, 1], np.int64)),
         node("Expand", ["half", "eshape"], ["ex"]), node("Squeeze", ["ex"], ["exs"], axes=[0, 2]),
         node("Unsqueeze", ["exs"], ["exu"], axes=[1]), node("Mul", ["a", "exu"], ["m"]),
         const_node("wt", rand(5, 9)), node("Transpose", ["wt"], ["wtt"], perm=[1, 0]),
         node("Flatten", ["wtt"], ["wtf"], axis=1), node("Relu", ["wtf"], ["wtr"]),
         node("MatMul", ["m", "wtr"], ["y"])], X, ["y"], opset=12), X, {}),
    "initializer_listed_as_input": lambda: initializer_as_input_case(),
}

BN_NAMES = ["scale", "bias", "mean", "var"]


def bn_params(c=4):
    return {"scale": rand(c, seed=3), "bias": rand(c, seed=4), "mean": rand(c, seed=5),
            "var": np.abs(rand(c, seed=6)) + 0.5}


def initializer_as_input_case():
    model = make_model([node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], X, ["y"], {"w": W44}, opset=8)
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(W44.shape)))
    return model, X, {}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_operator_matches_onnxruntime(case):
    model, inputs, options = OP_CASES[case]()
    check_with_ort(model, inputs, **options)


def test_float64_model_matches_onnxruntime():
    nodes = [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), node("BatchNormalization", ["c", *BN_NAMES], ["n"]),
             node("Relu", ["n"], ["r"]), node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Flatten", ["p"], ["f"]), node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    inits = {"w": W44.astype(np.float64), "b": rand(6, dtype=np.float64), "fw": rand(3, 96, dtype=np.float64),
             "fb": rand(3, dtype=np.float64), **{k: v.astype(np.float64) for k, v in bn_params(6).items()}}
    model = make_model(nodes, X, ["y"], inits, dtype=np.float64)
    # ONNX Runtime has no float64 Conv kernel: the reference is onnx's own (numpy) ReferenceEvaluator.
    from onnx.reference import ReferenceEvaluator

    graph = load_onnx(model)
    graph.compile(EXACT_ENGINE)
    reference = ReferenceEvaluator(model)
    for batch in (1, 3):
        x = rand(batch, 4, 9, 9, seed=batch, dtype=np.float64)
        got = graph.run(x)
        assert got.dtype == np.float64
        assert rel_error(got, reference.run(None, {"x": x})[0]) <= 1e-12


def test_two_outputs_and_params_keep_onnx_names():
    nodes = [node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c"], pads=[1, 1, 1, 1]),
             node("Relu", ["c"], ["relu_out"]), node("GlobalAveragePool", ["relu_out"], ["pool_out"])]
    inits = {"conv1.weight": W44, "conv1.bias": rand(6), "unused.weight": rand(3)}
    model = make_model(nodes, X, ["relu_out", "pool_out"], inits)
    graph = check_with_ort(model, X)
    assert set(graph.params) == {"conv1.weight", "conv1.bias"}
    np.testing.assert_array_equal(graph.params["conv1.weight"], W44)
    assert [(s.name, s.shape, s.dtype) for s in graph.inputs] == [("x", (None, 4, 9, 9), "float32")]
    assert graph.outputs == ["relu_out", "pool_out"]


def test_sources_path_bytes_stream_and_modelproto(tmp_path):
    model = make_model([node("Relu", ["x"], ["y"])], X, ["y"])
    path = tmp_path / "relu.onnx"
    path.write_bytes(model.SerializeToString())
    x = rand(2, 4, 9, 9)
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes()), model):
        graph = load_onnx(source)
        np.testing.assert_array_equal(graph.run(x), np.maximum(x, 0))


def _weights_model():
    """Conv + Reshape + Add, its weights stored every way a file holds them: raw float32, a float32
    in ``float_data`` (not raw), an int64 shape and a float16 bias widened by a Cast."""
    weight = numpy_helper.from_array(W44, "w")  # raw_data
    bias = helper.make_tensor("b", TensorProto.FLOAT, [6], rand(6, seed=2).tolist())  # float_data
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    half = numpy_helper.from_array(rand(6 * 7 * 7, seed=3).astype(np.float16), "half")
    nodes = [node("Conv", ["x", "w", "b"], ["c"]), node("Reshape", ["c", "shape"], ["r"]),
             node("Cast", ["half"], ["h32"], to=TensorProto.FLOAT), node("Add", ["r", "h32"], ["y"])]
    model = make_model(nodes, X, ["y"])
    model.graph.initializer.extend([weight, bias, shape, half])
    return model


def test_file_weights_read_one_at_a_time_equal_the_whole_parse(tmp_path):
    # From a path the importer reads each initializer's bytes straight from the file; from bytes it
    # parses the whole protobuf: the graphs must be the same, and match ONNX Runtime.
    model = _weights_model()
    path = tmp_path / "weights.onnx"
    path.write_bytes(model.SerializeToString())
    import onnx

    from convengine.graph.onnx.reader import _stream_file

    proto, tensors = _stream_file(onnx, path)  # the file was walked, not parsed whole (None)
    assert len(tensors) == 4 and not proto.graph.initializer
    from_file, from_bytes = load_onnx(path), load_onnx(path.read_bytes())
    assert sorted(from_file.params) == sorted(from_bytes.params)
    for name, value in from_bytes.params.items():
        assert from_file.params[name].dtype == value.dtype
        np.testing.assert_array_equal(from_file.params[name], value)
    assert [(n.op, n.inputs, n.outputs) for n in from_file.nodes] == [(n.op, n.inputs, n.outputs) for n in from_bytes.nodes]
    x = rand(2, 4, 9, 9, seed=5)
    (expected,) = ort_session(model).run(None, {"x": x})
    np.testing.assert_allclose(from_file.run(x), expected, rtol=1e-5, atol=1e-5)


def test_file_with_external_weights(tmp_path):
    import onnx

    model = _weights_model()
    path = tmp_path / "external.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="external.bin", size_threshold=0)
    assert (tmp_path / "external.bin").stat().st_size > W44.nbytes
    graph = load_onnx(path)
    np.testing.assert_array_equal(graph.params["w"], W44)
    (tmp_path / "external.bin").write_bytes(b"")  # the weights gone: one clear error
    with pytest.raises(GraphError, match="external.onnx"):
        load_onnx(path)


def test_file_truncated_inside_a_weight(tmp_path):
    data = _weights_model().SerializeToString()
    at = data.index(W44.tobytes()[:64])  # inside the raw float32 weight
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:at + 100])
    with pytest.raises(GraphError, match="cut.onnx"):
        load_onnx(path)


def test_nodes_out_of_order_are_sorted():
    model = make_model([node("Relu", ["t"], ["y"]), node("Tanh", ["x"], ["t"])], X, ["y"])
    x = rand(2, 4, 9, 9)
    np.testing.assert_allclose(load_onnx(model).run(x), np.maximum(np.tanh(x), 0), rtol=1e-6)


# -- real architectures exported from torch ----------------------------------------------------

torch = None


def _torch():
    global torch
    torch = pytest.importorskip("torch")
    return torch


def randomize_bn(module):
    """``module`` with seeded, plausible batch-norm statistics and affine parameters (fresh ones do nothing)."""
    t = _torch()
    g = t.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, t.nn.BatchNorm2d):
            m.running_mean.copy_(t.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(t.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(t.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(t.randn(m.num_features, generator=g) * 0.1)
    return module


def _architectures():
    """``{name: (module factory, input shape CHW, opset)}``; plain torch modules, reduced widths."""
    t = _torch()
    nn, F = t.nn, t.nn.functional

    def conv_bn(cin, cout, k, s=1, p=0, groups=1):
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(cout))

    class LRN(t.autograd.Function):
        """``F.local_response_norm``, exported as one ONNX LRN node (torch exports a Pow/AvgPool3d/If chain)."""

        @staticmethod
        def forward(ctx, x, size, alpha, beta, k):
            return F.local_response_norm(x, size, alpha, beta, k)

        @staticmethod
        def symbolic(g, x, size, alpha, beta, k):
            return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)

    class LocalResponseNorm(nn.Module):
        def __init__(self, size, alpha, beta, k):
            super().__init__()
            self.args = (size, alpha, beta, k)

        def forward(self, x):
            return LRN.apply(x, *self.args)

    class AlexNet(nn.Module):  # LRN, 11x11 stride-4 conv, overlapping max pools, view(N, -1) to dense layers
        def __init__(self, classes=10):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 11, 4, 2), nn.ReLU(inplace=True), LocalResponseNorm(5, 1e-4, 0.75, 2.0),
                nn.MaxPool2d(3, 2),
                nn.Conv2d(16, 24, 5, padding=2), nn.ReLU(inplace=True), LocalResponseNorm(5, 1e-4, 0.75, 2.0),
                nn.MaxPool2d(3, 2),
                nn.Conv2d(24, 32, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(32, 24, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 1))
            self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(24 * 2 * 2, 64), nn.ReLU(inplace=True),
                                            nn.Dropout(), nn.Linear(64, 64), nn.ReLU(inplace=True),
                                            nn.Linear(64, classes))

        def forward(self, x):
            x = self.features(x)
            x = x.view(x.size(0), 24 * 2 * 2)
            return F.softmax(self.classifier(x), dim=1)

    class VGG(nn.Module):  # 3x3 conv-BN-ReLU stacks, 2x2 max pools, global pool, flatten, dense
        def __init__(self):
            super().__init__()
            layers, cin = [], 3
            for v in (8, "M", 16, 16, "M", 32, 32, "M"):
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                    cin = v
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 10))

        def forward(self, x):
            return self.classifier(t.flatten(self.pool(self.features(x)), 1))

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.c2 = conv_bn(cin, cout, 3, stride, 1), conv_bn(cout, cout, 3, 1, 1)
            self.down = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

        def forward(self, x):
            return F.relu(self.c2(F.relu(self.c1(x))) + self.down(x))

    class Bottleneck(nn.Module):
        def __init__(self, cin, mid, stride):
            super().__init__()
            self.c1, self.c2, self.c3 = conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride, 1), conv_bn(mid, 4 * mid, 1)
            self.down = conv_bn(cin, 4 * mid, 1, stride) if stride != 1 or cin != 4 * mid else nn.Identity()

        def forward(self, x):
            return F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x))))) + self.down(x))

    class ResNet(nn.Module):  # 7x7/2 stem, 3x3/2 max pool, basic + bottleneck blocks, global pool, fc
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(conv_bn(3, 8, 7, 2, 3), nn.ReLU(True), nn.MaxPool2d(3, 2, 1))
            self.blocks = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2), Bottleneck(16, 8, 1),
                                        Bottleneck(32, 8, 2))
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.blocks(self.stem(x))
            return self.fc(t.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    class DenseNet(nn.Module):  # BN-ReLU-conv1x1-BN-ReLU-conv3x3 layers concatenated, transition with avg pool
        def __init__(self, growth=6):
            super().__init__()
            self.stem = nn.Conv2d(3, 12, 3, padding=1, bias=False)
            self.layers = nn.ModuleList()
            c = 12
            for _ in range(3):
                self.layers.append(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 4 * growth, 1, bias=False),
                                                 nn.BatchNorm2d(4 * growth), nn.ReLU(),
                                                 nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)))
                c += growth
            self.transition = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False),
                                            nn.AvgPool2d(2, 2))
            self.norm = nn.BatchNorm2d(c // 2)
            self.fc = nn.Linear(c // 2, 10)

        def forward(self, x):
            features = [self.stem(x)]
            for layer in self.layers:
                features.append(layer(t.cat(features, 1)))
            x = self.norm(self.transition(t.cat(features, 1)))
            return self.fc(t.flatten(F.adaptive_avg_pool2d(F.relu(x), 1), 1))

    class Fire(nn.Module):
        def __init__(self, cin, squeeze, expand):
            super().__init__()
            self.squeeze = nn.Conv2d(cin, squeeze, 1)
            self.e1, self.e3 = nn.Conv2d(squeeze, expand, 1), nn.Conv2d(squeeze, expand, 3, padding=1)

        def forward(self, x):
            x = F.relu(self.squeeze(x))
            return t.cat([F.relu(self.e1(x)), F.relu(self.e3(x))], 1)

    class SqueezeNet(nn.Module):  # ceil-mode max pools, fire modules, 1x1 classifier conv, global avg pool
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(True), nn.MaxPool2d(3, 2, ceil_mode=True),
                                          Fire(16, 4, 8), Fire(16, 4, 8), nn.MaxPool2d(3, 2, ceil_mode=True),
                                          Fire(16, 8, 16))
            self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(32, 10, 1), nn.ReLU(True),
                                            nn.AdaptiveAvgPool2d(1))

        def forward(self, x):
            return t.flatten(self.classifier(self.features(x)), 1)

    class Inception(nn.Module):  # parallel 1x1 / 3x3 / double-3x3 / avg-pool(pad)+1x1 / max-pool branches
        def __init__(self, cin=8):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, cin, 3, padding=1), nn.ReLU())
            self.b1 = nn.Conv2d(cin, 8, 1)
            self.b3 = nn.Sequential(nn.Conv2d(cin, 6, 1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1))
            self.b5 = nn.Sequential(nn.Conv2d(cin, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 5, padding=2))
            self.bd = nn.Sequential(nn.Conv2d(cin, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(6, 6, 3, padding=1))
            self.bp = nn.Sequential(nn.AvgPool2d(3, 1, 1), nn.Conv2d(cin, 4, 1))
            self.bm = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(cin, 4, 1))
            self.reduce = nn.Sequential(nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(3, 2, 1, count_include_pad=False))

        def forward(self, x):
            x = self.stem(x)
            y = t.cat([F.relu(b(x)) for b in (self.b1, self.b3, self.b5, self.bd, self.bp, self.bm)], 1)
            return self.reduce(y)

    class ShuffleUnit(nn.Module):  # ShuffleNet v1: grouped 1x1, channel shuffle, depthwise 3x3, grouped 1x1
        def __init__(self, cin, cout, groups, stride):
            super().__init__()
            self.groups, self.stride = groups, stride
            mid = cout // 4
            branch_out = cout - cin if stride == 2 else cout
            self.g1 = conv_bn(cin, mid, 1, groups=groups)
            self.dw = conv_bn(mid, mid, 3, stride, 1, groups=mid)
            self.g2 = conv_bn(mid, branch_out, 1, groups=groups)

        def forward(self, x):
            out = F.relu(self.g1(x))
            b, c, h, w = out.size()
            out = out.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
            out = self.g2(self.dw(out))
            if self.stride == 2:
                return F.relu(t.cat([F.avg_pool2d(x, 3, 2, 1), out], 1))
            return F.relu(x + out)

    class ShuffleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            self.units = nn.Sequential(ShuffleUnit(12, 24, 3, 2), ShuffleUnit(24, 24, 3, 1), ShuffleUnit(24, 48, 3, 2))
            self.fc = nn.Linear(48, 10)

        def forward(self, x):
            x = F.adaptive_avg_pool2d(self.units(self.stem(x)), 1)
            return self.fc(x.view(x.size(0), -1))

    class MobileNetV2Block(nn.Module):  # expand 1x1, depthwise 3x3 stride 2 / 1, ReLU6 (Clip), linear bottleneck
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(conv_bn(3, 8, 3, 2, 1), nn.ReLU6())
            self.a = nn.Sequential(conv_bn(8, 32, 1), nn.ReLU6(), conv_bn(32, 32, 3, 2, 1, groups=32), nn.ReLU6(),
                                   conv_bn(32, 12, 1))
            self.b = nn.Sequential(conv_bn(12, 48, 1), nn.ReLU6(), conv_bn(48, 48, 3, 1, 1, groups=48), nn.ReLU6(),
                                   conv_bn(48, 12, 1))

        def forward(self, x):
            x = self.a(self.stem(x))
            x = x + self.b(x)
            return t.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    return {
        "alexnet": (lambda: AlexNet(), (3, 63, 63), 11),
        "vgg": (lambda: randomize_bn(VGG()), (3, 32, 32), 13),
        "resnet": (lambda: randomize_bn(ResNet()), (3, 64, 64), 17),
        "densenet": (lambda: randomize_bn(DenseNet()), (3, 32, 32), 13),
        "squeezenet": (lambda: SqueezeNet(), (3, 64, 64), 9),
        "inception": (lambda: Inception(), (3, 32, 32), 11),
        "shufflenet": (lambda: randomize_bn(ShuffleNet()), (3, 64, 64), 13),
        "mobilenetv2": (lambda: randomize_bn(MobileNetV2Block()), (3, 32, 32), 11),
    }


ARCHITECTURES = ["alexnet", "vgg", "resnet", "densenet", "squeezenet", "inception", "shufflenet", "mobilenetv2"]


def export(module, shape, opset, path, *, dynamic: bool, keep_batchnorm: bool):
    t = _torch()
    module.eval()
    kwargs = dict(input_names=["image"], output_names=["out"], opset_version=opset, dynamo=False,
                  training=t.onnx.TrainingMode.PRESERVE if keep_batchnorm else t.onnx.TrainingMode.EVAL)
    if dynamic:
        kwargs["dynamic_axes"] = {"image": {0: "batch"}, "out": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with t.no_grad():
            t.onnx.export(module, t.zeros((1, *shape)), str(path), **kwargs)


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic_batch", "static_batch"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_exported_architecture_matches_onnxruntime(arch, dynamic, tmp_path):
    pytest.importorskip("onnxruntime")
    t = _torch()
    t.manual_seed(0)
    factory, shape, opset = _architectures()[arch]
    path = tmp_path / f"{arch}.onnx"
    # static exports fold BN into conv (EVAL); dynamic ones keep it (PRESERVE): both paths get covered
    export(factory(), shape, opset, path, dynamic=dynamic, keep_batchnorm=dynamic)
    graph = load_onnx(path)
    assert graph.inputs[0].shape == (None, *shape)
    session = ort_session(str(path))
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        got = graph.run(x)
        want = ort_run(session, {"image": x}, per_sample=not dynamic)[0]
        err = rel_error(got, want)
        assert err <= 1e-4, f"{arch} at batch {batch}: relative error {err:.3g}"


def test_static_alexnet_reshape_made_batch_free(tmp_path):
    t = _torch()
    t.manual_seed(0)
    factory, shape, opset = _architectures()["alexnet"]
    path = tmp_path / "alexnet.onnx"
    export(factory(), shape, opset, path, dynamic=False, keep_batchnorm=False)
    reshapes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Reshape"]
    assert reshapes, "the static export should contain a Reshape to [1, 96]"
    graph = load_onnx(path)
    assert [n.attrs["shape"] for n in graph.nodes if n.op == "Reshape"] == [[0, 96]]
    assert "features.0.weight" in graph.params


# -- bad input ----------------------------------------------------------------------------------


@pytest.fixture
def conv_model_file(tmp_path):
    model = make_model([node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), node("Relu", ["c"], ["y"])],
                       X, ["y"], {"w": W44})
    path = tmp_path / "conv.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_truncated_file(conv_model_file, tmp_path):
    data = conv_model_file.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(GraphError, match="truncated.onnx") as info:
        load_onnx(path)
    assert "cannot parse" in str(info.value)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(GraphError, match="noise.onnx"):
        load_onnx(path)


def test_empty_file_and_bytes(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(GraphError, match="empty.onnx"):
        load_onnx(path)
    with pytest.raises(GraphError, match="cannot parse"):
        load_onnx(b"\x08\x07\x12\x03abc")  # parses as a ModelProto, but has no graph


def test_missing_file_and_wrong_type(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_onnx(tmp_path / "nope.onnx")
    with pytest.raises(TypeError, match="path, bytes"):
        load_onnx(42)


def test_unsupported_ops_all_reported_at_load():
    nodes = [node("Relu", ["x"], ["r"]),
             helper.make_node("GRU", ["r", "gw", "gr"], ["g"], name="my_gru", hidden_size=3),
             helper.make_node("NonMaxSuppression", ["r", "r"], ["nms"], name="my_nms"),
             helper.make_node("Tanh", ["g"], ["gt"], name="after_gru"),
             helper.make_node("Hardmax", ["r"], ["e"]),  # unnamed: reported by index
             node("Add", ["gt", "nms"], ["y"])]
    model = make_model(nodes, X, ["y"], {"gw": rand(1, 9, 9), "gr": rand(1, 9, 3)})
    with pytest.raises(GraphError) as info:
        load_onnx(model)
    message = str(info.value)
    for expected in ("'my_gru'", "GRU", "'my_nms'", "NonMaxSuppression", "node #4", "Hardmax", "3 problems"):
        assert expected in message, f"{expected!r} not in {message}"
    assert "after_gru" not in message  # downstream of an unsupported node: not reported twice


def test_custom_domain_op_rejected():
    model = make_model([helper.make_node("FusedConv", ["x"], ["y"], name="fc", domain="com.microsoft")], X, ["y"])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(GraphError, match=r"'fc'.*com\.microsoft::FusedConv"):
        load_onnx(model)


BAD_NODES = {
    "maxpool_storage_order": ([node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], storage_order=1)], {}, "storage_order"),
    "maxpool_indices_used": ([helper.make_node("MaxPool", ["x"], ["y", "idx"], name="mp", kernel_shape=[2, 2]),
                              node("Cast", ["idx"], ["z"], to=TensorProto.FLOAT)], {}, "indices"),
    "conv_auto_pad": ([node("Conv", ["x", "w"], ["y"], auto_pad="FOO")], {"w": W44}, "auto_pad"),
    "conv_weight_computed": ([node("Relu", ["x"], ["wr"]), node("Conv", ["x", "wr"], ["y"])], {}, "weight"),
    "conv_1d": ([node("Flatten", ["x"], ["f"], axis=2), node("Unsqueeze", ["f"], ["u"], axes=[0]),
                 node("Conv", ["u", "w1"], ["y"])], {"w1": rand(2, 4, 3)}, "2-D"),
    "pad_wrap": ([node("Pad", ["x", "p"], ["y"], mode="wrap")], {"p": np.zeros(8, np.int64)}, "wrap"),
    "pad_negative": ([node("Pad", ["x", "p"], ["y"])], {"p": np.array([0, 0, -1, 0, 0, 0, 0, 0], np.int64)}, "negative"),
    "pad_batch_axis": ([node("Pad", ["x", "p"], ["y"])], {"p": np.array([1, 0, 0, 0, 0, 0, 0, 0], np.int64)}, "batch"),
    "batchnorm_training": ([node("BatchNormalization", ["x", *BN_NAMES], ["y"], training_mode=1)], bn_params(),
                           "training_mode"),
    "clip_min_computed": ([node("Hardmax", ["x"], ["m"]), node("Clip", ["x", "m"], ["y"])], {}, "Hardmax"),
    "clip_min_from_activation": ([node("Relu", ["x"], ["m"]), node("Clip", ["x", "m"], ["y"])], {}, "min bound"),
    "dropout_training": ([node("Dropout", ["x", "r", "t"], ["y"])], {"r": np.float32(0.5), "t": np.bool_(True)},
                         "training_mode"),
    "gather_on_batch_axis": ([node("Gather", ["x", "i"], ["y"], axis=0)], {"i": np.array([0, 2], np.int64)}, "batch axis"),
    "reshape_drops_batch": ([node("Reshape", ["x", "s"], ["y"])], {"s": np.array([4, 81], np.int64)}, "batch size"),
    "reshape_shape_from_data": ([node("Cast", ["x"], ["xi"], to=TensorProto.INT64), node("Reshape", ["x", "xi"], ["y"])],
                                {}, "Cast"),
    "reshape_two_batch_entries": ([node("Shape", ["x"], ["s"]), node("Gather", ["s", "i0"], ["n"]),
                                   node("Concat", ["n", "n", "k"], ["t"], axis=0), node("Reshape", ["x", "t"], ["y"])],
                                  {"i0": np.array([0], np.int64), "k": np.array([-1], np.int64)}, "batch-dependent"),
    "conv_weight_dtype": ([node("Conv", ["x", "w"], ["y"])], {"w": W44.astype(np.float64)}, "float64"),
    "squeeze_batch_axis": ([node("Squeeze", ["x", "a"], ["y"])], {"a": np.array([0], np.int64)}, "batch"),
    "unknown_attribute": ([node("Relu", ["x"], ["y"], flavour=3)], {}, "flavour"),
    "constant_of_shape_from_batch": ([node("Shape", ["x"], ["s"]), node("ConstantOfShape", ["s"], ["c"]),
                                      node("Add", ["x", "c"], ["y"])], {}, "batch size"),
}


@pytest.mark.parametrize("case", sorted(BAD_NODES))
def test_unsupported_attribute_or_input_names_node_and_op(case):
    nodes, inits, expected = BAD_NODES[case]
    model = make_model(nodes, X, ["y"], inits, opset=13 if case != "pad_wrap" else 19)
    with pytest.raises(GraphError) as info:
        load_onnx(model)
    message = str(info.value)
    assert expected in message, message
    culprit = [n for n in nodes if n.name and (n.name in message)]
    assert culprit, f"no node named in: {message}"
    assert any(f"({n.op_type})" in message for n in culprit), message


@pytest.mark.parametrize("elem, dims, expected", [
    (TensorProto.INT64, ["N", 4, 9, 9], "INT64"),
    (TensorProto.FLOAT16, ["N", 4, 9, 9], "FLOAT16"),
    (TensorProto.FLOAT, ["N", 4, "H", 9], "dimension 2 is 'H'"),
    (TensorProto.FLOAT, ["N", 4, 9, None], "dimension 3 is unknown"),
    (TensorProto.FLOAT, [], "scalar"),
])
def test_bad_graph_input_named(elem, dims, expected):
    vi = helper.make_tensor_value_info("image", elem, dims)
    graph = helper.make_graph([node("Identity", ["image"], ["y"])], "g", [vi],
                              [helper.make_tensor_value_info("y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(GraphError, match="'image'") as info:
        load_onnx(model)
    assert expected in str(info.value)


def test_batch_dimension_is_free_whatever_the_file_says():
    for batch in (1, 5, "N"):
        graph = load_onnx(make_model([node("Relu", ["x"], ["y"])], X, ["y"], batch=batch))
        assert graph.inputs[0].shape == (None, 4, 9, 9)
        assert graph.run(rand(2, 4, 9, 9)).shape == (2, 4, 9, 9)


@pytest.mark.parametrize("feed, expected", [
    (lambda x: {"nope": x}, "nope"),
    (lambda x: x[0], "'x'"),                                        # wrong rank
    (lambda x: np.zeros((2, 5, 9, 9), np.float32), "'x'"),          # wrong channel count
    (lambda x: np.zeros((2, 4, 9, 8), np.float32), "'x'"),          # wrong spatial size
    (lambda x: x.astype(np.float64), "'x'"),                        # wrong dtype
    (lambda x: x.astype(np.int32), "'x'"),
])
def test_bad_run_input_names_the_input(conv_model_file, feed, expected):
    graph = load_onnx(conv_model_file)
    with pytest.raises(GraphError, match=expected):
        graph.run(feed(rand(2, 4, 9, 9)))


def test_missing_onnx_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install convengine\[onnx\]"):
        load_onnx(b"anything")
