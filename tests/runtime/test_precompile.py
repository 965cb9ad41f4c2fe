"""Compiling a model's kernels ahead, in parallel processes (convengine.runtime.precompile).

The end-to-end checks run in a fresh interpreter with an empty Numba cache, so that there
is something to compile whatever ran before; they also prove that each backend's and
operator's listed signatures are the ones its calls use: a wrong one leaves a compile to
the first run.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from convengine.runtime.precompile import Kernel, PrecompileReport, _shares


def _in_fresh_process(code: str, tmp_path) -> dict:
    # two threads, so two processes, whatever the machine
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"), CONVENGINE_NUM_THREADS="2")
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


_FIRST_RUN = """
    import json
    import numpy as np
    from numba.core import dispatcher
    from convengine import Engine
    from convengine.graph.executor import CompiledGraph
    from convengine.models import resnet18

    graph = resnet18(input_size=32)
    for name, value in graph.params.items():  # as an ONNX file's tensors: read-only
        value.flags.writeable = False
    compiled = CompiledGraph(graph, Engine(policy={policy!r}))
    report = compiled.precompiled
    original, compiled_later = dispatcher.Dispatcher.compile, []

    def record(self, sig):
        compiled_later.append(self.py_func.__qualname__)
        return original(self, sig)

    dispatcher.Dispatcher.compile = record
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    x.flags.writeable = False  # a read-only input compiles nothing either
    y = compiled.run(x)
    print(json.dumps(dict(here=report.compiled_here, workers=report.compiled_in_workers, cached=report.cached,
                          n_workers=report.workers, later=compiled_later, finite=bool(np.isfinite(y).all()))))
"""


@pytest.mark.parametrize("policy", ["direct", "im2col"])
def test_a_cold_model_compiles_everything_before_its_first_run(policy, tmp_path):
    got = _in_fresh_process(_FIRST_RUN.format(policy=policy), tmp_path)
    assert got["later"] == []  # every kernel the run called was listed, with the signature it was called with
    assert got["cached"] == []
    assert got["n_workers"] == 1 and got["workers"] and got["here"]  # 2 processes: this one and a worker
    # the stem's pool: on the channel-blocked stem with direct (graph.blocking), on NCHW with im2col
    pool = "blocked_pool" if policy == "direct" else "max_pool_3x3_s2"
    assert any(name.endswith(pool) for name in got["here"] + got["workers"])
    assert any(name.endswith("matvec_rows") for name in got["here"] + got["workers"])
    assert got["finite"]
    again = _in_fresh_process(_FIRST_RUN.format(policy=policy), tmp_path)  # same cache: nothing left to compile
    assert again["here"] == again["workers"] == [] and again["n_workers"] == 0
    assert sorted(again["cached"]) == sorted(got["here"] + got["workers"])


def test_a_wrong_listing_costs_a_warning_not_the_run(tmp_path):
    got = _in_fresh_process("""
        import json, logging
        from numba import types
        from convengine.runtime.precompile import Kernel, precompile

        messages = []
        logging.getLogger("convengine.runtime.precompile").addHandler(logging.Handler())
        logging.getLogger("convengine.runtime.precompile").handlers[-1].emit = lambda record: messages.append(record.getMessage())
        vector = types.Array(types.float64, 1, "C")
        good = Kernel("convengine.graph._pool_kernels", "plane_means", (types.Array(types.float64, 3, "C"),
                                                                        types.Array(types.float64, 2, "C")))
        bad = Kernel("convengine.graph._dense_kernels", "matvec_rows", (vector, vector, types.unicode_type))
        missing = Kernel("convengine.no_such_module", "kernel", ())
        report = precompile([bad, good, missing], processes=2)
        print(json.dumps(dict(done=report.compiled_here + report.compiled_in_workers, workers=report.workers,
                              messages=messages)))
    """, tmp_path)
    assert got["done"] == ["convengine.graph._pool_kernels.plane_means"]  # the good one, once
    assert got["workers"] == 1
    assert any("precompiling convengine.graph._dense_kernels.matvec_rows" in m and "unicode" in m
               for m in got["messages"]), got["messages"]


def test_shares_balance_the_estimated_cost():
    kernels = [Kernel("m", name, (), cost) for name, cost in [("a", 0.4), ("b", 4.5), ("c", 2.2), ("d", 2.3)]]
    shares = _shares(kernels, 2)
    assert sorted(k.function for share in shares for k in share) == ["a", "b", "c", "d"]
    assert sorted(round(sum(k.cost for k in share), 1) for share in shares) == [4.5, 4.9]
    assert _shares(kernels[:1], 3) == [[kernels[0]]]  # no empty shares, so no idle worker is started
    assert _shares([], 2) == []


def test_signatures_of_one_function_stay_in_one_process():
    """Two processes saving one function's cache index at once could each drop the other's entry."""
    kernels = [Kernel("m", "f", ("float32",), 2.0), Kernel("m", "f", ("float64",), 2.0), Kernel("m", "g", (), 1.0)]
    shares = _shares(kernels, 2)
    assert sorted([k.signature for k in share if k.function == "f"] for share in shares) == [
        [], [("float32",), ("float64",)]]


def test_workers_import_this_copy_of_convengine():
    """Numba keys its disk cache by the source file's path: a worker importing another copy
    (an installed one, the working directory's) would fill a cache nobody reads."""
    import convengine
    from convengine.runtime import precompile

    assert os.path.join(precompile._PACKAGE_ROOT, "convengine") == os.path.dirname(os.path.abspath(convengine.__file__))
    env = precompile._worker_env()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == precompile._PACKAGE_ROOT


def test_the_report_says_what_happened():
    report = PrecompileReport(cached=["a"], compiled_here=["b"], compiled_in_workers=["c", "d"], workers=1, seconds=2.5)
    assert str(report) == "1 kernels cached, 1 compiled here, 2 in 1 worker process(es), 2.5 s"


def test_a_backend_whose_listing_raises_lists_nothing():
    import numpy as np
    from conftest import make_plugin

    from convengine import Engine
    from convengine.core.contract import Backend
    from convengine.core.registry import Registry

    class Listing(Backend):
        name = "broken-listing"

        def prepare(self, problem, weight, bias):
            return lambda x: np.zeros(problem.output_shape, problem.dtype)

        def kernels(self, problem, epilogue):
            raise RuntimeError("boom")

    registry = Registry.load(extra_plugins=[make_plugin("listing", Listing())], load_entry_points=False)
    engine = Engine(policy="broken-listing", registry=registry)
    prepared = engine.prepare(np.ones((2, 1, 3, 3), np.float32), input_shape=(1, 1, 5, 5))
    assert prepared.kernels() == []
