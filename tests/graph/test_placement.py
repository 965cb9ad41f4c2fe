"""Concatenations written in place and channel shuffles without copies (convengine.graph.placement).

Oracle: ONNX Runtime on the same ONNX graph, and the executor with ``concat_in_place=False``
(``np.concatenate`` and the shuffle's transpose, as before), at batch 1 and 3.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402  (after importorskip: without onnx the module is skipped)

import convengine as ce  # noqa: E402  (after importorskip: without onnx the module is skipped)
from convengine.core.layouts import NCHW16C  # noqa: E402  (after importorskip: without onnx the module is skipped)
from convengine.graph import ops  # noqa: E402  (after importorskip: without onnx the module is skipped)
from convengine.graph.executor import CompiledGraph  # noqa: E402  (after importorskip: without onnx the module is skipped)
from convengine.models import shufflenet_v2_x1_0, squeezenet1_1  # noqa: E402  (after importorskip: without onnx the module is skipped)

pytestmark = pytest.mark.usefixtures("no_forced_backend")

H = 9


class _Builder:
    """Nodes and random weights for a small ONNX graph on input ``x`` (N, channels, H, H)."""

    def __init__(self, channels: int, seed: int = 0):
        self.channels = channels
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], {}

    def conv(self, x: str, c_in: int, c_out: int, k: int = 1, relu: bool = True, groups: int = 1) -> str:
        name = f"conv{len(self.nodes)}"
        weight = self.rng.standard_normal((c_out, c_in // groups, k, k)) / np.sqrt(c_in * k * k)
        self.inits[name + ".w"] = weight.astype(np.float32)
        self.inits[name + ".b"] = self.rng.standard_normal(c_out).astype(np.float32) * 0.1
        self.nodes.append(helper.make_node("Conv", [x, name + ".w", name + ".b"], [name], name=name, kernel_shape=[k, k],
                                           pads=[k // 2] * 4, group=groups))
        if not relu:
            return name
        return self.op("Relu", [name])

    def op(self, op: str, inputs, **attrs) -> str:
        name = f"{op.lower()}{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def shuffle(self, x: str, channels: int, groups: int = 2) -> str:
        shape_a = self.const(np.array([0, groups, channels // groups, H, H], np.int64))
        shape_b = self.const(np.array([0, channels, H, H], np.int64))
        t = self.op("Reshape", [x, shape_a])
        t = self.op("Transpose", [t], perm=[0, 2, 1, 3, 4])
        return self.op("Reshape", [t, shape_b])

    def halves(self, x: str, channels: int) -> tuple[str, str]:
        parts = []
        for start, end in ((0, channels // 2), (channels // 2, channels)):
            starts, ends, axes = (self.const(np.array([v], np.int64)) for v in (start, end, 1))
            parts.append(self.op("Slice", [x, starts, ends, axes]))
        return parts[0], parts[1]

    def const(self, value) -> str:
        name = f"const{len(self.inits)}"
        self.inits[name] = value
        return name

    def model(self, outputs) -> bytes:
        graph = helper.make_graph(self.nodes, "placement",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", self.channels, H, H])],
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                                  [numpy_helper.from_array(v, k) for k, v in self.inits.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model.SerializeToString()


def inception_like() -> bytes:
    """Four branches (1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3 split in two concatenated; MaxPool -> 1x1) concatenated."""
    b = _Builder(8)
    one = b.conv("x", 8, 16)
    three = b.conv(b.conv("x", 8, 8), 8, 16, 3)
    mid = b.conv(b.conv("x", 8, 8), 8, 8, 3)
    nested = b.op("Concat", [b.conv(mid, 8, 16), b.conv(mid, 8, 8, 3)], axis=1)  # Inception-v3's InceptionE
    pool = b.conv(b.op("MaxPool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]), 8, 8)
    cat = b.op("Concat", [one, three, nested, pool], axis=1)
    return b.model([b.conv(cat, 64, 8, 3)])


def densenet_like(layers: int = 4, growth: int = 16, batchnorm: bool = True) -> bytes:
    """DenseNet's block: each layer concatenates every earlier feature again, BN -> ReLU -> convolutions after
    (without ``batchnorm``: the convolutions right after)."""
    b = _Builder(8)
    features = [b.op("MaxPool", [b.conv("x", 8, 16, 3)], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])]
    for _ in range(layers):
        cat = b.op("Concat", features, axis=1) if len(features) > 1 else features[0]
        c = 16 + growth * (len(features) - 1)
        if batchnorm:
            params = [b.const(v.astype(np.float32)) for v in (b.rng.uniform(0.5, 1.5, c), b.rng.standard_normal(c),
                                                               b.rng.standard_normal(c) * 0.1, b.rng.uniform(0.5, 2, c))]
            cat = b.op("Relu", [b.op("BatchNormalization", [cat] + params)])
        features.append(b.conv(b.conv(cat, c, 32), 32, growth, 3, relu=False))
    cat = b.op("Concat", features, axis=1)
    return b.model([b.conv(cat, 16 + growth * layers, 8)])


def fire_like() -> bytes:
    """SqueezeNet's fire module twice: squeeze 1x1 + ReLU, then 1x1 and 3x3 expansions (ReLU fused) concatenated."""
    b = _Builder(16)
    x, c = "x", 16
    for _ in range(2):
        squeeze = b.conv(x, c, 8)
        x, c = b.op("Concat", [b.conv(squeeze, 8, 16), b.conv(squeeze, 8, 16, 3)], axis=1), 32
    return b.model([x])


