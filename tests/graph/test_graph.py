"""The graph executor: shape checks, BN folding, buffer release, weights, plans, summary, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convengine as ce
from convengine.cli import main
from convengine.graph import Graph, GraphBuilder, GraphError, Node, TensorSpec
from convengine.graph.executor import CompiledGraph
from convengine.graph.plan import Plan
from convengine.models import lenet, resnet18

EXACT_ENGINE = ce.Engine(policy=["im2col", "naive"])


def _small_resnet_like(seed=0):
    """conv-BN-ReLU, a residual add and a dense head: the patterns the executor special-cases."""
    b = GraphBuilder("tiny", (3, 12, 12), seed=seed)
    x = b.relu(b.batchnorm(b.conv(b.input.name, 8, 3, padding=1, bias=False, name="conv1"), name="bn1"))
    y = b.batchnorm(b.conv(x, 8, 3, padding=1, bias=False, name="conv2"), name="bn2")
    x = b.relu(b.add(x, y))
    x = b.flatten(b.global_avgpool(b.maxpool(x, 2)))
    graph = b.build(b.dense(x, 5, name="fc"))
    rng = np.random.default_rng(seed + 1)
    for name, value in graph.params.items():  # non-trivial BN statistics, so folding is really tested
        if name.endswith("running_var"):
            graph.params[name] = rng.uniform(0.5, 2.0, value.shape).astype(value.dtype)
        elif name.startswith("bn"):
            graph.params[name] = rng.standard_normal(value.shape).astype(value.dtype)
    return graph


def _input(graph, batch=2, seed=0):
    shape = (batch,) + tuple(graph.inputs[0].shape[1:])
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_batchnorm_folding_matches_separate_batchnorm():
    graph = _small_resnet_like()
    x = _input(graph)
    folded = CompiledGraph(graph, EXACT_ENGINE, fold_batchnorm=True, fuse_epilogues=False)
    separate = CompiledGraph(graph, EXACT_ENGINE, fold_batchnorm=False, fuse_epilogues=False)
    assert len(folded.steps) == len(separate.steps) - 2  # both BNs folded away
    np.testing.assert_allclose(folded.run(x), separate.run(x), rtol=1e-5, atol=1e-5)


def test_results_do_not_depend_on_the_backend_per_layer():
    graph = _small_resnet_like()
    x = _input(graph, batch=3)
    outputs = [CompiledGraph(graph, ce.Engine(policy=name)).run(x) for name in ("naive", "im2col", "fft")]
    for y in outputs[1:]:
        np.testing.assert_allclose(y, outputs[0], rtol=1e-4, atol=1e-4)


def test_intermediate_buffers_are_released_after_their_last_consumer():
    graph = resnet18()
    compiled = CompiledGraph(graph, EXACT_ENGINE)
    released = [name for step in compiled.steps for name in step.release]
    intermediates = {out for step in compiled.steps for out in step.node.outputs} - set(graph.outputs)
    assert set(released) == intermediates | {"input"} and len(released) == len(set(released))
    # the widest point of ResNet-18 holds a handful of tensors, not the whole network's activations
    live, peak = set(), 0
    for step in compiled.steps:
        live.update(step.node.outputs)
        peak = max(peak, len(live))
        live.difference_update(step.release)
    assert peak <= 4


def test_batch_size_is_free():
    graph = lenet()
    one, three = graph.run(_input(graph, 1)), graph.run(_input(graph, 3))
    assert one.shape == (1, 10) and three.shape == (3, 10)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((1, 28, 28), np.float32), r"input 'input' must have shape \(N, 1, 28, 28\)"),
    (np.zeros((1, 3, 28, 28), np.float32), r"shape \(N, 1, 28, 28\)"),
    (np.zeros((1, 1, 32, 32), np.float32), r"shape \(N, 1, 28, 28\)"),
    (np.zeros((1, 1, 28, 28), np.float64), r"input 'input' must be float32"),
    ({"image": np.zeros((1, 1, 28, 28), np.float32)}, r"unknown \['image'\], missing \['input'\]"),
    ({}, r"missing \['input'\]"),
])
def test_bad_run_inputs_are_named(bad, match):
    with pytest.raises(GraphError, match=match):
        lenet().run(bad)


def test_graph_construction_errors_name_the_node():
    spec = TensorSpec("x", (None, 2, 4, 4))
    with pytest.raises(GraphError, match=r"'n1'.*unsupported operator 'Gru'"):
        Graph("g", [spec], ["y"], [Node("n1", "Gru", ["x"], ["y"])], {})
    with pytest.raises(GraphError, match=r"'c'.*reads 'w'"):
        Graph("g", [spec], ["y"], [Node("c", "Conv", ["x", "w"], ["y"])], {})
    w = np.zeros((3, 5, 3, 3), np.float32)  # 5 input channels for a 2-channel input
    with pytest.raises(GraphError, match=r"node 'c' \(Conv\).*input channels"):
        Graph("g", [spec], ["y"], [Node("c", "Conv", ["x", "w"], ["y"])], {"w": w})


# -- weights -------------------------------------------------------------------------------------


def test_weights_round_trip(tmp_path):
    graph = lenet(seed=1)
    graph.save_weights(tmp_path / "w.npz")
    other = lenet(seed=2)
    other.load_weights(tmp_path / "w.npz")
    x = _input(graph)
    np.testing.assert_array_equal(graph.run(x), other.run(x))


def test_torch_training_counters_are_ignored(tmp_path):
    graph = resnet18()
    params = dict(graph.params, **{"bn1.num_batches_tracked": np.array(7)})
    np.savez(tmp_path / "w.npz", **params)
    graph.load_weights(tmp_path / "w.npz")


def test_bad_weights_are_refused_without_partial_loading(tmp_path):
    graph = lenet(seed=1)
    before = {k: v.copy() for k, v in graph.params.items()}
    params = dict(graph.params)
    params.pop("fc3.bias")
    params["fc9.weight"] = np.zeros(3, np.float32)
    params["conv1.weight"] = np.zeros((6, 1, 3, 3), np.float32)
    params["fc1.weight"] = params["fc1.weight"] + 1  # a valid change that must not be applied
    np.savez(tmp_path / "bad.npz", **params)
    with pytest.raises(GraphError) as info:
        graph.load_weights(tmp_path / "bad.npz")
    message = str(info.value)
    assert "missing: fc3.bias" in message and "unexpected: fc9.weight" in message
    assert "conv1.weight (6, 1, 3, 3) (expected (6, 1, 5, 5))" in message
    for name, value in before.items():
        np.testing.assert_array_equal(graph.params[name], value)


def test_object_and_corrupt_npz_files_are_refused(tmp_path):
    graph = lenet()
    np.savez(tmp_path / "objects.npz", **{"conv1.weight": np.array([object()], dtype=object)})
    with pytest.raises(GraphError, match="object arrays"):
        graph.load_weights(tmp_path / "objects.npz")
    graph.save_weights(tmp_path / "good.npz")
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(GraphError, match="truncated.npz"):
        graph.load_weights(tmp_path / "truncated.npz")


# -- plans ---------------------------------------------------------------------------------------


def test_plan_round_trip_fixes_each_layer(tmp_path):
    graph = _small_resnet_like()
    compiled = CompiledGraph(graph, EXACT_ENGINE)
    plan = Plan.from_compiled(compiled)
    plan.layers = {name: "naive" for name in plan.layers}
    plan.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json", graph, backends=ce.Engine().registry.names())
    replay = CompiledGraph(graph, ce.Engine(), plan=loaded)
    assert set(replay.layer_backends.values()) == {"naive"}
    np.testing.assert_allclose(replay.run(_input(graph)), compiled.run(_input(graph)), rtol=1e-4, atol=1e-5)


def _saved_plan(tmp_path, graph, **changes):
    plan = Plan.from_compiled(CompiledGraph(graph, EXACT_ENGINE))
    data = {"format": "convengine-plan", "version": 1, "model": plan.model, "graph_digest": plan.graph_digest,
            "hardware": plan.hardware, "layers": plan.layers, "host": plan.host}
    data.update(changes)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    return path


def test_plans_for_other_models_hardware_or_edited_are_refused(tmp_path):
    graph = _small_resnet_like()
    with pytest.raises(GraphError, match="made for model 'lenet'"):
        Plan.load(_saved_plan(tmp_path, graph, model="lenet"), graph)
    with pytest.raises(GraphError, match="other hardware"):
        Plan.load(_saved_plan(tmp_path, graph, hardware="0123456789abcdef"), graph)
    assert Plan.load(_saved_plan(tmp_path, graph, hardware="0123456789abcdef"), graph, force=True)
    with pytest.raises(GraphError, match="do not match.*conv9"):
        Plan.load(_saved_plan(tmp_path, graph, layers={"conv1": "naive", "conv9": "naive"}), graph)
    with pytest.raises(GraphError, match="unknown backends.*'warp-drive'"):
        Plan.load(_saved_plan(tmp_path, graph, layers={"conv1": "warp-drive", "conv2": "naive"}), graph,
                  backends=ce.Engine().registry.names())
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(GraphError, match="junk.json"):
        Plan.load(tmp_path / "junk.json", graph)
    with pytest.raises(GraphError, match="not a convengine plan"):
        Plan.load(_saved_plan(tmp_path, graph, format="something-else"), graph)


# -- summary and CLI -----------------------------------------------------------------------------


def test_summary_json_cli(capsys):
    assert main(["summary", "lenet", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "lenet" and data["total"]["params"] == 61_706
    assert {"name", "op", "output_shape", "params", "macs", "backend"} <= set(data["layers"][0])
    conv1 = next(layer for layer in data["layers"] if layer["name"] == "conv1")
    assert conv1["output_shape"] == [1, 6, 28, 28] and conv1["macs"] == 6 * 28 * 28 * 25


def test_summary_input_shape_scales_macs(capsys):
    main(["summary", "lenet", "--json", "--input-shape", "4,1,28,28"])
    assert json.loads(capsys.readouterr().out)["total"]["macs"] == 4 * 416_520
    assert main(["summary", "lenet", "--input-shape", "1,32,32"]) == 2
    assert "defined for 28x28 inputs only" in capsys.readouterr().err
    main(["summary", "resnet18", "--json", "--input-shape", "3,112,112"])  # global pooling: any size
    small = json.loads(capsys.readouterr().out)
    assert small["layers"][0]["output_shape"] == [1, 64, 56, 56]  # conv1 at half the resolution
    assert small["total"]["macs"] == resnet18(input_size=112).summary().total_macs < resnet18().summary().total_macs / 3


def test_run_cli_prints_layers_backends_and_model_time(capsys):
    assert main(["run", "lenet", "--batch", "2", "--repeat", "1", "--policy", "im2col,naive"]) == 0
    out = capsys.readouterr().out
    assert "backends on this machine" in out and "conv1" in out and "whole model: median" in out
    assert "output fc3: shape (2, 10)" in out


def test_tune_cli_writes_a_plan_that_run_accepts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONVENGINE_CACHE_DIR", str(tmp_path / "cache"))
    plan = tmp_path / "lenet-plan.json"
    assert main(["tune", "lenet", "--budget", "0.05", "-o", str(plan)]) == 0
    assert set(json.loads(plan.read_text())["layers"]) == {"conv1", "conv2"}
    assert main(["run", "lenet", "--plan", str(plan), "--repeat", "1"]) == 0
    assert main(["run", "resnet18", "--plan", str(plan)]) == 2
    assert "made for model 'lenet'" in capsys.readouterr().err


def test_unknown_model_is_a_clear_cli_error(capsys):
    assert main(["summary", "resnet19"]) == 2
    assert "resnet19" in capsys.readouterr().err


def test_elementwise_ops_reuse_dead_buffers_but_never_the_callers():
    graph = _small_resnet_like()
    compiled = CompiledGraph(graph, EXACT_ENGINE, fuse_epilogues=False)  # fusion would absorb them
    inplace = {s.node.op for s in compiled.steps if s.inplace}
    assert {"Relu", "Add"} <= inplace
    x = _input(graph)
    before = x.copy()
    y = compiled.run(x)
    np.testing.assert_array_equal(x, before)
    fresh = CompiledGraph(graph, EXACT_ENGINE, fuse_epilogues=False)
    for step in fresh.steps:
        step.inplace = False
    np.testing.assert_array_equal(y, fresh.run(x))


def test_a_graph_input_feeding_an_elementwise_op_is_not_overwritten():
    b = GraphBuilder("relu-only", (2, 3, 3))
    graph = b.build(b.relu(b.input.name))
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32)
    before = x.copy()
    np.testing.assert_array_equal(graph.run(x), np.maximum(before, 0))
    np.testing.assert_array_equal(x, before)


def test_views_of_live_or_caller_tensors_are_not_overwritten():
    """Relu on a Flatten (a view) must not write through to a tensor still read later, or to the input."""
    b = GraphBuilder("views", (2, 3, 3))
    conv = b.conv(b.input.name, 2, 1, name="c")
    flat = b.relu(b.flatten(conv))                      # view of conv's output, which Add reads later
    again = b.flatten(b.add(conv, conv))
    through = b.relu(b.node("Identity", [b.input.name]))  # the caller's array under another name
    graph = b.build([b.add(flat, again), through])
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32)
    before = x.copy()
    out = CompiledGraph(graph, EXACT_ENGINE).run(x)
    np.testing.assert_array_equal(x, before)
    c = ce.conv2d(before, graph.params["c.weight"], graph.params["c.bias"], backend="im2col").reshape(1, -1)
    np.testing.assert_allclose(out[graph.outputs[0]], np.maximum(c, 0) + 2 * c, rtol=1e-6)
    np.testing.assert_array_equal(out[graph.outputs[1]], np.maximum(before, 0))


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_maxpool_kernel_matches_the_numpy_definition(data):
    """The Numba max-pool equals the padded tap-by-tap numpy reduction, NaN and all-padding windows included."""
    from convengine.graph.ops import OPS, _pad_for_pool, _pool_geometry, _pool_reduce

    kernel = [data.draw(st.integers(1, 4)) for _ in range(2)]
    attrs = dict(kernel_shape=kernel, strides=[data.draw(st.integers(1, 3)) for _ in range(2)],
                 dilations=[data.draw(st.integers(1, 2)) for _ in range(2)],
                 pads=[data.draw(st.integers(0, k - 1)) for k in kernel * 2], ceil_mode=data.draw(st.integers(0, 1)))
    shape = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(4, 9)),
             data.draw(st.integers(4, 9)))
    x = np.random.default_rng(data.draw(st.integers(0, 99))).standard_normal(shape).astype(np.float32)
    if data.draw(st.booleans()):
        x.flat[data.draw(st.integers(0, x.size - 1))] = np.nan
    node = Node("pool", "MaxPool", ["x"], ["y"], attrs)
    try:
        geometry = _pool_geometry(node, x.shape)
    except GraphError:
        return  # window larger than the padded input: rejected at shape inference, as tested elsewhere
    expected = _pool_reduce(_pad_for_pool(x, geometry, -np.inf), geometry, np.maximum)
    np.testing.assert_array_equal(OPS["MaxPool"].run(node, [x])[0], expected)


@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 1, 1, 1), (2, 0, 1, 2), (0, 2, 2, 1)])
@pytest.mark.parametrize("ceil_mode", [0, 1])
@pytest.mark.parametrize("shape", [(1, 3, 112, 112), (2, 2, 7, 9), (1, 2, 3, 3), (1, 1, 6, 5)])
def test_the_3x3_stride_2_maxpool_fast_path_matches_the_definition(pads, ceil_mode, shape):
    """ResNet's and AlexNet's pool runs a separable kernel; it must equal the numpy definition, NaN included."""
    from convengine.graph.ops import OPS, _pad_for_pool, _pool_geometry, _pool_reduce

    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    x.flat[x.size // 3] = np.nan
    node = Node("pool", "MaxPool", ["x"], ["y"], dict(kernel_shape=[3, 3], strides=[2, 2], pads=list(pads),
                                                      ceil_mode=ceil_mode))
    geometry = _pool_geometry(node, x.shape)
    expected = _pool_reduce(_pad_for_pool(x, geometry, -np.inf), geometry, np.maximum)
    np.testing.assert_array_equal(OPS["MaxPool"].run(node, [x])[0], expected)


@pytest.mark.parametrize("shape,dtype", [((1, 2048, 7, 7), "float32"), ((2, 3, 112, 112), "float32"),
                                         ((2, 5, 3, 4), "float64"), ((2, 4, 9), "float32"), ((1, 2, 2, 2, 3), "float64")])
def test_global_average_pool_matches_the_float64_mean(shape, dtype):
    """ResNet's last pool runs a Numba kernel over each plane; it must stay within float rounding, NaN and inf kept."""
    from convengine.graph.ops import OPS

    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(dtype)
    x.reshape(-1)[0], x.reshape(-1)[-1] = np.nan, np.inf
    before = x.copy()
    y = OPS["GlobalAveragePool"].run(Node("gap", "GlobalAveragePool", ["x"], ["y"]), [x])[0]
    expected = x.astype(np.float64).mean(axis=tuple(range(2, x.ndim)), keepdims=True)
    assert y.shape == expected.shape and y.dtype == x.dtype
    assert np.isnan(y.reshape(-1)[0]) and np.isposinf(y.reshape(-1)[-1])
    finite = np.isfinite(expected)
    np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-6)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 0, 3, 3), (1, 2, 0, 3)])
