"""Channel-blocked activations between convolutions: the plan (:func:`plan_layouts`) and the executor running it.

The plan is checked on small step lists (which tensors are blocked, which readers get an NCHW
copy, what keeps a tensor NCHW); the executor on tiny ResNet-style ONNX models against ONNX
Runtime and against itself with ``blocked_layouts=False``.
"""

from __future__ import annotations

import numpy as np
import pytest

from convengine.core.layouts import NCHW, NCHW16C
from convengine.graph.blocking import BLOCKED_SUFFIX, Conversion, ConvTensors, pads_little, plan_layouts

pytestmark = pytest.mark.usefixtures("typical_machine")  # (the layouts follow the cost model's choices)

B = NCHW16C


def _reads(steps):
    reads = {}
    for i, inputs in enumerate(steps):
        for name in inputs:
            reads.setdefault(name, []).append(i)
    return reads


def _always(*_):
    return True


# steps: 0 conv x->a; 1 conv a->b; 2 conv b (+a) -> c; 3 pool c -> d
RESNET_STEPS = [["x"], ["a"], ["b", "a"], ["c"]]
RESNET_CONVS = {0: ConvTensors("x", None, "a"), 1: ConvTensors("a", None, "b"), 2: ConvTensors("b", "a", "c")}
CHANNELS = {"a": 64, "b": 64, "c": 64}


def test_convolutions_read_and_write_blocked_and_other_readers_get_a_copy():
    plan = plan_layouts(RESNET_CONVS, _reads(RESNET_STEPS), set(), CHANNELS, _always)
    # c goes to the pool only: NCHW; a is added to that NCHW output, so it needs an NCHW copy before step 2
    assert plan.blocked == {"a", "b"}
    assert plan.layouts == {0: (NCHW, B), 1: (B, B), 2: (B, NCHW)}
    assert plan.conversions == (Conversion("a" + BLOCKED_SUFFIX, "a", 2),)
    assert plan.name("a", B) == "a" + BLOCKED_SUFFIX and plan.name("a", NCHW) == "a"


def test_a_shortcut_added_to_a_blocked_output_stays_blocked():
    steps = RESNET_STEPS[:3] + [["c"]]  # a fourth convolution reads c
    convs = {**RESNET_CONVS, 3: ConvTensors("c", None, "d")}
    plan = plan_layouts(convs, _reads(steps), set(), {**CHANNELS, "d": 64}, _always)
    assert plan.blocked == {"a", "b", "c"} and plan.conversions == ()
    assert plan.layouts[2] == (B, B)


def test_what_keeps_a_tensor_nchw():
    reads = _reads(RESNET_STEPS)
    assert plan_layouts(RESNET_CONVS, reads, {"b"}, CHANNELS, _always).blocked == {"a"}  # a graph output, a slot
    assert plan_layouts(RESNET_CONVS, reads, set(), {**CHANNELS, "b": 24}, _always).blocked == {"a"}  # 24 channels
    # 72 channels pad to 80 (an eighth more at most): blocked, the last block partly padding
    assert plan_layouts(RESNET_CONVS, reads, set(), {**CHANNELS, "b": 72}, _always).blocked == {"a", "b"}
    # a backend that would change with the layout: step 1's neighbours go back to NCHW
    plan = plan_layouts(RESNET_CONVS, reads, set(), CHANNELS, lambda i, x, y: i != 1)
    assert plan.blocked == set() and all(layouts == (NCHW, NCHW) for layouts in plan.layouts.values())


def test_a_convolution_adding_an_nchw_residual_writes_nchw():
    steps = [["x"], ["p"], ["a", "p"], ["b"]]  # 0 pool x->p; 1 conv p->a; 2 conv a (+p) -> b; 3 conv b -> c
    convs = {1: ConvTensors("p", None, "a"), 2: ConvTensors("a", "p", "b"), 3: ConvTensors("b", None, "c")}
    plan = plan_layouts(convs, _reads(steps), set(), {"a": 32, "b": 32, "c": 32}, _always)
    assert plan.blocked == {"a"} and plan.layouts[2] == (B, NCHW) and plan.conversions == ()


