"""The benchmark machinery: layer specs, peers, ``convengine bench``, and the asv suite.

Nothing here judges a time: machines are shared and noisy. The tests check that the
machinery runs and that what it prints is well-formed. The asv tests (``asv check`` over
the whole suite, and a ``--quick`` run of a representative subset in the existing
environment) carry the ``asv`` marker: deselect them with ``-m "not asv"``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import module_from_file

import convengine as ce
from convengine import bench
from convengine.bench import catalogue as layers

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks"


# -- layers -----------------------------------------------------------------------------------


def test_resnet50_specs_cover_all_53_convolutions_in_20_distinct_shapes():
    specs = [s for s in layers.LAYERS if s.model == "resnet50"]
    assert len(specs) == 20
    assert sum(s.count for s in specs) == 53
    assert len({s.problem() for s in specs}) == 20
    # 3.86 GMACs at 224x224: the paper's ResNet-50 (Table 1 rounds it to 3.8 GFLOPs, counting multiply-adds)
    assert sum(s.problem().macs * s.count for s in specs) == 3_855_925_248


@pytest.mark.parametrize("model", ["resnet50", "alexnet"])
def test_specs_are_the_distinct_convolutions_of_the_model_zoo(model):
    """Each model's specs, with their counts, are exactly the Conv nodes of convengine.models' graph."""
    from collections import Counter

    models = pytest.importorskip("convengine.models")
    from convengine.graph.ops import conv_problem_args

    graph = models.get_model(model)
    in_graph = Counter()
    for node in graph.nodes:
        if node.op == "Conv":
            x, w = graph.shapes[node.inputs[0]], graph.shapes[node.inputs[1]]
            problem = ce.ConvProblem.from_shapes((1, *x[1:]), w, **conv_problem_args(node))
            in_graph[problem] += 1
    specs = Counter({s.problem(): s.count for s in layers.LAYERS if s.model == model})
    assert specs == in_graph


@pytest.mark.parametrize("model", ["mobilenet_v2", "resnext50_32x4d"])
def test_grouped_specs_are_the_grouped_convolutions_of_the_model_zoo(model):
    """The ``grouped`` set's layers of a zoo network, named and counted as its grouped Conv nodes
    (EfficientNet-B0 and RegNetY-400MF are not in the zoo; their specs follow torchvision's definitions)."""
    from collections import Counter

    models = pytest.importorskip("convengine.models")
    from convengine.graph.ops import conv_problem_args

    graph = models.get_model(model)
    in_graph, names = Counter(), set()
    for node in graph.nodes:
        if node.op == "Conv" and node.attrs.get("group", 1) > 1:
            x, w = graph.shapes[node.inputs[0]], graph.shapes[node.inputs[1]]
            in_graph[ce.ConvProblem.from_shapes((1, *x[1:]), w, **conv_problem_args(node))] += 1
            names.add(f"{model}.{node.name}")
    specs = [layers.layer(name) for name in layers.SETS["grouped"] if layers.layer(name).model == model]
    assert Counter({s.problem(): s.count for s in specs}) == in_graph
    assert {s.name for s in specs} <= names  # each shape listed under one of its layers' names


def test_alexnet_specs_follow_the_course():
    shapes = {s.name: s.problem().output_shape for s in layers.LAYERS if s.model == "alexnet"}
    assert shapes == {
        "alexnet.conv1": (1, 96, 54, 54),  # 11x11 stride 4 padding 1 on 224x224
        "alexnet.conv2": (1, 256, 26, 26),  # after a 3x3/2 max-pool: 54 -> 26
        "alexnet.conv3": (1, 384, 12, 12),  # after a 3x3/2 max-pool: 26 -> 12
        "alexnet.conv4": (1, 384, 12, 12),
        "alexnet.conv5": (1, 256, 12, 12),
    }


def test_course_examples_give_the_course_results():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    k = np.array([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 1, 2, 2)
    expected = {
        "course.example1": [[19, 25], [37, 43]],
        "course.example2": [[0, 3, 8, 4], [9, 19, 25, 10], [21, 37, 43, 16], [6, 7, 8, 0]],
        "course.example3": [[0, 8], [6, 8]],
    }
    for name, want in expected.items():
        spec = layers.layer(name)
        assert spec.problem(1, "float64").input_shape == x.shape
        np.testing.assert_array_equal(ce.conv2d(x, k, **spec.conv_kwargs())[0, 0], want)


def test_sets_and_selection():
    assert set(layers.SETS) == {"course", "resnet50", "alexnet", "grouped", "quick", "all"}
    for members in layers.SETS.values():
        assert all(layers.layer(name) for name in members)
    chosen = layers.select(["alexnet.conv1", "course.example1"], ["course"])
    assert layers.names(chosen) == ("course.example1", "course.example2", "course.example3", "alexnet.conv1")
    problem = layers.layer("resnet50.layer1.conv2").problem(batch=32, dtype="float64")
    assert (problem.batch, problem.dtype, problem.output_shape) == (32, "float64", (32, 64, 56, 56))
    with pytest.raises(KeyError, match="did you mean resnet50.layer1.conv2"):
        layers.layer("resnet50.layer1.conv22")
    with pytest.raises(KeyError, match="no layer set"):
        layers.select(sets=["vgg"])


# -- peers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("peer", bench.PEERS)
def test_peers_compute_the_convolution(peer):
    problem = ce.ConvProblem.from_shapes((2, 4, 9, 8), (6, 2, 3, 2), bias=True, stride=(2, 1),
                                         padding=(1, 0, 2, 1), dilation=(1, 2), groups=2)
    x, w, b = bench.problem_data(problem)
    try:
        run = bench.make_peer(peer, problem, x, w, b)
    except bench.PeerUnavailable as exc:
        pytest.skip(str(exc))
    expected = ce.conv2d(x, w, b, stride=problem.stride, padding=problem.padding, dilation=problem.dilation,
                         groups=problem.groups, backend="im2col")
    got = np.asarray(run())
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_onnxruntime_peer_explains_what_it_cannot_run():
    pytest.importorskip("onnxruntime")
    problem = layers.layer("course.example1").problem(1, "float64")
    with pytest.raises(bench.PeerUnavailable, match="float64"):
        bench.make_peer("peer:onnxruntime", problem, *bench.problem_data(problem))
    with pytest.raises(KeyError):
        bench.make_peer("peer:tvm", problem, *bench.problem_data(problem))


# -- convengine bench -------------------------------------------------------------------------


def _bench(capsys, *argv) -> tuple[int, str, str]:
    import convengine.cli.bench  # noqa: F401  (registers the command, if cli.py does not yet)
    from convengine.cli import main

    code = main(["bench", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_bench_json_is_well_formed(capsys):
    code, out, _ = _bench(capsys, "--layer", "course.example1", "--layer", "course.example3", "--rounds", "1",
                          "--backend", "im2col", "--backend", "winograd", "--json", "--no-progress")
    assert code == 0
    report = json.loads(out)
    assert report["gemm_flops"] > 0 and report["rounds"] == 1 and report["batch"] == 1
    assert [layer["layer"] for layer in report["layers"]] == ["course.example1", "course.example3"]
    for layer in report["layers"]:
        by_name = {r["contender"]: r for r in layer["results"]}
        assert by_name["im2col"]["median_s"] > 0 and by_name["im2col"]["gflops"] > 0
        assert any(name.startswith("auto (") for name in by_name)
        if "winograd" in by_name:  # the plugin is installed: a 2x2 kernel is not its business
            assert by_name["winograd"]["median_s"] is None and "unsupported" in by_name["winograd"]["error"]
        peers = [r for r in layer["results"] if r["kind"] == "peer" and r["median_s"]]
        if peers:
            assert min(r["ratio_to_peer"] for r in peers) == pytest.approx(1.0)
    assert report["models"] == []


def test_bench_tables_and_model_totals(capsys):
    code, out, err = _bench(capsys, "--set", "alexnet", "--rounds", "1", "--backend", "im2col")
    assert code == 0
    assert re.search(r"^practical limit: numpy GEMM \d+\.\d GFLOP/s", out, re.M)
    for name in layers.SETS["alexnet"]:
        assert f"\n{name}\n" in out
    assert re.search(r"^im2col\s+\d+\.\d{3} ms\s+(\d+\.\d\dx|-)\s+\d", out, re.M)
    assert "alexnet: all 5 convolutions (5 distinct shapes" in out
    assert re.search(r"^best backend per layer\s+\d+\.\d\d ms", out, re.M)
    assert "convengine bench" in err  # the progress bar, on stderr


def test_bench_rejects_unknown_names(capsys):
    code, _, err = _bench(capsys, "--layer", "resnet50.layer9.conv1")
    assert code == 2 and "no layer named" in err
    code, _, err = _bench(capsys, "--layer", "course.example1", "--backend", "nope")
    assert code == 2 and "backend 'nope' is not registered: no registered backend has this name" in err


def test_bench_names_the_plugin_that_did_not_load(capsys, monkeypatch):
    """Issue 16: a backend whose plugin was left out (or failed to import) is named with that reason."""
    from convengine.core import registry

    pytest.importorskip("convengine_winograd")  # the plugin left out below must be installed
    monkeypatch.setenv("CONVENGINE_LOAD_PLUGINS", "convengine-torch")
    monkeypatch.setattr(registry, "_default_registry", None)  # rebuilt under the variable, restored after
    code, _, err = _bench(capsys, "--layer", "course.example1", "--backend", "winograd")
    assert code == 2 and "its plugin 'winograd' was not loaded: CONVENGINE_LOAD_PLUGINS" in err


def test_bench_lists_layers(capsys):
    code, out, _ = _bench(capsys, "--list")
    assert code == 0
    lines = [line for line in out.splitlines() if not line.startswith("--set")]
    assert re.match(r"layer\s+input\s+output\s+kernel\s+count$", lines[0])
    assert [line.split()[0] for line in lines[1:]] == [spec.name for spec in layers.LAYERS]
    assert re.search(r"^resnet50\.layer4\.conv2\s+\(512, 7, 7\)\s+\(512, 7, 7\)\s+3x3\s+x3$", out, re.M)


# -- convengine bench --model: whole models ----------------------------------------------------


def _whole(capsys, *argv) -> dict:
    code, out, err = _bench(capsys, *argv, "--json", "--no-progress")
    assert code == 0, err
    report = json.loads(out)
    assert report["layers"] == [] and report["models"] == []  # --model alone runs no layer
    (model,) = report["whole_models"]
    return model


def test_bench_model_json_is_well_formed(capsys, isolated_env, tmp_path):
    """lenet, one round: auto, tune (in a fresh temporary cache), im2col, winograd (declined), the peers."""
    model = _whole(capsys, "--model", "lenet", "--rounds", "1", "--backend", "im2col", "--backend", "winograd")
    assert (model["model"], model["source"], model["batch"]) == ("lenet", "lenet", 1)
    assert model["input_shape"] == [1, 1, 28, 28]
    assert model["macs"] == 416_520 and model["convolutions"] == 2 and model["distinct_convolutions"] == 2
    assert model["tuning_s"] > 0 and "temporary" in model["tuning_cache"]
    rows = {r["contender"]: r for r in model["results"]}
    for name in ("auto", "tune", "im2col"):
        row = rows[name]
        assert row["median_s"] > 0 and row["error"] is None, row
        assert row["gmacs"] == pytest.approx(model["macs"] / row["median_s"] / 1e9)
        assert row["first_call_s"] == pytest.approx(row["prepare_s"] + row["first_run_s"])
        assert sum(row["backends"].values()) == 2  # a backend per convolution
    assert rows["im2col"]["backends"] == {"im2col": 2}
    if "winograd" in rows:  # the plugin is installed: LeNet's 5x5 kernels are not its business
        assert rows["winograd"]["median_s"] is None and "unsupported: layer conv1" in rows["winograd"]["error"]
    assert rows["peer:torch"]["median_s"] is None and "torch twin" in rows["peer:torch"]["error"]
    ort = rows.get("peer:onnxruntime")
    if ort and ort["median_s"]:
        assert ort["ratio_to_ort"] == pytest.approx(1.0)
        assert rows["auto"]["ratio_to_ort"] == pytest.approx(rows["auto"]["median_s"] / ort["median_s"])
    # rows that ran come first, then those that did not
    ran = [r["median_s"] is not None for r in model["results"]]
    assert ran == sorted(ran, reverse=True)
    # tuning went to a temporary cache, not to the user's (which only the cost model's machine profile may use)
    user_cache = tmp_path / "cache" / "tuning.json"
    if user_cache.exists():
        entries = json.loads(user_cache.read_text())["entries"].values()
        assert not [e for e in entries if "chosen" in e["record"]]


def test_bench_model_tables(capsys):
    code, out, _ = _bench(capsys, "--model", "lenet", "--rounds", "1", "--backend", "im2col", "--no-tune",
                          "--no-progress")
    assert code == 0
    assert out.startswith("convengine bench: 1 model, batch 1, ")
    assert "peer:torch is not run on whole models" in out
    assert "lenet (zoo): batch 1, input (1, 1, 28, 28) float32, 2 convolutions (2 distinct), 0.42 MMACs" in out
    assert re.search(r"^contender\s+median\s+vs ORT\s+GMAC/s\s+of GEMM\s+first call\s+layers$", out, re.M)
    assert re.search(r"^im2col\s+\d+\.\d\d ms\s+(\d+\.\d\dx|-)\s+\d+\.\d\s+\d+%\s+\d+\.\d\d m?s\s+im2col x2$",
                     out, re.M)
    assert re.search(r"^auto\s+\d+\.\d\d ms", out, re.M)
    assert not re.search(r"^tune\b", out, re.M)  # --no-tune
    assert re.search(r"^peer:torch\s+-\s+not run on whole models", out, re.M)


def test_bench_model_memory_in_fresh_processes(capsys):
    model = _whole(capsys, "--model", "lenet", "--rounds", "1", "--backend", "im2col", "--no-tune", "--memory")
    rows = {r["contender"]: r for r in model["results"]}
    for name in ("auto", "im2col", "peer:onnxruntime"):
        if name not in rows or rows[name]["first_call_s"] is None:
            continue  # ONNX Runtime not installed
        memory = rows[name]["memory"]
        assert memory["error"] is None, memory
        assert memory["peak_bytes"] >= memory["baseline_bytes"] > 0
        assert memory["peak_extra_bytes"] == memory["peak_bytes"] - memory["baseline_bytes"]
        assert memory["cold_first_call_s"] > 0 and memory["method"]
    assert rows["peer:torch"]["memory"] is None  # it did not run
    table = bench.format_model(bench.ModelReport.from_dict(model), memory=True)  # the JSON holds the whole report
    assert re.search(r"first call\s+cold call\s+peak RSS\s+RSS vs ORT\s+layers$", table, re.M)
    assert re.search(r"^im2col\s.*\d+ MiB", table, re.M)


def test_bench_model_from_an_onnx_file(capsys, tmp_path):
    pytest.importorskip("onnx")
    from convengine.graph.onnx_export import to_onnx
    from convengine.models import lenet

    path = tmp_path / "lenet.onnx"
    path.write_bytes(to_onnx(lenet()).SerializeToString())
    model = _whole(capsys, "--model", str(path), "--rounds", "1", "--backend", "im2col", "--no-tune")
    assert model["source"] == str(path) and model["macs"] == 416_520
    rows = {r["contender"]: r for r in model["results"]}
    assert rows["im2col"]["median_s"] > 0


def test_bench_model_limits(capsys):
    """--max-run-s: backends the cost model predicts too slow are skipped (unless named with
    --backend); a contender whose first run took longer is not timed."""
    model = _whole(capsys, "--model", "lenet", "--rounds", "1", "--no-tune", "--max-run-s", "1e-9")
    rows = {r["contender"]: r for r in model["results"]}
    assert rows["naive"]["first_call_s"] is None and "cost model predicts" in rows["naive"]["error"]
    assert rows["auto"]["median_s"] is None and rows["auto"]["first_call_s"] > 0
    assert rows["auto"]["error"].startswith("not timed: one run took")
    model = _whole(capsys, "--model", "lenet", "--rounds", "1", "--no-tune", "--max-run-s", "1e-9",
                   "--backend", "naive")
    naive = next(r for r in model["results"] if r["contender"] == "naive")
    assert naive["first_call_s"] > 0 and naive["error"].startswith("not timed")


def test_backend_skip_rules_for_whole_models():
    from convengine.models import get_model

    problems = bench.conv_problems(get_model("resnet18"), batch=2)
    assert len(problems) == 20 and all(p.batch == 2 for _, p in problems)
    # fft declines 1x1 kernels itself (its supports): named or not, it does not run ResNets
    for explicit in (False, True):
        assert re.match(r"unsupported: layer \S+: 1x1 kernel", bench.backend_skip_reason("fft", problems, explicit=explicit))
    assert bench.backend_skip_reason("im2col", problems, max_run_s=1e3) is None
    assert "cost model predicts" in bench.backend_skip_reason("naive", problems, max_run_s=1e-9)
    if "winograd" in {i.name for i in ce.list_backends()}:
        assert bench.backend_skip_reason("winograd", problems, explicit=True).startswith("unsupported: layer conv1")


def test_bench_model_rejects_unknown_models(capsys):
    code, _, err = _bench(capsys, "--model", "resnet5")
    assert code == 2 and "unknown model 'resnet5'" in err and "did you mean resnet50" in err
    code, _, err = _bench(capsys, "--model", "missing.onnx")
    assert code == 2 and "does not exist" in err


# -- the asv suite ----------------------------------------------------------------------------

#: A representative subset for the --quick run: a tiny course example and a 3x3 ResNet
#: layer at batch 1 (every benchmark: execute, peak memory, GFLOP/s, prepare), and a 1x1
#: layer at batch 32, each with every contender (skipped ones included); LeNet as a whole
#: model (run, peak memory, first run) under auto, tune, im2col, winograd (n/a: 5x5
#: kernels) and ONNX Runtime.
QUICK_BENCH = [
    r"^conv2d\.Conv2D\w*\.\w+\('(course\.example2|resnet50\.layer4\.conv2)'",
    r"^conv2d\.Conv2DBatch32\.time_execute\('resnet50\.layer3\.conv1'",
    r"^models\.\w+\.\w+\('lenet', '(auto|tune|im2col|winograd|peer:onnxruntime)'",
]


@pytest.fixture(scope="module")
def asv_env(tmp_path_factory):
    """The environment for asv: its own HOME (asv's machine file, convengine's tuning cache)."""
    pytest.importorskip("asv", reason="asv is not installed (pip install asv)")
    home = tmp_path_factory.mktemp("asv-home")
    env = dict(os.environ, HOME=str(home))
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # the suite skips simulated CUDA anyway; keep it out
    env.pop("CONVENGINE_BACKEND", None)
    subprocess.run([sys.executable, "-m", "asv", "machine", "--yes", "--machine", "ci"], cwd=SUITE, env=env,
                   check=True, capture_output=True, timeout=120)
    return env


def _asv(env, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asv", *args], cwd=SUITE, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.asv
@pytest.mark.slow
def test_asv_check(asv_env):
    result = _asv(asv_env, "check", "--environment", "existing")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No problems found" in result.stdout


@pytest.mark.asv
@pytest.mark.slow
def test_asv_quick_run_of_a_subset(asv_env):
    args = ["run", "--environment", "existing", "--quick", "--dry-run", "--show-stderr", "--machine", "ci"]
    for regex in QUICK_BENCH:
        args += ["--bench", regex]
    result = _asv(asv_env, *args)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    ran = set(re.findall(r"··· ((?:conv2d|models)\.\w+\.\w+)\s+(\w+)", out))
    names = {name for name, _ in ran}
    assert {"conv2d.Conv2D.time_execute", "conv2d.Conv2D.peakmem_execute", "conv2d.Conv2D.track_gflops",
            "conv2d.Conv2DPrepare.time_prepare", "conv2d.Conv2DBatch32.time_execute",
            "models.ModelInference.time_run", "models.ModelInference.peakmem_run",
            "models.ModelFirstRun.time_first_run"} <= names, out
    assert all(status == "ok" for _, status in ran), out
    assert "failed" not in out and "Traceback" not in out, out
    # every selected cell has a value or is n/a (skipped), and the fast ones have values
    rows = re.findall(r"^\s+'?(course\.example2|resnet50\.layer4\.conv2|resnet50\.layer3\.conv1)'?\s+"
                      r"'?([\w:]+)'?\s+(\S+)", out, re.M)
    values = {(layer, contender): value for layer, contender, value in rows}
    assert values[("resnet50.layer4.conv2", "im2col")] != "n/a", out
    assert values[("resnet50.layer4.conv2", "naive")] != "n/a", out
    # the 1x1 layer at batch 32 skips the FFT and naive's plain loops on purpose
    assert values[("resnet50.layer3.conv1", "fft")] == "n/a"
    # whole models: LeNet runs under the policies and im2col; Winograd (3x3 only) does not
    models = dict(re.findall(r"^\s+'?lenet'?\s+'?([\w:]+)'?\s+(\S+)", out, re.M))
    for policy in ("auto", "tune", "im2col"):
        assert models[policy] != "n/a", out
    assert models["winograd"] == "n/a", out


@pytest.mark.asv
def test_every_library_of_the_dashboard_can_be_vendored():
    """vendor_dashboard.py knows an npm package for every CDN address in asv's index.html."""
    asv = pytest.importorskip("asv", reason="asv is not installed (pip install asv)")
    sys.path.insert(0, str(SUITE))
    try:
        import vendor_dashboard
    finally:
        sys.path.remove(str(SUITE))
    page = (Path(asv.__file__).parent / "www" / "index.html").read_text(encoding="utf-8")
    urls = [m.group(3) for m in vendor_dashboard.TAG.finditer(page)]
    assert urls, "asv's page loads nothing from a CDN any more: vendor_dashboard.py may be dropped"
    unresolved = [url for url in urls if vendor_dashboard.resolve(url) is None]
    assert not unresolved
    assert vendor_dashboard.resolve("https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css") == (
        "bootstrap@3.1.1", "dist/css/bootstrap.min.css")


@pytest.mark.parametrize("extra", [[], ["--from-onnx"]])
def test_model_vs_ort_reports_both_runtimes_alone(extra):
    """The whole-model comparison script: each runtime in its own process, a ratio printed (LeNet: fast)."""
    pytest.importorskip("onnxruntime")
    script = Path(__file__).parents[2] / "benchmarks" / "model_vs_ort.py"
    out = subprocess.run([sys.executable, str(script), "lenet", "--processes", "1", "--runs", "2", *extra],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    line = out.strip().splitlines()[-1]
    assert line.startswith("lenet (from ONNX) auto:" if extra else "lenet auto:")
    ratio = float(re.search(r"ratio ([\d.]+)", line).group(1))
    assert ratio > 0


def test_grouped_layers_script_reports_ratios_to_both_peers():
    """benchmarks/grouped_layers.py on one small layer, one round: a row with both ratios, per-network totals."""
    pytest.importorskip("onnxruntime")
    script = Path(__file__).parents[2] / "benchmarks" / "grouped_layers.py"
    layer = "mobilenet_v2.features.15.conv.1.0"
    rows = json.loads(subprocess.run([sys.executable, str(script), "--batch", "1", "--layer", layer, "--rounds", "1",
                                      "--json"], capture_output=True, text=True, timeout=300, check=True).stdout)
    assert [(r["layer"], r["batch"], r["count"]) for r in rows] == [(layer, 1, 3)]
    assert rows[0]["seconds"]["grouped"] > 0 and rows[0]["vs_ort"] > 0 and rows[0]["vs_torch"] > 0
    assert rows[0]["seconds"]["auto"] > 0 and rows[0]["auto_vs_ort"] > 0 and rows[0]["auto"]  # the engine's choice
    table = subprocess.run([sys.executable, str(script), "--batch", "1", "--layer", layer, "--rounds", "1"],
                           capture_output=True, text=True, timeout=300, check=True).stdout
    assert re.search(rf"^{re.escape(layer)}\s+1(\s+[\d.]+){{8}}\s+\w+$", table, re.M)
    assert re.search(r"mobilenet_v2\s+N=1\s+grouped\s+[\d.]+ ms: /ORT [\d.]+, /torch [\d.]+", table)


def test_the_suites_axes_are_fixed():
    """asv files a result by its position in the product of the axes: every catalogue layer and every built-in
    backend must be on the suite's fixed axes, else an older commit's results are filed under other cells."""
    common = module_from_file("_asv_suite_common", SUITE / "benchmarks" / "common.py")  # (not a package)
    catalogue = [spec.name for spec in layers.LAYERS]
    missing = [name for name in catalogue if name not in common.SUITE_LAYERS]
    assert not missing, f"add {missing} at the end of SUITE_LAYERS in benchmarks/benchmarks/common.py"
    assert common.LAYER_NAMES == common.SUITE_LAYERS and len(set(common.SUITE_LAYERS)) == len(common.SUITE_LAYERS)
    builtins = {"naive", "im2col", "direct", "fft", "cuda", "grouped"}
    assert builtins <= set(common.KNOWN_BACKENDS)
    assert common.CONTENDERS[:len(common.KNOWN_BACKENDS)] == common.KNOWN_BACKENDS
    with pytest.raises(NotImplementedError, match="not in this version's catalogue"):
        common.Case("resnet50.layer9.conv1", "direct")
