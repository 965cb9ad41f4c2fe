"""ConvNeXt's pointwise Linear layers: ``MatMul`` of channels-last rows by a constant matrix, run by the engine
as 1x1 convolutions on NHWC arrays, with the bias and exact GELU after the first as its epilogue.

Tiny ONNX models built as PyTorch exports a ConvNeXt block's middle (``Transpose(0, 2, 3, 1) ->
MatMul -> Add(bias) -> Div/Erf/Add/Mul/Mul -> MatMul -> Add(bias)``) are checked against ONNX
Runtime on the same file, fused and unfused. A ``MatMul`` whose output something else reads keeps
its bias and GELU as nodes; where no backend takes the layout (a plane narrower than a register
tile, an engine restricted to NCHW backends) the ``MatMul`` stays a node.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from conftest import assert_matches_onnx_runtime, onnx_model_bytes  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from onnx import helper  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)

import convengine as ce  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.graph.executor import CompiledGraph  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)

pytestmark = pytest.mark.usefixtures("no_forced_backend")


def _block(c=24, h=4, w=7, expansion=4, extra_reader=False):
    """x (N, c, h, w) -> NHWC -> Linear(c, 4c) -> GELU -> Linear(4c, c) -> "y" (and the first product, if ``extra_reader``)."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((c, expansion * c)) / np.sqrt(c), "b1": rng.standard_normal(expansion * c),
             "w2": rng.standard_normal((expansion * c, c)) / np.sqrt(expansion * c), "b2": rng.standard_normal(c),
             "root2": np.array(1.4142135), "one": np.array(1.0), "half": np.array(0.5)}
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1], name="to_nhwc"),
             helper.make_node("MatMul", ["t", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="bias1"),
             helper.make_node("Div", ["a1", "root2"], ["d"], name="scale"),
             helper.make_node("Erf", ["d"], ["e"], name="erf"),
             helper.make_node("Add", ["e", "one"], ["o"], name="one"),
             helper.make_node("Mul", ["a1", "o"], ["g0"], name="times"),
             helper.make_node("Mul", ["g0", "half"], ["g"], name="half"),
             helper.make_node("MatMul", ["g", "w2"], ["m2"], name="fc2"),
             helper.make_node("Add", ["m2", "b2"], ["y"], name="bias2")]
    outputs = ("y",)
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["m1"], ["r"], name="other"))
        outputs = ("y", "r")
    return onnx_model_bytes(nodes, inits, (c, h, w), outputs, "linear")


def _input(model_c=24, h=4, w=7, batch=2):
    return np.random.default_rng(1).standard_normal((batch, model_c, h, w)).astype(np.float32)


@pytest.mark.parametrize("channels", [24, 32])
@pytest.mark.parametrize("batch", [1, 2])
def test_linear_layers_run_as_nhwc_convolutions_and_match_onnx_runtime(channels, batch):
    model = _block(channels)
    compiled = CompiledGraph(ce.load_onnx(model), batch=batch)
    assert compiled.fused == {"fc1": "MatMul+Add+Gelu", "fc2": "MatMul"}
    assert [s.node.op for s in compiled.steps] == ["Transpose", "MatMul", "MatMul", "Add"]
    assert all(s.conv.backend == "direct" for s in compiled.steps if s.linear is not None)
    assert compiled.layer_backends == {}  # not convolutions of the model: plans do not list them
    x = _input(channels, batch=batch)
    assert_matches_onnx_runtime(compiled, model, x, tol=2e-5)
    unfused = CompiledGraph(ce.load_onnx(model), fuse_epilogues=False, batch=batch)
    assert unfused.fused == {}
    np.testing.assert_allclose(compiled.run(x), unfused.run(x), rtol=2e-5, atol=2e-5)


def test_a_product_read_elsewhere_keeps_its_bias_and_gelu_as_nodes():
    model = _block(extra_reader=True)
    compiled = CompiledGraph(ce.load_onnx(model))
    assert compiled.fused["fc1"] == "MatMul"
    assert "Gelu" in [s.node.op for s in compiled.steps]  # the element-wise chain, on its own
    assert_matches_onnx_runtime(compiled, model, _input(batch=1), outputs=("y", "r"), tol=2e-5)


@pytest.mark.parametrize("engine, plane", [(ce.Engine(), (2, 3)), (ce.Engine(policy="im2col"), (4, 7))])
def test_without_a_backend_for_the_layout_the_matmul_stays_a_node(engine, plane):
    h, w = plane  # 6 pixels: narrower than direct's register tile; or an engine that runs im2col only
    model = _block(h=h, w=w)
    compiled = CompiledGraph(ce.load_onnx(model), engine)
    assert all(s.linear is None for s in compiled.steps)
    assert [s.node.op for s in compiled.steps].count("MatMul") == 2
    assert_matches_onnx_runtime(compiled, model, _input(h=h, w=w, batch=1), tol=2e-5)


def test_the_linear_matrices_are_held_once():
    """The graph's (C, O) matrices, re-laid out in one buffer (runtime.strides), are what direct reads:
    compiling keeps no packed copy of them (ConvNeXt-T: 104 of its 109 MiB of weights)."""
    import tracemalloc

    model = _block(256)  # (256, 1024) and (1024, 256) matrices: 2 MiB
    original = {name: value.copy() for name, value in ce.load_onnx(model).params.items()}
    CompiledGraph(ce.load_onnx(model))  # its kernels and modules loaded, then freed
    graph = ce.load_onnx(model)
    weights = graph.params["w1"].nbytes + graph.params["w2"].nbytes
    tracemalloc.start()
    try:
        compiled = CompiledGraph(graph, precompile=False)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 1.5 * weights  # the new buffer (the old arrays were allocated before tracing), and no packed copy
    assert all(s.conv.backend == "direct" for s in compiled.steps if s.linear is not None)
    assert graph.params["w1"].base is graph.params["w2"].base is not None
    for name, value in original.items():
        np.testing.assert_array_equal(graph.params[name], value)
    assert_matches_onnx_runtime(compiled, model, _input(256, batch=1), tol=2e-5)
