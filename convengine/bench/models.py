"""Whole models: a graph timed through the executor under every contender, against ONNX Runtime.

A whole model runs under each policy (``auto``, ``tune``) and each single backend that
supports every convolution of it, against ONNX Runtime running the same graph exported with
``to_onnx`` (:mod:`.runners`). The result is a :class:`ModelReport`: one :class:`ModelResult`
row per contender, whether it ran or not (then with the reason).
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np

from ..core.problem import ConvProblem
from ..runtime.threads import get_num_threads
from ..runtime.timing import interleaved
from .memory import MemoryResult, measure_model_memory
from .runners import MODEL_PEER, build_model_runner, import_heavy_libraries, tune_model

#: Why peer:torch has no row of numbers on whole models.
TORCH_ON_MODELS = ("not run on whole models: it would need a torch twin of the graph "
                   "(peer:torch is timed on single layers)")


@dataclass
class ModelResult:
    """One contender's row: timings when it ran, ``error`` saying why not when it did not."""

    contender: str
    kind: str  # "policy" | "backend" | "peer"
    median_s: Optional[float] = None  # one run, median of the interleaved rounds
    ratio_to_ort: Optional[float] = None
    gmacs: Optional[float] = None  # multiply-accumulates per second, in billions
    gemm_share: Optional[float] = None  # share of the machine's measured GEMM rate
    prepare_s: Optional[float] = None
    first_run_s: Optional[float] = None
    first_call_s: Optional[float] = None  # prepare_s + first_run_s: what a user's first call costs
    backends: Optional[dict[str, int]] = None  # {backend: convolutions it runs}
    error: Optional[str] = None
    memory: Optional[MemoryResult] = None

    @property
    def ran(self) -> bool:
        """Whether it was prepared and run here (timed or not)."""
        return self.first_call_s is not None


