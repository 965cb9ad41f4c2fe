"""Peak memory of a whole-model contender, each in a fresh Python process.

A process that has already run other contenders holds their caches, pools and freed-but-kept
heap pages, so its peak says little about any one of them. Each contender is therefore
built and run in a process of its own (``python -c`` on :func:`memory_child`), which reports
one JSON line.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..runtime.threads import get_num_threads
from .runners import MODEL_PEER, build_model_runner, import_heavy_libraries, tune_model

#: How peak memory is measured (``--memory``), for reports.
MEMORY_METHOD = (
    "peak extra RSS of a fresh process: the model (a convengine Graph, or the ONNX bytes for "
    "ONNX Runtime) and the input are loaded and the libraries imported and initialised first "
    "(numba, scipy.fft, torch, onnxruntime, onnx, convengine's own modules; Numba's compiler "
    "state, built on the first compiled call, ~55 MB); then the peak-RSS mark is reset (Linux "
    "/proc/self/clear_refs) and the contender is built and run twice; extra = VmHWM - VmRSS at "
    "the reset. RSS, not tracemalloc: ONNX Runtime, BLAS and Numba allocate outside Python's "
    "tracked heap. Each runtime alone (bench --onnx, benchmarks/model_vs_ort.py): the reset "
    "comes before the model is loaded, so loading it counts too."
)

#: Calls a process times at most when asked to time (``calls``, ``timed_s``), however short they are.
MAX_TIMED_CALLS = 200

_CHILD = "import sys; from convengine.bench.memory import memory_child; sys.exit(memory_child(sys.argv[1]))"


@dataclass
class MemoryResult:
    """One contender's memory, measured in a fresh process (see :data:`MEMORY_METHOD`).

    The numbers are ``None`` and ``error`` says why when the process failed.
    """

    peak_extra_bytes: Optional[int] = None
    baseline_bytes: Optional[int] = None
    peak_bytes: Optional[int] = None
    cold_first_call_s: Optional[float] = None  # that process's first call: preparation + one run
    method: Optional[str] = None
    error: Optional[str] = None
    #: ``tune`` only: layers the fresh process re-tuned first (tuning keys differ between processes)
    retuned_layers: Optional[int] = None
    #: peak extra RSS over ONNX Runtime's, filled in by the benchmark when both were measured
    ratio_to_ort: Optional[float] = None
    #: with ``calls``: seconds of each call timed after the two measured ones, the runtime alone
    run_s: Optional[list[float]] = None
    #: ... and the process's CPU seconds (all its threads) per timed call: the work, spin-waiting
    #: included (a thread waiting for a core uses none; one spinning for a descheduled sibling does)
    cpu_per_call_s: Optional[float] = None
    #: ``{backend: convolutions it runs}`` in that process (convengine contenders)
    backends: Optional[dict[str, int]] = None
    #: with ``count_loading``: the peak extra RSS while the model was being loaded (a part of the
    #: whole peak, ``peak_extra_bytes``), and what the loaded model then held
    load_peak_bytes: Optional[int] = None
    loaded_bytes: Optional[int] = None


def measure_model_memory(contender: str, model: str, batch: int, input_path: str, *, onnx_path=None,
                         tuning_cache=None, threads: Optional[int] = None, timeout: float = 1800.0,
                         calls: int = 0, timed_s: float = 0.0, count_loading: bool = False) -> MemoryResult:
    """Peak extra RSS and cold first call of ``contender`` on ``model``, in a fresh Python process.

    See :data:`MEMORY_METHOD`. For ``tune``, a first process makes sure ``tuning_cache`` has
    every layer under the keys a fresh process computes (measuring again what it lacks), so
    that the measured process only reads it; ``retuned_layers`` says how many it had to measure.
    With ``calls``, that process then times further calls, the runtime alone in it (at least
    ``calls``, more until ``timed_s`` seconds have passed, at most :data:`MAX_TIMED_CALLS`):
    ``run_s``. ``model`` may be an ONNX file; ``onnx_path`` is the file ONNX Runtime runs.
    With ``count_loading``, the peak counts loading the model too (the graph, or ONNX Runtime's
    file bytes): otherwise convengine's graph is in the baseline while ONNX Runtime is charged
    for the copy of the weights its session makes.
    """
    spec = {"contender": contender, "model": model, "batch": batch, "input": input_path, "onnx": onnx_path,
            "tuning_cache": tuning_cache, "threads": threads or get_num_threads(), "calls": calls,
            "timed_s": timed_s, "count_loading": count_loading}
    retuned = None
    if contender == "tune":
        done = _child(dict(spec, mode="tune"), timeout)
        if done.get("error"):
            return MemoryResult(error=done["error"])
        retuned = done["tuned_layers"]
    result = _child(dict(spec, mode="measure"), timeout)
    if result.get("error"):
        return MemoryResult(error=result["error"])
    return MemoryResult(retuned_layers=retuned, **result)


def _child(spec: dict, timeout: float) -> dict:
    """Run :func:`memory_child` on ``spec`` in a fresh interpreter; its JSON line, or ``{"error"}``.

    ``PYTHONHASHSEED`` is fixed for these processes: a backend fingerprint that depends on
    the hash seed (the order of a set) would otherwise give every process other tuning keys.
    """
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, CONVENGINE_NUM_THREADS=str(spec["threads"]), PYTHONHASHSEED="0")
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"the measuring process took more than {timeout:g} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"the measuring process failed (exit {proc.returncode}): {tail[:200]}"}
    return json.loads(lines[-1])


def _proc_status() -> dict:
    values = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def _maxrss_bytes() -> int:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _settle_and_reset() -> tuple[int, str]:
    """Free what can be freed, reset the peak-RSS mark; ``(baseline bytes, method)``."""
    import ctypes
    import gc

    gc.collect()
    try:  # return freed heap pages to the system, so the baseline is what is really in use
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        status = _proc_status()
        if "VmRSS" in status and "VmHWM" in status:
            return status["VmRSS"], "VmHWM after a reset (/proc/self/clear_refs)"
    except OSError:
        pass
    # No reset: ru_maxrss is the high-water mark of the whole process so far, so the extra is
    # measured from it and misses a peak that stays below an earlier one (an underestimate).
    return _maxrss_bytes(), "ru_maxrss delta (no peak reset: may underestimate)"


def _tuning_entries(path) -> int:
    """How many tuning results (not machine profiles) the cache file at ``path`` holds."""
    import json

    try:
        with open(path) as f:
            entries = json.load(f).get("entries", {})
    except (OSError, ValueError, AttributeError):
        return 0
    return sum(1 for e in entries.values() if isinstance(e, dict) and "chosen" in (e.get("record") or {}))


def memory_child(spec_json: str) -> int:
    """Entry point of :func:`measure_model_memory`'s processes: prints one JSON line."""
    import json

    spec = json.loads(spec_json)
    contender = spec["contender"]
    import_heavy_libraries()  # library imports are not the model's memory
    x = np.load(spec["input"])
    if contender != MODEL_PEER:
        from ..core.registry import list_backends
        from ..graph import executor  # noqa: F401  (convengine's own modules are library code too)
        from ..models.loading import load_model

        list_backends()  # imports every registered backend's libraries (Numba, torch...)
    if spec.get("count_loading"):
        baseline, method = _settle_and_reset()
    graph, onnx_model = None, None
    if contender == MODEL_PEER and spec.get("count_loading"):
        onnx_model = spec["onnx"]  # the path: ONNX Runtime reads the file itself, as a user's session would
    elif contender == MODEL_PEER:
        with open(spec["onnx"], "rb") as f:
            onnx_model = f.read()
    else:
        graph = load_model(spec["model"])
    loading = {}
    if spec.get("count_loading"):
        status = _proc_status()
        if method.startswith("VmHWM"):
            loading = {"load_peak_bytes": max(0, status["VmHWM"] - baseline),
                       "loaded_bytes": max(0, status["VmRSS"] - baseline)}
    if spec.get("mode") == "tune":
        before = _tuning_entries(spec["tuning_cache"])
        tune_model(graph, spec["batch"], spec["tuning_cache"])
        print(json.dumps({"tuned_layers": _tuning_entries(spec["tuning_cache"]) - before}))
        return 0
    if not spec.get("count_loading"):
        baseline, method = _settle_and_reset()
    start = time.perf_counter()
    run, backends = build_model_runner(contender, graph, spec["batch"], tuning_cache=spec["tuning_cache"],
                                       onnx_model=onnx_model, threads=spec["threads"])
    run(x)
    cold = time.perf_counter() - start
    run(x)
    status = _proc_status()
    peak = status["VmHWM"] if method.startswith("VmHWM") else _maxrss_bytes()
    times = []
    calls, end = spec.get("calls", 0), time.perf_counter() + spec.get("timed_s", 0.0)
    cpu = time.process_time()
    while len(times) < calls or (calls and len(times) < MAX_TIMED_CALLS and time.perf_counter() < end):
        begin = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - begin)
    cpu = (time.process_time() - cpu) / len(times) if times else None
    print(json.dumps({"peak_extra_bytes": max(0, peak - baseline), "baseline_bytes": baseline, "peak_bytes": peak,
                      "cold_first_call_s": cold, "method": method, "run_s": times or None, "cpu_per_call_s": cpu,
                      "backends": backends, **loading}))
    return 0
