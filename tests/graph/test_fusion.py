"""Epilogue fusion in graphs: which nodes after a convolution it absorbs, and that nothing changes but speed.

Graphs are tiny ONNX models built with ``onnx.helper`` (``Conv -> BatchNormalization ->``
an activation pattern, as torchvision's MobileNets and EfficientNets export them), loaded with
``convengine.load_onnx`` and checked against ONNX Runtime on the same file, fused and unfused.
A pattern whose intermediate tensor is read by another node, or returned, is not absorbed.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from conftest import assert_matches_nchw_self  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from onnx import TensorProto, helper, numpy_helper  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)

import convengine as ce  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.graph.executor import CompiledGraph  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)

pytestmark = pytest.mark.usefixtures("no_forced_backend", "typical_machine")  # (layouts follow the cost model's choices)

EXACT_ENGINE = ce.Engine(max_rel_error=1e-6)
C, H = 8, 9

#: (name, nodes after "bn" producing "y", what the fused convolution absorbs)
PATTERNS = [
    ("relu", [helper.make_node("Relu", ["bn"], ["y"])], "Relu"),
    ("relu6", [helper.make_node("Clip", ["bn", "lo", "hi"], ["y"])], "Clip"),
    ("hardswish", [helper.make_node("HardSwish", ["bn"], ["y"])], "HardSwish"),
    ("hardsigmoid", [helper.make_node("HardSigmoid", ["bn"], ["y"], alpha=1 / 6, beta=0.5)], "HardSigmoid"),
    ("sigmoid", [helper.make_node("Sigmoid", ["bn"], ["y"])], "Sigmoid"),
    ("silu", [helper.make_node("Sigmoid", ["bn"], ["s"]), helper.make_node("Mul", ["bn", "s"], ["y"])], "Sigmoid+Mul"),
    ("silu, Mul's inputs swapped", [helper.make_node("Sigmoid", ["bn"], ["s"]), helper.make_node("Mul", ["s", "bn"], ["y"])],
     "Sigmoid+Mul"),
    ("residual, relu", [helper.make_node("Add", ["bn", "x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])], "Add+Relu"),
    ("residual, silu", [helper.make_node("Add", ["x", "bn"], ["a"]), helper.make_node("Sigmoid", ["a"], ["s"]),
                        helper.make_node("Mul", ["a", "s"], ["y"])], "Add+Sigmoid+Mul"),
]

#: Convolutions each pattern follows: a 3x3 (direct), a depthwise 3x3 (grouped), a 1x1 (direct's 1x1 kernels).
CONVS = {"3x3": (C, 3, 1), "depthwise": (1, 3, C), "1x1": (C, 1, 1)}


def _model(after, conv="3x3", outputs=("y",), seed=0):
    rng = np.random.default_rng(seed)
    per_group, k, groups = CONVS[conv]
    inits = {
        "w": rng.standard_normal((C, per_group, k, k)).astype(np.float32) * 0.5,
        "b": rng.standard_normal(C).astype(np.float32),
        "gamma": rng.uniform(0.5, 1.5, C).astype(np.float32), "beta": rng.standard_normal(C).astype(np.float32),
        "mean": rng.standard_normal(C).astype(np.float32), "var": rng.uniform(0.5, 2, C).astype(np.float32),
        "lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[k, k], pads=[k // 2] * 4,
                              group=groups),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], name="bn")] + after
    graph = helper.make_graph(nodes, "fusion", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, H])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(v, k_) for k_, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _onnx_runtime(model: bytes, x):
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _rel_error(got, want):
    want = np.asarray(want, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("conv", list(CONVS))
@pytest.mark.parametrize("name, after, absorbed", PATTERNS, ids=[p[0] for p in PATTERNS])
def test_the_pattern_is_absorbed_and_the_result_matches_onnx_runtime(name, after, absorbed, conv):
    model = _model(after, conv)
    x = np.random.default_rng(1).standard_normal((1, C, H, H)).astype(np.float32) * 2
    want = _onnx_runtime(model, x)[0]
    graph = ce.load_onnx(model)
    fused = CompiledGraph(graph, EXACT_ENGINE)
    assert fused.fused == {"conv": absorbed}
    assert len(fused.steps) == 1  # conv, batch norm and the pattern: one step
    unfused = CompiledGraph(graph, EXACT_ENGINE, fuse_epilogues=False)
    assert unfused.fused == {}
    for compiled in (fused, unfused):
        assert _rel_error(compiled.run(x), want) < 1e-5


@pytest.mark.parametrize("after, outputs", [
    # the convolution's output is also returned: it must exist
    ([helper.make_node("Relu", ["bn"], ["y"])], ("y", "bn")),
    # a third reader of the output: no SiLU
    ([helper.make_node("Sigmoid", ["bn"], ["s"]), helper.make_node("Mul", ["bn", "s"], ["m"]),
      helper.make_node("Add", ["m", "bn"], ["y"])], ("y",)),
    # the sigmoid is read by another node too: no SiLU (and no Sigmoid alone: the output has two readers)
    ([helper.make_node("Sigmoid", ["bn"], ["s"]), helper.make_node("Mul", ["bn", "s"], ["m"]),
      helper.make_node("Add", ["m", "s"], ["y"])], ("y",)),
    # Mul of the output by something other than its sigmoid
    ([helper.make_node("Sigmoid", ["bn"], ["s"]), helper.make_node("Mul", ["bn", "x"], ["m"]),
      helper.make_node("Add", ["m", "s"], ["y"])], ("y",)),
    # the activation's input is the residual sum, which is returned
    ([helper.make_node("Add", ["bn", "x"], ["a"]), helper.make_node("HardSwish", ["a"], ["y"])], ("y", "a")),
])
def test_a_pattern_whose_intermediate_is_read_elsewhere_is_not_absorbed(after, outputs):
    model = _model(after, outputs=outputs)
    x = np.random.default_rng(2).standard_normal((1, C, H, H)).astype(np.float32)
    want = _onnx_runtime(model, x)
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE)
    assert all("Mul" not in d and "HardSwish" not in d and "Relu" not in d for d in compiled.fused.values())
    got = compiled.run(x)
    got = [got[o] for o in outputs] if isinstance(got, dict) else [got]
    for g, w in zip(got, want):
        assert _rel_error(g, w) < 1e-5


def test_the_residual_is_absorbed_when_only_the_activation_is_not():
    after = [helper.make_node("Add", ["bn", "x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])]
    model = _model(after, outputs=("y", "a"))
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE)
    assert compiled.fused == {"conv": "Add"}
    x = np.random.default_rng(3).standard_normal((1, C, H, H)).astype(np.float32)
    got, want = compiled.run(x), _onnx_runtime(model, x)
    assert _rel_error(got["y"], want[0]) < 1e-5 and _rel_error(got["a"], want[1]) < 1e-5


# -- squeeze-and-excitation ---------------------------------------------------------------------

MID = 3  # the block's reduced channels


def _se_model(activation="relu", gate="Sigmoid", swap=False, extra=(), outputs=("y",), seed=4):
    """x -> Conv 3x3 -> Relu -> "t"; t -> GlobalAveragePool -> Conv 1x1 -> activation -> Conv 1x1 -> gate -> Mul(t, .)."""
    rng = np.random.default_rng(seed)
    inits = {"w0": rng.standard_normal((C, C, 3, 3)).astype(np.float32) * 0.3,
             "w1": rng.standard_normal((MID, C, 1, 1)).astype(np.float32), "b1": rng.standard_normal(MID).astype(np.float32),
             "w2": rng.standard_normal((C, MID, 1, 1)).astype(np.float32), "b2": rng.standard_normal(C).astype(np.float32)}
    act = {"relu": [helper.make_node("Relu", ["r"], ["h"])],
           "silu": [helper.make_node("Sigmoid", ["r"], ["rs"]), helper.make_node("Mul", ["r", "rs"], ["h"])]}[activation]
    gate_node = (helper.make_node("HardSigmoid", ["e"], ["s"], alpha=1 / 6, beta=0.5) if gate == "HardSigmoid"
                 else helper.make_node("Sigmoid", ["e"], ["s"]))
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["t"]),
             helper.make_node("GlobalAveragePool", ["t"], ["p"], name="pool"),
             helper.make_node("Conv", ["p", "w1", "b1"], ["r"], name="fc1", kernel_shape=[1, 1]), *act,
             helper.make_node("Conv", ["h", "w2", "b2"], ["e"], name="fc2", kernel_shape=[1, 1]), gate_node,
             helper.make_node("Mul", ["s", "t"] if swap else ["t", "s"], ["y"], name="scale"), *extra]
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, H])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("activation, gate, swap", [("relu", "HardSigmoid", False), ("silu", "Sigmoid", True),
                                                    ("relu", "Sigmoid", True)])
def test_a_squeeze_and_excitation_block_is_one_step(activation, gate, swap):
    model = _se_model(activation, gate, swap)
    x = np.random.default_rng(5).standard_normal((1, C, H, H)).astype(np.float32)
    want = _onnx_runtime(model, x)[0]
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE)
    act = "Relu" if activation == "relu" else "Sigmoid+Mul"
    assert compiled.fused == {"conv": "Relu", "scale": f"GlobalAveragePool+Conv+{act}+Conv+{gate}+Mul"}
    assert [s.node.op for s in compiled.steps] == ["Conv", "SqueezeExcitation"]
    assert compiled.steps[1].inplace  # the convolution's output is read by nothing else: scaled where it is
    assert _rel_error(compiled.run(x), want) < 1e-5
    assert _rel_error(CompiledGraph(ce.load_onnx(model), EXACT_ENGINE, fuse_epilogues=False).run(x), want) < 1e-5


@pytest.mark.parametrize("extra, outputs, absorbed", [
    # the block's input is returned too: scaled into a new array, the input left as it was
    ((), ("y", "t"), True),
    # the pooled means are read elsewhere: no block
    ((helper.make_node("Flatten", ["p"], ["f"]),), ("y", "f"), False),
    # the gate is read elsewhere: no block
    ((helper.make_node("Add", ["s", "s"], ["g"]),), ("y", "g"), False),
])
def test_a_squeeze_and_excitation_block_with_outside_readers(extra, outputs, absorbed):
    model = _se_model(extra=extra, outputs=outputs)
    x = np.random.default_rng(6).standard_normal((1, C, H, H)).astype(np.float32)
    want = _onnx_runtime(model, x)
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE)
    assert ("scale" in compiled.fused) == absorbed
    got = compiled.run(x)
    for name, w in zip(outputs, want):
        assert _rel_error(got[name], w) < 1e-5


def _se_between_convolutions(c=72, h=9):
    """x (3) -> Conv 3x3 (c) -> Relu -> "t"; squeeze-and-excitation of t -> "y"; y -> Conv 1x1 (16) -> "z":
    an excitation between two channel-blocked convolutions (EfficientNet's and MobileNetV3's place for it)."""
    rng = np.random.default_rng(7)
    inits = {"w0": rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.3,
             "w1": rng.standard_normal((MID, c, 1, 1)).astype(np.float32) * 0.2,
             "b1": rng.standard_normal(MID).astype(np.float32),
             "w2": rng.standard_normal((c, MID, 1, 1)).astype(np.float32), "b2": rng.standard_normal(c).astype(np.float32),
             "w3": rng.standard_normal((16, c, 1, 1)).astype(np.float32) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["t"]),
             helper.make_node("GlobalAveragePool", ["t"], ["p"], name="pool"),
             helper.make_node("Conv", ["p", "w1", "b1"], ["r"], name="fc1", kernel_shape=[1, 1]),
             helper.make_node("Relu", ["r"], ["hr"]),
             helper.make_node("Conv", ["hr", "w2", "b2"], ["e"], name="fc2", kernel_shape=[1, 1]),
             helper.make_node("Sigmoid", ["e"], ["s"]),
             helper.make_node("Mul", ["t", "s"], ["y"], name="scale"),
             helper.make_node("Conv", ["y", "w3"], ["z"], name="project", kernel_shape=[1, 1])]
    graph = helper.make_graph(nodes, "se_blocked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, h, h])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("channels", [72, 64])  # a partial last block, whole blocks
def test_a_squeeze_and_excitation_block_between_blocked_convolutions_runs_blocked(channels):
    from convengine.core.layouts import NCHW, NCHW16C

    model = _se_between_convolutions(channels)
    x = np.random.default_rng(8).standard_normal((1, 3, 9, 9)).astype(np.float32)
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE)
    assert [(s.node.op, s.layouts) for s in compiled.steps] == [
        ("Conv", (NCHW, NCHW16C)), ("SqueezeExcitation", (NCHW16C, NCHW16C)), ("Conv", (NCHW16C, NCHW))]
    assert not any(s.node.op == "LayoutConversion" for s in compiled.steps)
    assert any(k.function == "channel_scale_blocked" for k in compiled.kernels())
    want = _onnx_runtime(model, x)[0]
    assert _rel_error(compiled.run(x), want) < 1e-5
    assert_matches_nchw_self(compiled, model, x, engine=EXACT_ENGINE)