def shufflenet_like() -> bytes:
    """ShuffleNetV2: a downsampling-style unit (two branches), then a unit that passes one half through; shuffles after both."""
    b = _Builder(16)
    left = b.conv(b.conv("x", 16, 16, 3, relu=False, groups=16), 16, 16)
    right = b.conv(b.conv(b.conv("x", 16, 16), 16, 16, 3, relu=False, groups=16), 16, 16)
    x = b.shuffle(b.op("Concat", [left, right], axis=1), 32)
    kept, other = b.halves(x, 32)
    branch = b.conv(b.conv(b.conv(other, 16, 16), 16, 16, 3, relu=False, groups=16), 16, 16)
    x = b.shuffle(b.op("Concat", [kept, branch], axis=1), 32)
    return b.model([b.conv(x, 32, 8)])


GRAPHS = {"inception": (inception_like, 2), "densenet": (densenet_like, 4),  # (blocked: see the next test)
          "densenet without batch norm": (lambda: densenet_like(batchnorm=False), 4), "fire": (fire_like, 2),
          "shufflenet": (shufflenet_like, 2)}  # builder, Concat nodes that become views


def _rel_error(got, want) -> float:
    want = np.asarray(want, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(GRAPHS))
def test_matches_onnx_runtime_and_the_copying_executor(name, batch):
    build, concats = GRAPHS[name]
    model = build()
    graph = ce.load_onnx(model)
    x = np.random.default_rng(batch).standard_normal((batch, graph.inputs[0].shape[1], H, H)).astype(np.float32)
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    placed = CompiledGraph(graph, batch=batch)
    plain = CompiledGraph(graph, batch=batch, concat_in_place=False)
    assert len(placed.gathered) == concats and plain.gathered == {}
    if name == "shufflenet":
        assert set(placed.gathered.values()) == {"Concat+Reshape+Transpose+Reshape"}
        assert not any(s.node.op == "Transpose" for s in placed.steps)
    got = placed.run(x)
    assert _rel_error(got, plain.run(x)) < 1e-6
    assert _rel_error(got, want) < 1e-5


class _Spy:
    """Wraps a step's PreparedConv: records what each call wrote into (``out``) and returned."""

    def __init__(self, conv, calls):
        self.conv, self.calls = conv, calls

    def run_validated(self, *args, **kwargs):  # what the executor calls
        y = self.conv.run_validated(*args, **kwargs)
        self.calls.append((kwargs.get("out"), y))
        return y


def _spied(compiled: CompiledGraph) -> list:
    calls = []
    for step in compiled.steps:
        if step.conv is not None:
            step.conv = _Spy(step.conv, calls)
    return calls


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("backend", ["direct", "im2col", "naive"])
def test_the_concat_copies_nothing_and_the_convolutions_write_into_its_buffer(monkeypatch, backend, batch):
    """Fire modules: each expansion's output is a view of the concatenation, which is the graph's output.

    ``naive`` cannot write into a slice: the engine copies its output there instead, and the
    result is the same."""
    model = fire_like()
    graph = ce.load_onnx(model)
    compiled = CompiledGraph(graph, ce.Engine(policy=backend), batch=batch)
    calls = _spied(compiled)

    def no_concatenate(node, arrays):
        raise AssertionError("np.concatenate ran")

    monkeypatch.setitem(ops.OPS, "Concat", ops.Op(ops.OPS["Concat"].infer, no_concatenate))
    x = np.random.default_rng(0).standard_normal((batch, 16, H, H)).astype(np.float32)
    y = compiled.run(x)
    into = [(out, ret) for out, ret in calls if out is not None]
    assert len(into) == 4  # the expansions; the squeezes write new arrays
    assert all(np.shares_memory(ret, out.buffer) for out, ret in into)
    assert any(np.shares_memory(ret, y) for _, ret in into)  # the last fire module's buffer is the output
    monkeypatch.undo()
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert _rel_error(y, want) < 1e-5
    writes = {s.conv.conv.backend_for(batch): s.conv.conv._prepared(batch).writes_into(1)
              for s in compiled.steps if s.conv is not None}
    assert writes == {backend: backend != "naive"}


def test_densenet_features_are_placed_once_and_earlier_concats_are_prefixes():
    graph = ce.load_onnx(densenet_like(layers=4, batchnorm=False))
    compiled = CompiledGraph(graph)
    gathers = [s for s in compiled.steps if s.gather is not None]
    assert len(gathers) == 4 and len({s.gather.slot.buffer for s in gathers}) == 1  # one buffer for the block
    assert all(s.copies == [] for s in gathers)  # every feature already lies in its place
    assert [s.gather.slot.start for s in gathers] == [0] * 4  # earlier concats: prefixes of the last
    assert [s.gather.slot.channels for s in gathers] == [32, 48, 64, 80]
    placed = [s.node.op for s in compiled.steps if s.homes]
    assert placed == ["MaxPool"] + ["Conv"] * 4  # the block's input is copied in once, the features written there


