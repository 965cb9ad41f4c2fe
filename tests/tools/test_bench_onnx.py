"""``convengine bench --onnx FILE``: convengine and ONNX Runtime on a user's ONNX file, each alone in fresh processes.

No time is judged (the machine is shared): the tests check that both runtimes ran in the
processes asked for, that the ratios are those of the reported times, and that bad input
stops before anything runs, with one line saying what is wrong.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from convengine.bench.alone import AloneReport
from convengine.bench.report import format_alone
from convengine.graph.onnx_export import to_onnx
from convengine.models import lenet


def _bench(capsys, *argv) -> tuple[int, str, str]:
    from convengine.cli import main

    code = main(["bench", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def lenet_file(tmp_path):
    path = tmp_path / "lenet.onnx"
    path.write_bytes(to_onnx(lenet()).SerializeToString())
    return str(path)


@pytest.fixture
def pinned_machine_profile(isolated_env, monkeypatch):
    """One machine profile for this process and the fresh ones: ``auto``'s choices then agree.

    Each process would otherwise use what it measured (``bench`` refreshes the stored profile
    first): on a loaded machine two LeNet layers went to ``torch`` in the fresh processes and
    to ``direct`` here. The rates are above anything measured, so a refresh keeps them.
    """
    from dataclasses import asdict

    from convengine.core import costmodel
    from convengine.core.tuning_cache import TuningCache

    profile = costmodel.MachineProfile(gemm_flops_float32=1e15, gemm_flops_float64=1e15, bandwidth=1e15,
                                       parallel_launches=1e9)
    TuningCache().put(costmodel._cache_key(), asdict(profile))
    monkeypatch.setattr(costmodel, "_profile", None)


def test_onnx_file_each_runtime_alone_with_per_layer_times(capsys, pinned_machine_profile, lenet_file):
    """LeNet at batch 2, two rounds: two fresh processes per runtime, ratios, peak memory, the per-layer steps."""
    code, out, err = _bench(capsys, "--onnx", lenet_file, "--batch", "2", "--rounds", "2", "--per-layer", "--json")
    assert code == 0, err
    assert "round 2/2, ONNX Runtime alone in a fresh process" in err  # progress, on stderr
    (data,) = json.loads(out)["onnx_files"]
    assert (data["source"], data["onnx"], data["model"]) == (lenet_file, lenet_file, "lenet")
    assert data["batch"] == 2 and data["input_shape"] == [2, 1, 28, 28]
    assert data["macs"] == 2 * 416_520 and data["convolutions"] == 2 and data["rounds"] == 2
    rows = {r["runtime"]: r for r in data["results"]}
    assert set(rows) == {"auto", "peer:onnxruntime"}
    ours, ort = rows["auto"], rows["peer:onnxruntime"]
    for row in (ours, ort):
        assert row["error"] is None, row
        assert len(row["process_medians_s"]) == 2 and row["calls"] >= 2 * 5
        assert row["median_s"] == pytest.approx(float(np.median(row["process_medians_s"])))
        assert len(row["process_peaks_bytes"]) == 2 and row["peak_extra_bytes"] > 0
        assert row["cold_first_call_s"] > 0 and len(row["process_cpu_s"]) == 2 and row["cpu_per_call_s"] > 0
    assert ours["ratio_to_ort"] == pytest.approx(ours["median_s"] / ort["median_s"])
    assert ort["ratio_to_ort"] == pytest.approx(1.0)
    assert ours["memory_ratio_to_ort"] == pytest.approx(ours["peak_extra_bytes"] / ort["peak_extra_bytes"])
    if ours["load_peak_bytes"] is not None:  # Linux: the peak while loading is a part of the whole peak
        assert 0 < ours["loaded_bytes"] <= ours["load_peak_bytes"] <= ours["peak_extra_bytes"]
    assert ours["cpu_ratio_to_ort"] == pytest.approx(ours["cpu_per_call_s"] / ort["cpu_per_call_s"])
    assert sum(ours["backends"].values()) == 2 and ort["backends"] is None  # a backend per convolution

    layers = {row["node"]: row for row in data["layers"]}
    assert [layers[n]["op"] for n in ("conv1", "conv2")] == ["Conv+Sigmoid", "Conv+Sigmoid"]  # sigmoid fused
    assert layers["conv1"]["backend"] in ours["backends"] and layers["conv1"]["output_shape"] == [2, 6, 28, 28]
    assert all(row["backend"] is None for row in data["layers"] if not row["op"].startswith("Conv"))
    assert sum(row["share"] for row in data["layers"]) == pytest.approx(1.0)
    assert data["per_layer_total_s"] > 0

    table = format_alone(AloneReport.from_dict(data))  # the JSON holds the whole report
    assert table.startswith(f"lenet ({lenet_file}): batch 2, input (2, 1, 28, 28) float32, 2 convolutions")
    assert re.search(r"^runtime\s+median\s+fastest-slowest\s+vs ORT\s+CPU/call\s+CPU vs ORT\s+peak RSS\s+RSS vs ORT\s+"
                     r"loading peak\s+cold call\s+layers$", table, re.M)
    assert re.search(r"^auto\s+\d+\.\d\d ms\s+\d+\.\d\d ms - \d+\.\d\d ms\s+\d+\.\d\dx\s+\d+\.\d\d ms\s+\d+\.\d\dx\s+"
                     r"\d+ MiB\s+\d+\.\d\dx", table, re.M)
    assert re.search(r"^peer:onnxruntime\s+\d+\.\d\d ms\s.*1\.00x\s+\d+ MiB\s+1\.00x", table, re.M)
    assert re.search(r"^conv1\s+Conv\+Sigmoid\s+2x6x28x28\s+\w+\s+\d+\.\d{3}\s+\d+\.\d%", table, re.M)


def test_onnx_file_table(capsys, isolated_env, lenet_file):
    code, out, _ = _bench(capsys, "--onnx", lenet_file, "--rounds", "1", "--no-progress")
    assert code == 0
    assert out.startswith("convengine bench: 1 ONNX file, batch 1, ")
    assert "interleaved" not in out.splitlines()[0]  # each runtime alone: nothing interleaved
    assert re.search(r"^auto\s+\d+\.\d\d ms\s.*\d+\.\d\dx\s+\d+ MiB", out, re.M)
    assert "per step" not in out  # no --per-layer


def _error(capsys, *argv) -> str:
    code, out, err = _bench(capsys, *argv)
    assert code == 2 and not out.strip()
    assert err.startswith("convengine bench: error: ")
    return err


def test_onnx_file_errors_come_before_anything_runs(capsys, tmp_path, lenet_file):
    err = _error(capsys, "--onnx", str(tmp_path / "missing.onnx"))
    assert "ONNX file" in err and "missing.onnx" in err and "does not exist" in err

    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n")
    err = _error(capsys, "--onnx", str(text))
    assert "cannot parse ONNX file" in err and "not an ONNX model" in err

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                               helper.make_node("Hardmax", ["c"], ["y"], name="hm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    unsupported = tmp_path / "hardmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(unsupported))
    err = _error(capsys, "--onnx", str(unsupported))
    assert "node #1 'hm' (Hardmax): operator Hardmax is not supported" in err  # the importer's own error

    fixed = onnx.load(lenet_file)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # a batch fixed at 1
    fixed_path = tmp_path / "fixed.onnx"
    onnx.save(fixed, str(fixed_path))
    err = _error(capsys, "--onnx", str(fixed_path), "--batch", "4")
    assert "fixes the batch size of its input at 1" in err and "--batch 4" in err


def test_onnx_file_without_onnxruntime(capsys, monkeypatch, lenet_file):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    err = _error(capsys, "--onnx", lenet_file)
    assert "ONNX Runtime, which is not installed (pip install onnxruntime)" in err