def test_global_average_pool_of_empty_tensors_has_the_right_shape(shape):
    from convengine.graph.ops import OPS

    y = OPS["GlobalAveragePool"].run(Node("gap", "GlobalAveragePool", ["x"], ["y"]), [np.zeros(shape, np.float32)])[0]
    assert y.shape == shape[:2] + (1, 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [1, 3])
def test_a_large_one_row_gemm_runs_on_numba_and_matches_the_definition(dtype, rows, monkeypatch):
    """A classifier's last layer at batch 1 is a matrix-vector product: it runs on Numba's threads
    (OpenBLAS's would spin after it); more rows, or small weights, stay on BLAS."""
    from convengine.graph import ops
    from convengine.graph._dense_kernels import ROWS
    from convengine.graph.ops import MATVEC_MIN_BYTES, OPS

    rng = np.random.default_rng(rows)
    k = 640
    n = MATVEC_MIN_BYTES // (k * np.dtype(dtype).itemsize) + 5  # just past the threshold
    assert n % ROWS, "the kernel's tail rows (fewer than ROWS) must be exercised"
    a = rng.standard_normal((rows, k)).astype(dtype)
    w = rng.standard_normal((n, k)).astype(dtype)
    c = rng.standard_normal(n).astype(dtype)
    calls = []
    real = ops._one_row_product
    monkeypatch.setattr(ops, "_one_row_product", lambda *args: calls.append(1) or real(*args))
    node = Node("fc", "Gemm", ["a", "w", "c"], ["y"], dict(transB=1, alpha=0.5, beta=2.0))
    y = OPS["Gemm"].run(node, [a, w, c])[0]
    expected = 0.5 * (a.astype(np.float64) @ w.astype(np.float64).T) + 2.0 * c
    assert y.shape == (rows, n) and y.dtype == np.dtype(dtype)
    bound = 1e-6 if dtype == "float32" else 1e-13
    assert np.abs(y - expected).max() / np.abs(expected).max() < bound
    assert len(calls) == (1 if rows == 1 else 0)