def test_a_pool_between_convolutions_passes_the_layout_through():
    # 0 conv x->a; 1 pool a->p; 2 conv p->b; 3 pool b->q (a graph output reads q); 4 pool a->r (20 channels)
    steps = [["x"], ["a"], ["p"], ["b"], ["a"]]
    convs = {0: ConvTensors("x", None, "a"), 2: ConvTensors("p", None, "b")}
    pools = {1: ("a", "p"), 3: ("b", "q"), 4: ("a", "r")}
    channels = {"a": 32, "p": 32, "b": 48, "q": 48, "r": 32}
    plan = plan_layouts(convs, _reads(steps), {"q"}, channels, _always, pools)
    # q is kept NCHW, so its pool reads b's NCHW copy (b itself: no convolution reads it); r: nothing reads it blocked
    assert plan.blocked == {"a", "p"}
    assert plan.layouts == {0: (NCHW, B), 1: (B, B), 2: (B, NCHW)}
    assert plan.conversions == (Conversion("a" + BLOCKED_SUFFIX, "a", 4),)  # the NCHW pool of a
    # a pool whose input stays NCHW (a convolution that would change backend) runs NCHW
    plan = plan_layouts(convs, _reads(steps), {"q"}, channels, lambda i, x, y: i != 0, pools)
    assert plan.blocked == set() and 1 not in plan.layouts


def test_a_concatenation_is_blocked_with_all_that_lives_in_its_buffer():
    # 0 conv x->a; 1 conv x->b; 2 pool x->c; 3 gather (a, b, c)->g; 4 conv g->y; a, b, c, g live in one buffer
    steps = [["x"], ["x"], ["x"], ["a", "b", "c"], ["g"]]
    convs = {0: ConvTensors("x", None, "a"), 1: ConvTensors("x", None, "b"), 4: ConvTensors("g", None, "y")}
    pools, gathers = {2: ("x", "c")}, {3: (("a", "b", "c"), "g")}
    channels = {"a": 16, "b": 32, "c": 16, "g": 64, "y": 16}
    group = [frozenset("abcg")]
    # x itself is NCHW (a graph input), so the pool of it, hence the whole buffer, stays NCHW
    assert plan_layouts(convs, _reads(steps), set(), channels, _always, pools, gathers, group).blocked == set()
    steps = [["w"]] + steps  # a convolution w -> x first: now x can be blocked, and with it the buffer
    convs = {0: ConvTensors("w", None, "x"), **{i + 1: c for i, c in convs.items()}}
    pools, gathers = {3: ("x", "c")}, {4: (("a", "b", "c"), "g")}
    plan = plan_layouts(convs, _reads(steps), set(), {**channels, "x": 16}, _always, pools, gathers, group)
    assert plan.blocked == set("xabcg") and plan.conversions == ()
    assert plan.layouts[4] == (B, B) and plan.layouts[5] == (B, NCHW) and plan.layouts[3] == (B, B)
    # one member that cannot be blocked (b's convolution would change backend) keeps the whole buffer NCHW
    plan = plan_layouts(convs, _reads(steps), set(), {**channels, "x": 16}, lambda i, x, y: i != 2, pools, gathers, group)
    assert plan.blocked.isdisjoint("abcg") and 4 not in plan.layouts


def test_a_global_average_pool_reads_a_blocked_tensor_as_it_is():
    # 0 conv x->a; 1 conv a (+a) -> b; 2 global pool b -> g: b, read by the pool only, is written blocked
    steps = [["x"], ["a", "a"], ["b"]]
    convs = {0: ConvTensors("x", None, "a"), 1: ConvTensors("a", "a", "b")}
    plan = plan_layouts(convs, _reads(steps), set(), {"a": 32, "b": 32}, _always, sinks={2: "b"})
    assert plan.blocked == {"a", "b"} and plan.conversions == ()
    assert plan.layouts == {0: (NCHW, B), 1: (B, B), 2: (B, NCHW)}
    # without the sink, b goes back to NCHW, and a needs an NCHW copy for the sum
    plan = plan_layouts(convs, _reads(steps), set(), {"a": 32, "b": 32}, _always)
    assert plan.blocked == {"a"} and plan.conversions == (Conversion("a" + BLOCKED_SUFFIX, "a", 1),)


onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from conftest import assert_matches_nchw_self, assert_matches_onnx_runtime, onnx_model_bytes  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from onnx import helper  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)

import convengine as ce  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.graph.executor import CompiledGraph  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)


def _bottleneck(c=32, mid=16, h=9, w=11):
    """x -> conv 3x3 (c) -> relu -> "a"; a -> 1x1 (mid) -> relu -> 3x3 (mid) -> relu -> 1x1 (c) + a -> relu -> "y"
    -> global pool -> "g"; "y" and "g" both outputs."""
    rng = np.random.default_rng(0)

    def conv(name, x, y, cin, cout, k):
        inits[f"{name}.w"] = rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)
        inits[f"{name}.b"] = rng.standard_normal(cout) * 0.1
        return helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name, pads=[k // 2] * 4)

    inits = {}
    nodes = [conv("stem", "x", "s", 3, c, 3), helper.make_node("Relu", ["s"], ["a"], name="r0"),
             conv("c1", "a", "t1", c, mid, 1), helper.make_node("Relu", ["t1"], ["u1"], name="r1"),
             conv("c2", "u1", "t2", mid, mid, 3), helper.make_node("Relu", ["t2"], ["u2"], name="r2"),
             conv("c3", "u2", "t3", mid, c, 1), helper.make_node("Add", ["t3", "a"], ["s3"], name="add"),
             helper.make_node("Relu", ["s3"], ["z"], name="r3"),
             conv("c4", "z", "t4", c, c, 3), helper.make_node("Add", ["t4", "z"], ["y"], name="add2"),
             helper.make_node("GlobalAveragePool", ["y"], ["g"], name="pool")]
    return onnx_model_bytes(nodes, inits, (3, h, w), ("y", "g"), "bottleneck")


@pytest.mark.usefixtures("no_forced_backend")
@pytest.mark.parametrize("batch", [1, 2])
def test_a_blocked_network_matches_onnx_runtime_and_its_nchw_self(batch):
    model = _bottleneck()
    compiled = CompiledGraph(ce.load_onnx(model), batch=batch)
    layouts = {s.node.name: s.layouts for s in compiled.steps if s.conv is not None}
    assert layouts["c2"] == (B, B) and layouts["c3"] == (B, B)  # between convolutions: blocked
    assert layouts["c4"] == (B, NCHW)  # its output is a graph output: NCHW; it reads z blocked, and adds z's NCHW copy
    assert [s.node.outputs for s in compiled.steps if s.node.op == "LayoutConversion"] == [["z"]]
    # residuals read last by their convolution take its output in place: c3's blocked one (a), and
    # c4's NCHW copy of z (in the NCHW graph, c4's residual is its input: not overwritten)
    assert {s.node.name for s in compiled.steps if s.consume_residual} == {"c3", "c4"}
    x = np.random.default_rng(1).standard_normal((batch, 3, 9, 11)).astype(np.float32)
    assert_matches_onnx_runtime(compiled, model, x, outputs=("y", "g"), tol=2e-5)
    plain = assert_matches_nchw_self(compiled, model, x, batch=batch)
    assert {s.node.name for s in plain.steps if s.consume_residual} == {"c3"}
    assert np.array_equal(x, np.random.default_rng(1).standard_normal((batch, 3, 9, 11)).astype(np.float32))


@pytest.mark.usefixtures("no_forced_backend")
def test_an_engine_without_a_blocked_backend_runs_nchw():
    compiled = CompiledGraph(ce.load_onnx(_bottleneck()), ce.Engine(policy="im2col"))
    assert all(s.layouts == (NCHW, NCHW) for s in compiled.steps)
    assert not any(s.node.op == "LayoutConversion" for s in compiled.steps)


@pytest.mark.usefixtures("no_forced_backend")
@pytest.mark.parametrize("batch", [1, 3])
def test_a_stem_stays_blocked_through_its_pool(batch):
    """conv 3x3/2 -> ReLU -> max pool 3x3/2 (ResNet's stem) -> conv 1x1 -> average pool 3x3/1 -> conv 3x3: every
    step blocked, the pools included, against ONNX Runtime and the NCHW executor."""
    rng = np.random.default_rng(3)
    inits = {}

    def conv(name, x, y, cin, cout, k, stride=1):
        inits[f"{name}.w"] = rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)
        inits[f"{name}.b"] = rng.standard_normal(cout) * 0.1
        return helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y], name=name, pads=[k // 2] * 4,
                                strides=[stride] * 2)

    nodes = [conv("stem", "x", "s", 3, 32, 3, 2), helper.make_node("Relu", ["s"], ["a"], name="r0"),
             helper.make_node("MaxPool", ["a"], ["p"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             conv("c1", "p", "b", 32, 16, 1),
             helper.make_node("AveragePool", ["b"], ["q"], name="avgpool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             conv("c2", "q", "y", 16, 8, 3)]
    model = onnx_model_bytes(nodes, inits, (3, 21, 19), ("y",), "stem")
    compiled = CompiledGraph(ce.load_onnx(model), batch=batch)
    layouts = {s.node.name: s.layouts for s in compiled.steps}
    assert layouts["maxpool"] == (B, B) and layouts["avgpool"] == (B, B)
    assert layouts["stem"] == (NCHW, B) and layouts["c1"] == (B, B) and layouts["c2"] == (B, NCHW)
    assert not any(s.node.op == "LayoutConversion" for s in compiled.steps)
    assert any(k.function == "blocked_pool" for k in compiled.kernels())
    x = rng.standard_normal((batch, 3, 21, 19)).astype(np.float32)
    assert_matches_onnx_runtime(compiled, model, x, tol=2e-5)
    assert_matches_nchw_self(compiled, model, x, batch=batch)


def _inception_module(c2=32):
    """stem conv (32) -> [1x1 (16), 3x3 (c2), 3x3/1 max pool -> 1x1 (16), 3x3/1 average pool (32)] -> Concat
    -> 3x3 conv (16, "y"), and the Concat -> 3x3/2 max pool -> 1x1 conv (16, "z")."""
    rng = np.random.default_rng(5)
    inits = {}

    def conv(name, x, y, cin, cout, k):
        inits[f"{name}.w"] = rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)
        inits[f"{name}.b"] = rng.standard_normal(cout) * 0.1
        return [helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [y + ".c"], name=name, pads=[k // 2] * 4),
                helper.make_node("Relu", [y + ".c"], [y], name=name + ".relu")]

    total = 16 + c2 + 16 + 32
    nodes = [*conv("stem", "x", "s", 3, 32, 3), *conv("b1", "s", "t1", 32, 16, 1), *conv("b2", "s", "t2", 32, c2, 3),
             helper.make_node("MaxPool", ["s"], ["m"], name="branch_max", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             *conv("b3", "m", "t3", 32, 16, 1),
             helper.make_node("AveragePool", ["s"], ["t4"], name="branch_avg", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["t1", "t2", "t3", "t4"], ["cat"], name="concat", axis=1),
             *conv("head", "cat", "y", total, 16, 3),
             helper.make_node("MaxPool", ["cat"], ["p"], name="down", kernel_shape=[3, 3], strides=[2, 2]),
             *conv("tail", "p", "z", total, 16, 1)]
    return onnx_model_bytes(nodes, inits, (3, 13, 11), ("y", "z"), "inception")


@pytest.mark.usefixtures("no_forced_backend")
@pytest.mark.parametrize("batch", [1, 3])
def test_an_inception_module_writes_its_concatenation_blocked(batch):
    """Every branch writes its blocks of one blocked buffer (the convolutions directly, the average pool's
    result copied there), the layers after the Concat read it blocked: no NCHW copy anywhere; the outputs
    match ONNX Runtime and the NCHW executor."""
    model = _inception_module()
    compiled = CompiledGraph(ce.load_onnx(model), batch=batch)
    layouts = {s.node.name: s.layouts for s in compiled.steps}
    assert all(layouts[name] == (B, B) for name in ("b1", "b2", "b3", "branch_max", "branch_avg", "concat", "down"))
    assert layouts["head"] == (B, NCHW) and layouts["tail"] == (B, NCHW)
    assert len(compiled.blocked_buffers) == 1 and compiled.gathered == {"concat": "Concat"}
    assert not any(s.node.op == "LayoutConversion" for s in compiled.steps)
    x = np.random.default_rng(2).standard_normal((batch, 3, 13, 11)).astype(np.float32)
    assert_matches_onnx_runtime(compiled, model, x, outputs=("y", "z"), tol=2e-5)
    assert not assert_matches_nchw_self(compiled, model, x, batch=batch).blocked_buffers


@pytest.mark.usefixtures("no_forced_backend")
def test_a_concatenation_with_a_slot_of_partial_blocks_stays_nchw():
    model = _inception_module(c2=24)  # a 24-channel branch: its slot is not whole blocks
    compiled = CompiledGraph(ce.load_onnx(model))
    assert not compiled.blocked_buffers and compiled.gathered == {"concat": "Concat"}
    assert {s.node.name: s.layouts for s in compiled.steps}["concat"] == (NCHW, NCHW)
    x = np.random.default_rng(2).standard_normal((1, 3, 13, 11)).astype(np.float32)
    assert_matches_onnx_runtime(compiled, model, x, outputs=("y", "z"), tol=2e-5)


def test_channels_padded_by_an_eighth_at_most_are_held_blocked():
    held = [16, 48, 72, 100, 112, 120, 184, 200, 1152]  # 72 -> 80, 100 -> 112: an eighth more or less
    assert [c for c in (16, 24, 40, 48, 72, 100, 112, 120, 184, 200, 1152) if pads_little(c)] == held


def _inverted_residual(c=24, expanded=72, h=9, w=11):
    """MNASNet's block: x -> 1x1 (c -> expanded) -> relu -> depthwise 3x3 -> relu -> "d" -> 1x1 (-> c) + x -> "y";
    "d" also goes to a global pool -> "g" (a partial last block: the pool reads an NCHW copy). All outputs."""
    rng = np.random.default_rng(3)
    inits = {"e.w": rng.standard_normal((expanded, c, 1, 1)) / np.sqrt(c), "e.b": rng.standard_normal(expanded) * 0.1,
             "d.w": rng.standard_normal((expanded, 1, 3, 3)) / 3, "d.b": rng.standard_normal(expanded) * 0.1,
             "p.w": rng.standard_normal((c, expanded, 1, 1)) / np.sqrt(expanded), "p.b": rng.standard_normal(c) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "e.w", "e.b"], ["e"], name="expand"),
             helper.make_node("Relu", ["e"], ["er"], name="r1"),
             helper.make_node("Conv", ["er", "d.w", "d.b"], ["dd"], name="depthwise", pads=[1] * 4, group=expanded),
             helper.make_node("Relu", ["dd"], ["d"], name="r2"),
             helper.make_node("Conv", ["d", "p.w", "p.b"], ["p"], name="project"),
             helper.make_node("Add", ["p", "x"], ["y"], name="add"),
             helper.make_node("GlobalAveragePool", ["d"], ["g"], name="pool")]
    return onnx_model_bytes(nodes, inits, (c, h, w), ("y", "g"), "inverted_residual")


@pytest.mark.usefixtures("no_forced_backend")
@pytest.mark.parametrize("batch", [1, 2])
def test_an_inverted_residual_stays_blocked_through_its_depthwise_layer(batch):
    """72 channels (a partial last block) between the expanding, depthwise and projecting layers; 24 stay NCHW."""
    model = _inverted_residual()
    compiled = CompiledGraph(ce.load_onnx(model), batch=batch)
    layouts = {s.node.name: s.layouts for s in compiled.steps if s.conv is not None}
    assert layouts == {"expand": (NCHW, B), "depthwise": (B, B), "project": (B, NCHW)}
    assert {s.node.name: s.conv.backend for s in compiled.steps if s.conv is not None}["depthwise"] == "grouped"
    x = np.random.default_rng(4).standard_normal((batch, 24, 9, 11)).astype(np.float32)
    assert_matches_onnx_runtime(compiled, model, x, outputs=("y", "g"), tol=2e-5)
    assert_matches_nchw_self(compiled, model, x, batch=batch)
