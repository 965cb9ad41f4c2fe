"""Side-by-side timing of backends and peer libraries on one convolution problem.

Absolute times on a shared machine are noise; ratios measured in the same run are not.
Every contender is prepared and warmed first (JIT compilation and weight packing stay out
of the timings), then the contenders are timed in interleaved rounds so that a burst of
load from a neighbour hits them all alike, and the median of the rounds is reported.
Peers (``torch.nn.functional.conv2d``, ONNX Runtime's ``Conv``) are used only when
installed; they are baselines, never dependencies. In tables and benchmark parameters they
are named ``peer:torch`` and ``peer:onnxruntime`` (:data:`PEERS`), apart from any backend
(the ``torch`` plugin backend is a backend, not a peer).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..core.arrays import problem_data  # noqa: F401  (part of this module's API: the asv suite calls bench.problem_data)
from ..core.problem import ConvProblem
from ..runtime.threads import get_num_threads


@dataclass
class Timing:
    name: str
    kind: str  # "backend" | "peer"
    median_s: Optional[float]
    flops: int
    error: Optional[str] = None

    @property
    def gflops(self) -> Optional[float]:
        return None if not self.median_s else self.flops / self.median_s / 1e9


def simulated(device: str) -> Optional[str]:
    """Why a backend on ``device`` must not be timed here (Numba's CUDA simulator), else ``None``."""
    if device == "cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return "runs on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct, but no measurement"
    return None


#: The peer libraries, by the name they carry in tables and benchmark parameters.
PEERS = ("peer:torch", "peer:onnxruntime")


class PeerUnavailable(RuntimeError):
    """A peer cannot run here (not installed, or it has no kernel for the problem); says why."""


def make_peer(name: str, problem: ConvProblem, x, w, b) -> Callable[[], object]:
    """A warm-able call of peer ``name`` (one of :data:`PEERS`) on ``x`` with weights ``w``, ``b``.

    Building it is the peer's "prepare" (tensor wrapping, an ONNX Runtime session); calling
    it runs the convolution once. Raises :class:`PeerUnavailable` with the reason when the
    peer is not installed or cannot run the problem.
    """
    if name == "peer:torch":
        run = torch_peer(problem, x, w, b)
        if run is None:
            raise PeerUnavailable("torch is not installed (pip install torch)")
        return run
    if name == "peer:onnxruntime":
        return onnxruntime_peer(problem, x, w, b)
    raise KeyError(f"no peer named {name!r}; peers: {', '.join(PEERS)}")


def available_peers(problem: ConvProblem, x, w, b) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """Every peer that can run ``problem`` here, and why each other one cannot."""
    peers, reasons = {}, {}
    for name in PEERS:
        try:
            peers[name] = make_peer(name, problem, x, w, b)
        except PeerUnavailable as exc:
            reasons[name] = str(exc)
    return peers, reasons


def torch_peer(problem: ConvProblem, x, w, b) -> Optional[Callable[[], object]]:
    """A warm ``torch.nn.functional.conv2d`` call on the same data, or ``None`` without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(get_num_threads())
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    tb = None if b is None else torch.from_numpy(b)
    top, bottom, left, right = problem.padding
    if top == bottom and left == right:
        pad_args = dict(padding=(top, left))
    else:  # torch's conv2d takes symmetric padding only; pad explicitly, as a user would
        tx = F.pad(tx, (left, right, top, bottom))
        pad_args = dict(padding=0)

    def run():
        with torch.no_grad():
            return F.conv2d(tx, tw, tb, stride=problem.stride, dilation=problem.dilation, groups=problem.groups, **pad_args)

    return run


def onnx_conv_model(problem: ConvProblem, w, b):
    """A one-node ONNX model ``Y = Conv(X, W[, B])`` of ``problem``, with the weights as initializers.

    Opset 13 and IR version 7, which every ONNX Runtime of recent years loads.
    """
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT if problem.dtype == "float32" else TensorProto.DOUBLE
    top, bottom, left, right = problem.padding
    initializers = [numpy_helper.from_array(np.ascontiguousarray(w), "W")]
    inputs = ["X", "W"]
    if b is not None:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(b), "B"))
        inputs.append("B")
    node = helper.make_node("Conv", inputs, ["Y"], kernel_shape=[problem.kernel_h, problem.kernel_w],
                            strides=list(problem.stride), pads=[top, left, bottom, right],
                            dilations=list(problem.dilation), group=problem.groups)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("X", elem, list(problem.input_shape))],
                              [helper.make_tensor_value_info("Y", elem, list(problem.output_shape))], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="convengine.bench")
    model.ir_version = 7
    return model


def onnxruntime_peer(problem: ConvProblem, x, w, b) -> Callable[[], object]:
    """ONNX Runtime (CPU provider) running the one-node Conv model on ``x``.

    Session options: :func:`onnxruntime_options` (convengine's thread count, sequential, no
    spinning workers, default graph optimizations). Raises :class:`PeerUnavailable` without
    onnx and onnxruntime, or when ONNX Runtime has no kernel for the problem (its CPU
    provider has no float64 Conv).
    """
    try:
        import onnx  # noqa: F401  (the model builder)
        import onnxruntime as ort
    except ImportError as exc:
        raise PeerUnavailable(f"onnx and onnxruntime are not both installed ({exc}); "
                              "pip install onnx onnxruntime") from None
    options = onnxruntime_options(ort)
    try:
        session = ort.InferenceSession(onnx_conv_model(problem, w, b).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # e.g. NOT_IMPLEMENTED: no float64 Conv kernel
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "NOT_IMPLEMENTED" in message:
            raise PeerUnavailable(f"onnxruntime has no {problem.dtype} Conv kernel (NOT_IMPLEMENTED)") from None
        raise PeerUnavailable(f"onnxruntime cannot run it: {message[:200]}") from None
    feeds = {"X": np.ascontiguousarray(x)}

    def run():
        return session.run(None, feeds)[0]

    return run


def onnxruntime_options(ort=None, threads: Optional[int] = None):
    """The ``SessionOptions`` every ONNX Runtime contender gets.

    ``intra_op_num_threads`` is convengine's thread count (or ``threads``), execution is
    sequential, idle workers do not spin (``session.intra_op.allow_spinning=0``, for the
    reason convengine sets ``OMP_WAIT_POLICY=PASSIVE``: spinning threads would steal the
    cores of whichever contender runs next in an interleaved round), and graph optimizations
    stay at ONNX Runtime's default, ``ORT_ENABLE_ALL``: what a user gets.
    """
    if ort is None:
        import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return options


def _calibrate(fn: Callable[[], object], target_s: float) -> int:
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, int(target_s / once))


#: Pause before each contender's sample in an interleaved round. BLAS worker threads keep
#: spinning after a call (OpenBLAS: 2**28 cycles by default, about 0.1 s) and would take a
#: core from whichever contender runs next: measured on ResNet-18, ONNX Runtime timed right
#: after convengine took 24 ms, and 17.5 ms once OpenBLAS was told not to spin. So every
#: sample starts after the previous contender's threads have gone to sleep.
SETTLE_S = 0.15


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int = 7, target_s: float = 0.02,
                warm: bool = True, settle_s: Optional[float] = None) -> dict[str, list[float]]:
    """Seconds per call of each contender, one sample per round, the contenders interleaved.

    Each contender is called once first when ``warm`` (compilation, caches, thread pools),
    then once more to calibrate how many calls make a sample of at least ``target_s``.
    With several contenders, each sample starts ``settle_s`` (default :data:`SETTLE_S`)
    after the previous one ended, so that no contender pays for another's spinning threads.
    """
    settle = (SETTLE_S if settle_s is None else settle_s) if len(contenders) > 1 else 0.0
    if warm:
        for fn in contenders.values():
            fn()
    inner = {name: _calibrate(fn, target_s) for name, fn in contenders.items()}
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            if settle:
                time.sleep(settle)
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / inner[name])
    return samples


def compare(problem: ConvProblem, backends: dict[str, Callable[[np.ndarray], np.ndarray]],
            peers: dict[str, Callable[[], object]], x: np.ndarray, rounds: int = 7,
            target_s: float = 0.02) -> list[Timing]:
    """Median seconds per call of each backend executor and peer, timed in interleaved rounds."""
    contenders: dict[str, Callable[[], object]] = {name: (lambda e=e: e(x)) for name, e in backends.items()}
    contenders.update(peers)
    samples = interleaved(contenders, rounds, target_s)
    return [Timing(name, "peer" if name in peers else "backend", float(np.median(samples[name])), problem.flops)
            for name in contenders]


def _rate(gflops: float) -> str:
    return f"{gflops:.1f}" if gflops >= 1 else f"{gflops:.2g}"


def format_table(problem: ConvProblem, timings: list[Timing], gemm_flops: Optional[float] = None) -> str:
    """One row per contender: median time, ratio to the fastest peer, GFLOP/s and share of GEMM peak."""
    peer_times = [t.median_s for t in timings if t.kind == "peer" and t.median_s]
    reference = min(peer_times) if peer_times else None
    header = ("contender", "median", "vs peer", "GFLOP/s", "of GEMM" if gemm_flops else "")
    rows = [header]
    for t in timings:
        if t.median_s is None:
            rows.append((t.name, "-", "-", "-", t.error or ""))
            continue
        ratio = f"{t.median_s / reference:.2f}x" if reference else "-"
        share = f"{t.gflops * 1e9 / gemm_flops:.0%}" if gemm_flops else ""
        rows.append((t.name, f"{t.median_s * 1e3:.3f} ms", ratio, _rate(t.gflops), share))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"{problem}  ({problem.flops / 1e9:.3f} GFLOP)"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


# -- whole models -----------------------------------------------------------------------------
#
# A whole model runs through the graph executor under each policy (``auto``, ``tune``) and
# each single backend that supports every convolution of it, against ONNX Runtime running
# the same graph exported with ``to_onnx`` (same weights, same input). peer:torch is not run
# on whole models: it would need a torch twin of each graph.

#: The ONNX Runtime contender of a whole-model run.
MODEL_PEER = "peer:onnxruntime"
#: The engine policies every whole-model run includes.
TORCH_ON_MODELS = ("not run on whole models: it would need a torch twin of the graph "
                   "(peer:torch is timed on single layers)")

#: How peak memory is measured (``--memory``), for reports.
MEMORY_METHOD = (
    "peak extra RSS of a fresh process: the model (a convengine Graph, or the ONNX bytes for "
    "ONNX Runtime) and the input are loaded and the runtime's libraries imported first; then "
    "the peak-RSS mark is reset (Linux /proc/self/clear_refs) and the contender is built and "
    "run twice; extra = VmHWM - VmRSS at the reset. RSS, not tracemalloc: ONNX Runtime, BLAS "
    "and Numba allocate outside Python's tracked heap."
)


#: Libraries the backends and peers load; imported before tuning, timing or a memory baseline.
HEAVY_LIBRARIES = ("numba", "scipy.fft", "torch", "onnxruntime")


def import_heavy_libraries() -> None:
    """Import :data:`HEAVY_LIBRARIES` that are installed (as the asv suite's forkserver does).

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


def conv_problems(graph, batch: int = 1) -> list[tuple[str, ConvProblem]]:
    """``(node name, problem)`` of every Conv node of ``graph`` at ``batch``."""
    from ..graph.ops import conv_problem_args

    problems = []
    for node in graph.nodes:
        if node.op != "Conv":
            continue
        x, w = graph.shapes[node.inputs[0]], graph.params[node.inputs[1]]
        bias = len(node.inputs) > 2 and bool(node.inputs[2])
        problems.append((node.name, ConvProblem.from_shapes((batch, *x[1:]), w.shape, bias=bias, dtype=w.dtype.name,
                                                            **conv_problem_args(node))))
    return problems


def model_input(graph, batch: int = 1, seed: int = 0) -> np.ndarray:
    """A reproducible standard-normal input for a single-input graph."""
    if len(graph.inputs) != 1:
        raise ValueError(f"model {graph.name!r} has {len(graph.inputs)} inputs; whole-model benchmarks need one")
    spec = graph.inputs[0]
    shape = tuple(batch if d is None else int(d) for d in spec.shape)
    return np.random.default_rng(seed).standard_normal(shape).astype(spec.dtype)


def backend_skip_reason(name: str, problems, *, explicit: bool = False, max_run_s: Optional[float] = None,
                        registry=None) -> Optional[str]:
    """Why single backend ``name`` does not run the whole model (``None``: it runs it).

    Unsupported: some convolution is declined by the backend's ``supports``. Unless the
    backend was named explicitly: ``fft`` on a model with 1x1 convolutions (as in the asv
    suite: a 1x1 convolution is a GEMM, and transforming every kernel to the input's size
    costs minutes and gigabytes on ResNet-50), and a backend whose cost model predicts more
    than ``max_run_s`` seconds per run (``naive`` on large models or batches).
    """
    from ..core.registry import default_registry

    backend = (registry or default_registry()).get(name).backend
    for node, problem in problems:
        try:
            declined = backend.supports(problem)
        except Exception as exc:  # a plugin's check must not end the run
            declined = f"supports() raised {type(exc).__name__}: {exc}"
        if declined:
            return f"unsupported: layer {node}: {declined}"
    if explicit:
        return None
    if name == "fft" and any(p.kernel_h == p.kernel_w == 1 for _, p in problems):
        return ("skipped: fft on 1x1 convolutions (a GEMM; kernel transforms take minutes and GBs); "
                "--backend fft runs it")
    if max_run_s:
        from ..core.engine import Engine

        engine, total = Engine(), 0.0
        for _, problem in problems:
            try:
                predicted = engine.select(problem).row(name).predicted_s
            except Exception:
                predicted = None
            if predicted is None:
                return None
            total += predicted
        if total > max_run_s:
            return (f"skipped: the cost model predicts {total:.3g} s per run > --max-run-s {max_run_s:g}; "
                    f"--backend {name} runs it")
    return None


def build_model_runner(contender: str, graph, batch: int, *, tuning_cache=None, onnx_model: Optional[bytes] = None,
                       threads: Optional[int] = None):
    """``(run(x), {backend: layer count} or None)``: ``contender`` prepared for ``graph`` at ``batch``.

    ``contender`` is ``auto``, ``tune`` (with ``tuning_cache``, a path), a backend name, or
    :data:`MODEL_PEER` (an ONNX Runtime session on ``onnx_model``, the serialized
    ``to_onnx(graph)``, with :func:`onnxruntime_options`).
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


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bench_model(model: str, graph, *, batch: int = 1, backends=(), explicit=(), rounds: int = 7,
                tune: bool = True, memory: bool = False, max_run_s: Optional[float] = 10.0, workdir,
                gemm_flops: Optional[float] = None, say: Callable[[str], None] = lambda text: None) -> dict:
    """Time ``graph`` (loaded from ``model``, a zoo name or an ONNX path) under every contender.

    Contenders: ``auto``; ``tune`` (tuned first into a fresh tuning cache in ``workdir``,
    then prepared from it); each backend of ``backends`` that runs every convolution
    (:func:`backend_skip_reason`; ``explicit`` names lift the skip rules); ONNX Runtime on
    ``to_onnx(graph)``. Each is prepared and run once (the *first call*: preparation,
    including Numba compilation or its cache load the first time a kernel is used in this
    process, plus one run), then all are timed in ``rounds`` interleaved rounds. A contender
    whose first run took more than ``max_run_s`` is not timed further. With ``memory``, each
    contender is measured again in a fresh process (:func:`measure_model_memory`): its peak
    extra RSS and its cold first call. Returns a JSON-ready report.
    """
    import gc
    import os

    import_heavy_libraries()
    threads = get_num_threads()
    x = model_input(graph, batch)
    summary = graph.summary(input_shape=x.shape)
    problems = conv_problems(graph, batch)
    results: dict[str, dict] = {}
    runners: dict[str, Callable[[], object]] = {}
    tag = "".join(c if c.isalnum() else "_" for c in graph.name)[:40]
    tuning_cache = os.path.join(workdir, f"{tag}-b{batch}-tuning.json")
    report = {"model": graph.name, "source": model, "batch": batch, "input_shape": list(x.shape),
              "dtype": x.dtype.name, "macs": summary.total_macs, "convolutions": len(problems),
              "distinct_convolutions": len({p for _, p in problems}), "threads": threads, "rounds": rounds,
              "tuning_s": None, "tuning_cache": None, "results": []}

    def build(name: str, kind: str, **kwargs) -> None:
        row = results[name] = {"contender": name, "kind": kind, "median_s": None, "ratio_to_ort": None,
                               "gmacs": None, "gemm_share": None, "prepare_s": None, "first_run_s": None,
                               "first_call_s": None, "backends": None, "error": None, "memory": None}
        say(f"{graph.name}: preparing {name}")
        try:
            start = time.perf_counter()
            run, counts = build_model_runner(name, graph, batch, threads=threads, **kwargs)
            prepared = time.perf_counter()
            run(x)
            done = time.perf_counter()
        except Exception as exc:  # report it in the table, keep going with the others
            row["error"] = f"failed: {_first_line(exc)}"
            return
        row.update(prepare_s=prepared - start, first_run_s=done - prepared, first_call_s=done - start,
                   backends=counts)
        if max_run_s and done - prepared > max_run_s:
            row["error"] = f"not timed: one run took {done - prepared:.3g} s > --max-run-s {max_run_s:g}"
            return
        runners[name] = lambda: run(x)

    build("auto", "policy")
    if tune:
        say(f"{graph.name}: tuning {report['distinct_convolutions']} distinct convolutions "
            f"(every eligible backend measured; a fresh tuning cache)")
        try:
            report["tuning_s"] = tune_model(graph, batch, tuning_cache)
            report["tuning_cache"] = "fresh, in a temporary directory (removed afterwards)"
            build("tune", "policy", tuning_cache=tuning_cache)
        except Exception as exc:
            results["tune"] = {"contender": "tune", "kind": "policy", "median_s": None,
                               "error": f"tuning failed: {_first_line(exc)}"}
    for name in backends:
        reason = backend_skip_reason(name, problems, explicit=name in explicit, max_run_s=max_run_s)
        if reason:
            results[name] = {"contender": name, "kind": "backend", "median_s": None, "error": reason}
            continue
        build(name, "backend")
    onnx_model = None
    try:
        import onnxruntime  # noqa: F401

        from ..graph.onnx_export import to_onnx

        onnx_model = to_onnx(graph).SerializeToString()
    except ImportError as exc:
        results[MODEL_PEER] = {"contender": MODEL_PEER, "kind": "peer", "median_s": None,
                               "error": f"onnx and onnxruntime are not both installed ({exc})"}
    except Exception as exc:
        results[MODEL_PEER] = {"contender": MODEL_PEER, "kind": "peer", "median_s": None,
                               "error": f"cannot export to ONNX: {_first_line(exc)}"}
    if onnx_model is not None:
        build(MODEL_PEER, "peer", onnx_model=onnx_model)
    results["peer:torch"] = {"contender": "peer:torch", "kind": "peer", "median_s": None, "error": TORCH_ON_MODELS}

    if runners:
        say(f"{graph.name}: timing {len(runners)} contenders, {rounds} interleaved rounds")
        samples = interleaved(runners, rounds, target_s=0.05, warm=False)
        for name, values in samples.items():
            results[name]["median_s"] = float(np.median(values))
    runners.clear()
    gc.collect()
    ort_s = results.get(MODEL_PEER, {}).get("median_s")
    for row in results.values():
        for key in ("ratio_to_ort", "gmacs", "gemm_share", "prepare_s", "first_run_s", "first_call_s", "backends",
                    "memory"):
            row.setdefault(key, None)
        if row["median_s"]:
            row["ratio_to_ort"] = row["median_s"] / ort_s if ort_s else None
            row["gmacs"] = summary.total_macs / row["median_s"] / 1e9
            row["gemm_share"] = 2 * summary.total_macs / row["median_s"] / gemm_flops if gemm_flops else None

    if memory:
        input_path = os.path.join(workdir, f"{tag}-b{batch}-input.npy")
        np.save(input_path, x)
        onnx_path = None
        if onnx_model is not None:
            onnx_path = os.path.join(workdir, f"{tag}-b{batch}.onnx")
            with open(onnx_path, "wb") as f:
                f.write(onnx_model)
        for name, row in results.items():
            if row["first_call_s"] is None:
                continue  # it did not run here
            say(f"{graph.name}: peak memory of {name} (a fresh process)")
            row["memory"] = measure_model_memory(name, model, batch, input_path, onnx_path=onnx_path,
                                                 tuning_cache=tuning_cache, threads=threads)
        ort_peak = ((results.get(MODEL_PEER) or {}).get("memory") or {}).get("peak_extra_bytes")
        for row in results.values():
            mem = row.get("memory")
            if mem and mem.get("peak_extra_bytes") is not None and ort_peak:
                mem["ratio_to_ort"] = mem["peak_extra_bytes"] / ort_peak
    ordered = [r for r in results.values() if r["median_s"] or r["first_call_s"] is not None]
    ordered += [r for r in results.values() if r not in ordered]
    report["results"] = ordered
    return report


# -- peak memory, in a fresh process ----------------------------------------------------------

_CHILD = ("import sys; from convengine.bench import _memory_child; sys.exit(_memory_child(sys.argv[1]))")


def measure_model_memory(contender: str, model: str, batch: int, input_path: str, *, onnx_path=None,
                         tuning_cache=None, threads: Optional[int] = None, timeout: float = 1800.0) -> dict:
    """Peak extra RSS and cold first call of ``contender`` on ``model``, in a fresh Python process.

    See :data:`MEMORY_METHOD`. Returns ``{"peak_extra_bytes", "baseline_bytes", "peak_bytes",
    "cold_first_call_s", "method", "error"}`` (``error`` set and the numbers ``None`` when the
    process failed). For ``tune``, a first process makes sure ``tuning_cache`` has every
    layer under the keys a fresh process computes (measuring again what it lacks), so that
    the measured process only reads it; ``retuned_layers`` says how many it had to measure.
    """
    empty = {"peak_extra_bytes": None, "baseline_bytes": None, "peak_bytes": None, "cold_first_call_s": None,
             "method": None}
    spec = {"contender": contender, "model": model, "batch": batch, "input": input_path, "onnx": onnx_path,
            "tuning_cache": tuning_cache, "threads": threads or get_num_threads()}
    retuned = None
    if contender == "tune":
        done = _child(dict(spec, mode="tune"), timeout)
        if done.get("error"):
            return dict(empty, error=done["error"])
        retuned = done["tuned_layers"]
    result = _child(dict(spec, mode="measure"), timeout)
    if result.get("error"):
        return dict(empty, error=result["error"])
    if retuned is not None:
        result["retuned_layers"] = retuned
    return dict(empty, error=None, **result)


def _child(spec: dict, timeout: float) -> dict:
    """Run :func:`_memory_child` on ``spec`` in a fresh interpreter; its JSON line, or ``{"error"}``.

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


def _memory_child(spec_json: str) -> int:
    """Entry point of :func:`measure_model_memory`'s processes: prints one JSON line."""
    import json

    spec = json.loads(spec_json)
    contender = spec["contender"]
    import_heavy_libraries()  # library imports are not the model's memory
    x = np.load(spec["input"])
    graph, onnx_model = None, None
    if contender == MODEL_PEER:
        with open(spec["onnx"], "rb") as f:
            onnx_model = f.read()
    else:
        from ..core.registry import list_backends
        from ..models.loading import load_model

        list_backends()  # imports every registered backend's libraries (Numba, torch...)
        graph = load_model(spec["model"])
    if spec.get("mode") == "tune":
        before = _tuning_entries(spec["tuning_cache"])
        tune_model(graph, spec["batch"], spec["tuning_cache"])
        print(json.dumps({"tuned_layers": _tuning_entries(spec["tuning_cache"]) - before}))
        return 0
    baseline, method = _settle_and_reset()
    start = time.perf_counter()
    run, _ = build_model_runner(contender, graph, spec["batch"], tuning_cache=spec["tuning_cache"],
                                onnx_model=onnx_model, threads=spec["threads"])
    run(x)
    cold = time.perf_counter() - start
    run(x)
    status = _proc_status()
    peak = status["VmHWM"] if method.startswith("VmHWM") else _maxrss_bytes()
    print(json.dumps({"peak_extra_bytes": max(0, peak - baseline), "baseline_bytes": baseline, "peak_bytes": peak,
                      "cold_first_call_s": cold, "method": method}))
    return 0
