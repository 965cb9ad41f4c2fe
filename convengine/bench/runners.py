"""Whole-model contenders, built the same way wherever they run: in the benchmark, in its
memory-measuring processes and in the asv suite.

A contender is a policy (``auto``, ``tune``), a single backend (``Engine(policy=NAME)``),
or :data:`MODEL_PEER`, ONNX Runtime on the graph exported with ``to_onnx`` (same weights,
same input). peer:torch is not run on whole models: it would need a torch twin of each graph.
"""

from __future__ import annotations

import functools
import time
from typing import Optional

from .peers import onnxruntime_options

#: The ONNX Runtime contender of a whole-model run.
MODEL_PEER = "peer:onnxruntime"


#: Libraries the backends and peers load; imported before tuning, timing or a memory baseline.
HEAVY_LIBRARIES = ("numba", "scipy.fft", "torch", "onnxruntime", "onnx")


def import_heavy_libraries() -> None:
    """Import :data:`HEAVY_LIBRARIES` that are installed (as the asv suite's forkserver does),
    and initialise Numba's compiler (:func:`initialise_numba`).

    Two reasons: a library's import is not a model's memory (the peak-RSS baseline comes
    after it), and the process state is the same wherever tuning results are written and
    read (a backend fingerprint that lists the loaded BLAS libraries changes once torch
    loads its own, which would make a tuning cache written before that miss afterwards).
    """
    import importlib
    import importlib.util

    for name in HEAVY_LIBRARIES:
        try:
            if importlib.util.find_spec(name.split(".")[0]) is not None:
                importlib.import_module(name)
        except Exception:  # a broken optional install: whatever needs it will say so
            pass
    initialise_numba()


@functools.lru_cache(maxsize=None)
def initialise_numba() -> None:
    """Run one trivial compiled function, so that Numba builds its compiler's state now.

    Numba loads its lowering code (some 300 modules) and sets up LLVM on the first call of
    any compiled function, cached or not: ~55 MB of RSS on this project's machines, once per
    process, the same for every model. That is the library's initialisation, which ONNX
    Runtime does in its import; done here, both runtimes' peak-memory baselines
    (:mod:`.memory`) come after their libraries are ready, and a model's peak is its own.
    Once per process: the benchmarks call :func:`import_heavy_libraries` more than once.
    """
    try:
        import numba
    except ImportError:
        return
    numba.njit(cache=True)(_one)(1)


def _one(value):
    return value + 1


def build_model_runner(contender: str, graph, batch: int, *, tuning_cache=None, onnx_model=None,
                       threads: Optional[int] = None):
    """``(run(x), {backend: layer count} or None)``: ``contender`` prepared for ``graph`` at ``batch``.

    ``contender`` is ``auto``, ``tune`` (with ``tuning_cache``, a path), a backend name, or
    :data:`MODEL_PEER` (an ONNX Runtime session on ``onnx_model``, the serialized
    ``to_onnx(graph)`` or the path of an ONNX file, with :func:`onnxruntime_options`).
    """
    if contender == MODEL_PEER:
        import onnxruntime as ort

        session = ort.InferenceSession(onnx_model, onnxruntime_options(ort, threads),
                                       providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return (lambda x: session.run(None, {input_name: x})), None
    from collections import Counter

    from ..core.engine import Engine
    from ..graph.executor import CompiledGraph

    if contender == "auto":
        engine = Engine()
    elif contender == "tune":
        engine = Engine(policy="tune", tuning_cache=tuning_cache)
    else:
        engine = Engine(policy=contender)
    compiled = CompiledGraph(graph, engine, batch=batch)
    return compiled.run, dict(Counter(compiled.layer_backends.values()).most_common())


def tune_model(graph, batch: int, tuning_cache) -> float:
    """Tune every convolution of ``graph`` at ``batch`` into ``tuning_cache`` (a path); seconds taken."""
    from ..core.engine import Engine
    from ..graph.executor import CompiledGraph

    start = time.perf_counter()
    CompiledGraph(graph, Engine(policy="tune", tuning_cache=tuning_cache), batch=batch)
    return time.perf_counter() - start