def test_a_tensor_wanted_by_two_unrelated_concats_is_copied_by_one():
    b = _Builder(8)
    a, c = b.conv("x", 8, 8), b.conv("x", 8, 8, 3)
    first = b.op("Concat", [a, c], axis=1)
    second = b.op("Concat", [c, a], axis=1)  # the same tensors in another order: one of them must copy
    model = b.model([b.op("Add", [b.conv(first, 16, 8), b.conv(second, 16, 8)])])
    graph = ce.load_onnx(model)
    compiled = CompiledGraph(graph)
    assert sum(len(s.copies) for s in compiled.steps) == 2
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 8, H, H)).astype(np.float32)
        want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert _rel_error(compiled.run(x), want) < 1e-5


def test_graph_inputs_and_outputs_are_never_placed_inside_a_buffer():
    b = _Builder(8)
    a = b.conv("x", 8, 8)
    cat = b.op("Concat", ["x", a], axis=1)  # the caller's input: copied, never written over
    model = b.model([b.conv(cat, 16, 8), a])  # `a` is returned too: a whole array of its own
    compiled = CompiledGraph(ce.load_onnx(model))
    assert compiled.placement.homes == {}
    x = np.random.default_rng(0).standard_normal((3, 8, H, H)).astype(np.float32)
    before = x.copy()
    got = compiled.run(x)
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.array_equal(x, before)
    assert all(_rel_error(got[name], w) < 1e-5 for name, w in zip(compiled.graph.outputs, want))
    assert got[compiled.graph.outputs[1]].flags.c_contiguous


@pytest.mark.parametrize("factory, gathered", [(squeezenet1_1, 8), (shufflenet_v2_x1_0, 16)])
def test_zoo_models_match_the_copying_executor(factory, gathered):
    graph = factory(num_classes=10)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    placed = CompiledGraph(graph, batch=2)
    assert len(placed.gathered) == gathered
    assert _rel_error(placed.run(x), CompiledGraph(graph, batch=2, concat_in_place=False).run(x)) < 1e-6


def test_a_concat_whose_one_reader_runs_in_place_keeps_its_copy():
    """DenseNet held NCHW: batch norm + ReLU (one fused step) overwrite each concatenation in place; those stay
    copies (measured faster than reading a shared buffer), the block's last one, read by a convolution, does not."""
    compiled = CompiledGraph(ce.load_onnx(densenet_like(layers=4)), blocked_layouts=False)
    concats = [s for s in compiled.steps if s.node.op == "Concat"]
    assert [s.gather is not None for s in concats] == [False, False, False, True]
    outputs = {s.node.outputs[0] for s in concats}
    assert [s.inplace for s in compiled.steps if s.block is not None and s.inputs[0] in outputs] == [True] * 3


def test_a_blocked_batch_norm_lets_every_concat_be_a_view_of_one_blocked_buffer():
    """DenseNet with blocked layouts: batch norm + ReLU passes the layout through as a pool does, writing a new
    blocked array, so no concatenation keeps its copy, the block's buffer is blocked (the 3x3 layers write
    their slots in place) and each 1x1 layer reads blocked; the result as ONNX Runtime's."""
    model = densenet_like(layers=4)
    compiled = CompiledGraph(ce.load_onnx(model))
    concats = [s for s in compiled.steps if s.node.op == "Concat"]
    assert all(s.gather is not None and not s.copies for s in concats[:-1])
    norms = [s for s in compiled.steps if s.node.op == "BatchNormalization+Relu"]
    assert len(norms) == 4 and all(s.layouts == (NCHW16C, NCHW16C) and not s.inplace for s in norms)
    assert compiled.blocked_buffers
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 8, H, H)).astype(np.float32)
        want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert _rel_error(compiled.run(x) if batch == 1 else CompiledGraph(ce.load_onnx(model), batch=batch).run(x),
                          want) < 1e-5


def test_an_in_place_operator_never_writes_over_a_placed_tensor_another_view_still_needs():
    """``a`` lives in the concatenation's buffer; the ``Relu`` after it is its last reader, but the
    concatenation (the same memory) is read later: the ``Relu`` must not run in place."""
    b = _Builder(8)
    a, c = b.conv("x", 8, 8, relu=False), b.conv("x", 8, 8, 3, relu=False)
    cat = b.op("Concat", [a, c], axis=1)
    r = b.op("Relu", [a])
    model = b.model([b.op("Add", [b.conv(cat, 16, 8, relu=False), b.conv(r, 8, 8, relu=False)])])
    compiled = CompiledGraph(ce.load_onnx(model))
    assert compiled.gathered and not next(s for s in compiled.steps if s.node.op == "Relu").inplace
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 8, H, H)).astype(np.float32)
        want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert _rel_error(compiled.run(x), want) < 1e-5