@dataclass
class ModelReport:
    """A whole-model benchmark of one model at one batch size; :meth:`to_dict` is its JSON form."""

    model: str  # the graph's name
    source: str  # what the user named: a zoo name or an .onnx path
    batch: int
    input_shape: list[int]
    dtype: str
    macs: int
    convolutions: int
    distinct_convolutions: int
    threads: int
    rounds: int
    tuning_s: Optional[float] = None
    tuning_cache: Optional[str] = None
    results: list[ModelResult] = field(default_factory=list)

    def result(self, contender: str) -> Optional[ModelResult]:
        return next((r for r in self.results if r.contender == contender), None)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelReport:
        """The report of :meth:`to_dict` (e.g. read back from ``convengine bench --json``)."""
        results = [ModelResult(**dict(r, memory=MemoryResult(**r["memory"]) if r.get("memory") else None))
                   for r in data["results"]]
        return cls(**dict(data, results=results))


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

    Unsupported: some convolution is declined by the backend's ``supports`` (the backend's
    own rules: ``fft`` declines 1x1 kernels, ``winograd`` everything but 3x3 stride 1).
    Unless the backend was named explicitly (``explicit``): a backend whose cost model
    predicts more than ``max_run_s`` seconds per run (``naive`` on large models or batches).
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
    if explicit or not max_run_s:
        return None
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


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bench_model(model: str, graph, *, batch: int = 1, backends=(), explicit=(), rounds: int = 7,
                tune: bool = True, memory: bool = False, max_run_s: Optional[float] = 10.0, workdir,
                gemm_flops: Optional[float] = None, say: Callable[[str], None] = lambda text: None) -> ModelReport:
    """Time ``graph`` (loaded from ``model``, a zoo name or an ONNX path) under every contender.

    Contenders: ``auto``; ``tune`` (tuned first into a fresh tuning cache in ``workdir``,
    then prepared from it); each backend of ``backends`` that runs every convolution
    (:func:`backend_skip_reason`; ``explicit`` names lift the cost-model rule); ONNX Runtime
    on ``to_onnx(graph)``. Each is prepared and run once (the *first call*: preparation,
    including Numba compilation or its cache load the first time a kernel is used in this
    process, plus one run), then all are timed in ``rounds`` interleaved rounds. A contender
    whose first run took more than ``max_run_s`` is not timed further. With ``memory``, each
    contender is measured again in a fresh process (:func:`.memory.measure_model_memory`):
    its peak extra RSS and its cold first call. Rows that ran come first.
    """
    import_heavy_libraries()
    threads = get_num_threads()
    x = model_input(graph, batch)
    summary = graph.summary(input_shape=x.shape)
    problems = conv_problems(graph, batch)
    results: dict[str, ModelResult] = {}
    runners: dict[str, Callable[[], object]] = {}
    tag = "".join(c if c.isalnum() else "_" for c in graph.name)[:40]
    tuning_cache = os.path.join(workdir, f"{tag}-b{batch}-tuning.json")
    report = ModelReport(model=graph.name, source=model, batch=batch, input_shape=list(x.shape), dtype=x.dtype.name,
                         macs=summary.total_macs, convolutions=len(problems),
                         distinct_convolutions=len({p for _, p in problems}), threads=threads, rounds=rounds)

    def skip(name: str, kind: str, error: str) -> None:
        results[name] = ModelResult(name, kind, error=error)

    def build(name: str, kind: str, **kwargs) -> None:
        row = results[name] = ModelResult(name, kind)
        say(f"{graph.name}: preparing {name}")
        try:
            start = time.perf_counter()
            run, counts = build_model_runner(name, graph, batch, threads=threads, **kwargs)
            prepared = time.perf_counter()
            run(x)
            done = time.perf_counter()
        except Exception as exc:  # report it in the table, keep going with the others
            row.error = f"failed: {_first_line(exc)}"
            return
        row.prepare_s, row.first_run_s, row.first_call_s, row.backends = (prepared - start, done - prepared,
                                                                          done - start, counts)
        if max_run_s and done - prepared > max_run_s:
            row.error = f"not timed: one run took {done - prepared:.3g} s > --max-run-s {max_run_s:g}"
            return
        runners[name] = lambda: run(x)

    build("auto", "policy")
    if tune:
        say(f"{graph.name}: tuning {report.distinct_convolutions} distinct convolutions "
            f"(every eligible backend measured; a fresh tuning cache)")
        try:
            report.tuning_s = tune_model(graph, batch, tuning_cache)
            report.tuning_cache = "fresh, in a temporary directory (removed afterwards)"
            build("tune", "policy", tuning_cache=tuning_cache)
        except Exception as exc:
            skip("tune", "policy", f"tuning failed: {_first_line(exc)}")
    for name in backends:
        reason = backend_skip_reason(name, problems, explicit=name in explicit, max_run_s=max_run_s)
        if reason:
            skip(name, "backend", reason)
        else:
            build(name, "backend")
    onnx_model = None
    try:
        import onnxruntime  # noqa: F401  (only whether it is installed: ONNX Runtime is the reference)

        from ..graph.onnx_export import to_onnx

        onnx_model = to_onnx(graph).SerializeToString()
    except ImportError as exc:
        skip(MODEL_PEER, "peer", f"onnx and onnxruntime are not both installed ({exc})")
    except Exception as exc:
        skip(MODEL_PEER, "peer", f"cannot export to ONNX: {_first_line(exc)}")
    if onnx_model is not None:
        build(MODEL_PEER, "peer", onnx_model=onnx_model)
    skip("peer:torch", "peer", TORCH_ON_MODELS)

    if runners:
        say(f"{graph.name}: timing {len(runners)} contenders, {rounds} interleaved rounds")
        samples = interleaved(runners, rounds, target_s=0.05, warm=False)
        for name, values in samples.items():
            results[name].median_s = float(np.median(values))
    runners.clear()
    gc.collect()
    ort = results.get(MODEL_PEER)
    ort_s = ort.median_s if ort else None
    for row in results.values():
        if row.median_s:
            row.ratio_to_ort = row.median_s / ort_s if ort_s else None
            row.gmacs = summary.total_macs / row.median_s / 1e9
            row.gemm_share = 2 * summary.total_macs / row.median_s / gemm_flops if gemm_flops else None

    if memory:
        _measure_memory(results, model, graph.name, batch, x, onnx_model, workdir, tag, tuning_cache, threads, say)
    ordered = [r for r in results.values() if r.median_s or r.ran]
    report.results = ordered + [r for r in results.values() if r not in ordered]
    return report


def _measure_memory(results: dict[str, ModelResult], model: str, name: str, batch: int, x: np.ndarray, onnx_model, workdir,
                    tag: str, tuning_cache: str, threads: int, say) -> None:
    """Each contender that ran here, again in a fresh process: its ``memory``, and the ratio to ORT's."""
    input_path = os.path.join(workdir, f"{tag}-b{batch}-input.npy")
    np.save(input_path, x)
    onnx_path = None
    if onnx_model is not None:
        onnx_path = os.path.join(workdir, f"{tag}-b{batch}.onnx")
        with open(onnx_path, "wb") as f:
            f.write(onnx_model)
    for contender, row in results.items():
        if not row.ran:
            continue
        say(f"{name}: peak memory of {contender} (a fresh process)")
        row.memory = measure_model_memory(contender, model, batch, input_path, onnx_path=onnx_path,
                                          tuning_cache=tuning_cache, threads=threads)
    ort = results.get(MODEL_PEER)
    ort_peak = ort.memory.peak_extra_bytes if ort and ort.memory else None
    for row in results.values():
        if row.memory and row.memory.peak_extra_bytes is not None and ort_peak:
            row.memory.ratio_to_ort = row.memory.peak_extra_bytes / ort_peak