def test_a_one_row_gemm_propagates_nan_and_inf_like_blas():
    from convengine.graph.ops import MATVEC_MIN_BYTES, OPS

    k = 512
    n = MATVEC_MIN_BYTES // (k * 4) + 1
    a = np.ones((1, k), np.float32)
    w = np.ones((n, k), np.float32)
    w[0, 7] = np.nan
    w[1, 0] = np.inf
    y = OPS["Gemm"].run(Node("fc", "Gemm", ["a", "w"], ["y"], dict(transB=1)), [a, w])[0]
    assert np.isnan(y[0, 0]) and y[0, 1] == np.inf and y[0, 2] == k


def test_narrow_layers_run_exact_whatever_the_budget():
    """A convolution with fewer than ``LOSSY_MIN_CHANNELS`` input channels never gets a lossy backend
    where the engine chooses (a plan or a policy naming one backend is obeyed): its error is amplified by every
    later layer. With Winograd preferred: the 32-channel layer takes ``direct``, the 64-channel one Winograd."""
    import types

    from convengine.core.contract import ERROR_BOUNDS, EXACT
    from convengine.graph.executor import LOSSY_MIN_CHANNELS

    assert LOSSY_MIN_CHANNELS == 64
    b = GraphBuilder("narrow-then-wide", (32, 10, 10), seed=3)
    x = b.relu(b.conv(b.input.name, 64, 3, padding=1, name="narrow"))
    graph = b.build(b.conv(x, 64, 3, padding=1, name="wide"))
    engine = ce.Engine(["tiled_winograd", "direct"])
    compiled = CompiledGraph(graph, engine, blocked_layouts=False)
    assert compiled.layer_backends_for(1) == {"narrow": "direct", "wide": "tiled_winograd"}
    x_in = _input(graph, batch=1)
    exact = CompiledGraph(graph, ce.Engine("direct"), blocked_layouts=False).run(x_in)
    got = compiled.run(x_in)
    assert np.linalg.norm(got - exact) / np.linalg.norm(exact) < 1e-4
    # the narrowed engine: the caller's policy, the exact budget (or the caller's, if smaller)
    assert engine.narrowed(1e-6).max_rel_error == ERROR_BOUNDS[EXACT]["float32"]
    assert ce.Engine(max_rel_error=1e-9).narrowed(1e-6).max_rel_error == 1e-9
    assert engine.narrowed(1e-6).policy == engine.policy
    planned = CompiledGraph(graph, engine, plan=types.SimpleNamespace(layers={"narrow": "tiled_winograd"}),
                            blocked_layouts=False)
    assert planned.layer_backends_for(1)["narrow"] == "tiled_winograd"  # a plan's choice stands
    named = CompiledGraph(graph, ce.Engine("tiled_winograd"), blocked_layouts=False)  # so does a named backend
    assert named.layer_backends_for(1) == {"narrow": "tiled_winograd", "wide": "tiled_winograd"}
    assert ce.Engine().chooses() and engine.chooses() and not ce.Engine("direct").chooses()
