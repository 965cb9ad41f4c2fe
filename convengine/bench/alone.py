"""A whole model, each runtime alone in fresh processes: convengine against ONNX Runtime.

Two runtimes timed in one process disturb each other: one's BLAS threads still spin, or its
caches and freed heap are still warm, when the other's call starts. Here every sample is a
fresh Python process that runs one runtime only (:func:`.memory.measure_model_memory` with
``calls``): it loads the input, the model, builds the runtime and runs it twice (its peak
extra RSS from before the model was loaded, and its cold first call: build + one run,
:data:`.memory.MEMORY_METHOD`), then times further calls.
The two runtimes alternate over ``rounds`` rounds, the order swapped every round, so that a
change in the machine's load falls on both alike. A runtime's time is the median of its
processes' medians, reported with their spread (fastest and slowest process).

ONNX Runtime runs an ONNX file (``convengine bench --onnx FILE``: the user's file itself, not
convengine's re-export) with :func:`.peers.onnxruntime_options` (the thread count,
sequential, no spinning: on a loaded 2-vCPU machine its idle workers' spinning cost it 1.7x
on ResNet-50 and 2-3x on MobileNetV2, so this is its faster setting there). convengine runs
the same file as ``convengine.load_onnx`` imports it, or a zoo model
(``benchmarks/model_vs_ort.py``), under ``auto`` or another policy. Both processes import
the same libraries first (:func:`.runners.import_heavy_libraries`); only one runtime runs.

With ``per_layer``, this process also times every step of convengine's executor
(:meth:`CompiledGraph.run` with ``timings``) and names the backend of each convolution: where
the time goes, not a comparison (ONNX Runtime fuses and reorders nodes, so its per-node times
do not line up one to one).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np

from ..runtime.threads import get_num_threads
from .memory import MemoryResult, measure_model_memory
from .models import conv_problems, model_input
from .peers import PeerUnavailable
from .runners import MODEL_PEER, import_heavy_libraries

#: Seconds of calls each process times after its two measured ones ...
TIMED_S = 2.0
#: ... and at least this many calls, however long they take.
MIN_CALLS = 5


@dataclass
class AloneResult:
    """One runtime over its fresh processes; ``error`` says why not when a process failed."""

    runtime: str  # a convengine policy or backend, or MODEL_PEER
    median_s: Optional[float] = None  # median of the per-process medians
    process_medians_s: list[float] = field(default_factory=list)
    calls: int = 0  # timed calls over all processes
    ratio_to_ort: Optional[float] = None
    peak_extra_bytes: Optional[int] = None  # median over the processes
    process_peaks_bytes: list[int] = field(default_factory=list)
    memory_ratio_to_ort: Optional[float] = None
    #: the peak while loading the model (part of the whole peak) and what the loaded model held, medians
    load_peak_bytes: Optional[int] = None
    loaded_bytes: Optional[int] = None
    process_load_peaks_bytes: list[Optional[int]] = field(default_factory=list)
    process_loaded_bytes: list[Optional[int]] = field(default_factory=list)
    cold_first_call_s: Optional[float] = None  # median over the processes: preparation + one run
    process_cold_s: list[float] = field(default_factory=list)
    #: CPU seconds per call (all threads), median over the processes: the work, spin-waiting included
    #: (see MemoryResult.cpu_per_call_s)
    cpu_per_call_s: Optional[float] = None
    process_cpu_s: list[float] = field(default_factory=list)
    cpu_ratio_to_ort: Optional[float] = None
    backends: Optional[dict[str, int]] = None  # {backend: convolutions it runs}, convengine only
    error: Optional[str] = None

    @property
    def spread_s(self) -> Optional[tuple[float, float]]:
        """``(fastest, slowest)`` process median, or ``None`` before any process ran."""
        return (min(self.process_medians_s), max(self.process_medians_s)) if self.process_medians_s else None

    def add(self, process: MemoryResult) -> None:
        """Record one process's result (its error, if it failed, ends this runtime's measurement)."""
        if process.error:
            self.error = process.error
            return
        self.process_medians_s.append(float(np.median(process.run_s)))
        self.calls += len(process.run_s)
        self.process_peaks_bytes.append(process.peak_extra_bytes)
        self.median_s = float(np.median(self.process_medians_s))
        self.peak_extra_bytes = int(np.median(self.process_peaks_bytes))
        self.process_cold_s.append(process.cold_first_call_s)
        self.cold_first_call_s = float(np.median(self.process_cold_s))
        self.process_cpu_s.append(process.cpu_per_call_s)
        self.cpu_per_call_s = float(np.median(self.process_cpu_s))
        self.process_load_peaks_bytes.append(process.load_peak_bytes)
        self.process_loaded_bytes.append(process.loaded_bytes)
        if None not in self.process_load_peaks_bytes + self.process_loaded_bytes:
            self.load_peak_bytes = int(np.median(self.process_load_peaks_bytes))
            self.loaded_bytes = int(np.median(self.process_loaded_bytes))
        self.backends = process.backends or self.backends


@dataclass
class LayerTime:
    """One executor step of convengine's run (``per_layer``): a node, or a convolution with what it absorbed."""

    node: str
    op: str  # "Conv+BatchNormalization+Relu" when the convolution absorbed those nodes
    output_shape: list[int]
    backend: Optional[str]  # convolutions only
    median_s: float
    share: float  # of the sum of the steps' medians
    macs: int = 0


@dataclass
class AloneReport:
    """One model at one batch size, each runtime alone (``convengine bench --onnx``); :meth:`to_dict` is its JSON form."""

    source: str  # what convengine ran: the ONNX file, or a zoo name
    onnx: str  # the ONNX file ONNX Runtime ran
    model: str  # the graph's name (an ONNX file's name without .onnx)
    batch: int
    input_shape: list[int]
    dtype: str
    macs: int
    convolutions: int
    threads: int
    rounds: int  # fresh processes per runtime
    calls: int  # timed calls per process, at least
    timed_s: float  # ... and seconds of them
    results: list[AloneResult] = field(default_factory=list)
    layers: Optional[list[LayerTime]] = None
    per_layer_total_s: Optional[float] = None  # median whole run of the per-layer timing, this process

    def result(self, runtime: str) -> Optional[AloneResult]:
        return next((r for r in self.results if r.runtime == runtime), None)

    @property
    def convengine(self) -> AloneResult:
        return next(r for r in self.results if r.runtime != MODEL_PEER)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AloneReport:
        layers = [LayerTime(**row) for row in data["layers"]] if data.get("layers") is not None else None
        return cls(**dict(data, results=[AloneResult(**r) for r in data["results"]], layers=layers))


def load_onnx_file(path: str, batch: int = 1):
    """The graph of ONNX file ``path``, checked for a benchmark at ``batch``, before anything is timed.

    Raises ``FileNotFoundError`` for a missing file, :class:`~convengine.graph.GraphError`
    for a file that does not parse or holds a node convengine cannot import (the importer's
    error, every such node listed), :class:`.peers.PeerUnavailable` when ONNX Runtime is not
    installed, and ``ValueError`` when the file fixes a batch size other than ``batch`` or
    has more than one input.
    """
    from ..graph.onnx import load_onnx
    from ..graph.onnx.reader import import_onnx

    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX file {path!r} does not exist")
    try:
        import onnxruntime  # noqa: F401  (only whether it is installed: it is what the file is compared with)
    except ImportError as exc:
        raise PeerUnavailable(f"the benchmark compares convengine with ONNX Runtime, which is not installed "
                              f"(pip install onnxruntime): {exc}") from None
    graph = load_onnx(path, name=os.path.splitext(os.path.basename(path))[0])
    model_input(graph, batch)  # one input, or ValueError naming the model
    onnx = import_onnx()
    first = onnx.load(path, load_external_data=False).graph
    initializers = {t.name for t in first.initializer}
    dims = next(i for i in first.input if i.name not in initializers).type.tensor_type.shape.dim
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
    if fixed and fixed != batch:
        raise ValueError(f"ONNX file {path!r} fixes the batch size of its input at {fixed}; --batch {batch} "
                         f"needs a file exported with a free batch dimension (or --batch {fixed})")
    return graph


def bench_alone(model: str, graph, onnx_path: str, *, contender: str = "auto", batch: int = 1, rounds: int = 5,
                calls: int = MIN_CALLS, timed_s: float = TIMED_S, per_layer: bool = False,
                threads: Optional[int] = None, workdir: str, say: Callable[[str], None] = lambda text: None) -> AloneReport:
    """Time ``graph`` under convengine's ``contender`` and ONNX Runtime, each alone in fresh processes.

    ``model`` is what convengine's processes load (an ONNX file or a zoo name, as
    :func:`convengine.models.loading.load_model` reads it), ``graph`` that model loaded here,
    ``onnx_path`` the file ONNX Runtime runs. ``rounds`` fresh processes per runtime,
    alternating; each times at least ``calls`` calls and ``timed_s`` seconds of them (see the
    module's docstring). ``workdir`` receives the input (and ``tune``'s tuning cache). A
    process that fails ends its runtime's measurement; its row carries the error.
    """
    threads = threads or get_num_threads()
    x = model_input(graph, batch)
    summary = graph.summary(input_shape=x.shape)
    report = AloneReport(source=model, onnx=onnx_path, model=graph.name, batch=batch, input_shape=list(x.shape),
                         dtype=x.dtype.name, macs=summary.total_macs, convolutions=len(conv_problems(graph, batch)),
                         threads=threads, rounds=rounds, calls=calls, timed_s=timed_s)
    input_path = os.path.join(workdir, f"input-{os.getpid()}-{batch}.npy")
    np.save(input_path, x)
    results = {name: AloneResult(name) for name in (contender, MODEL_PEER)}
    for i in range(rounds):
        for runtime in (contender, MODEL_PEER) if i % 2 == 0 else (MODEL_PEER, contender):
            row = results[runtime]
            if row.error:
                continue
            say(f"{graph.name}: round {i + 1}/{rounds}, {_label(runtime)} alone in a fresh process")
            row.add(measure_model_memory(runtime, model, batch, input_path, onnx_path=onnx_path, threads=threads,
                                         tuning_cache=os.path.join(workdir, "tuning.json"), calls=calls,
                                         timed_s=timed_s, count_loading=True))
    ort = results[MODEL_PEER]
    for row in results.values():
        if row.median_s and ort.median_s:
            row.ratio_to_ort = row.median_s / ort.median_s
        if row.peak_extra_bytes is not None and ort.peak_extra_bytes:
            row.memory_ratio_to_ort = row.peak_extra_bytes / ort.peak_extra_bytes
        if row.cpu_per_call_s and ort.cpu_per_call_s:
            row.cpu_ratio_to_ort = row.cpu_per_call_s / ort.cpu_per_call_s
    report.results = list(results.values())
    if per_layer:
        say(f"{graph.name}: per-layer times of {_label(contender)}, in this process")
        engine = None
        if contender != "auto":
            from ..core.engine import Engine

            engine = Engine(policy=contender, tuning_cache=os.path.join(workdir, "tuning.json"))
        report.layers, report.per_layer_total_s = layer_times(graph, x, engine=engine, timed_s=timed_s)
    return report


def _label(runtime: str) -> str:
    return "ONNX Runtime" if runtime == MODEL_PEER else f"convengine ({runtime})"


def layer_times(graph, x: np.ndarray, *, engine=None, plan=None, timed_s: float = TIMED_S,
                runs: Optional[int] = None) -> tuple[list[LayerTime], float]:
    """Each executor step's median seconds on ``x``, and the median whole run: ``(rows, total)``.

    The graph is prepared for ``x``'s batch (``engine`` or the default one, ``plan`` if given)
    and run twice untimed (compilation, per-batch preparation); then ``runs`` timed runs, or
    at least 5 and ``timed_s`` seconds' worth. A row per step in execution order; nodes that a
    convolution absorbed (batch norm, its epilogue) have no row of their own.
    """
    from ..core.engine import Engine
    from ..graph.executor import CompiledGraph

    import_heavy_libraries()
    compiled = CompiledGraph(graph, engine or Engine(), plan=plan, batch=x.shape[0])
    compiled.run(x)
    compiled.run(x)
    per_node: dict[str, list[float]] = {}
    totals: list[float] = []
    end = time.perf_counter() + timed_s
    while len(totals) < (runs or 5) or (runs is None and time.perf_counter() < end and len(totals) < 200):
        timings: dict[str, float] = {}
        start = time.perf_counter()
        compiled.run(x, timings=timings)
        totals.append(time.perf_counter() - start)
        for name, seconds in timings.items():
            per_node.setdefault(name, []).append(seconds)
    medians = {name: float(np.median(values)) for name, values in per_node.items()}
    steps = sum(medians.values()) or 1.0
    summary = {row.name: row for row in graph.summary(input_shape=x.shape).layers}
    backends, fused = compiled.layer_backends_for(x.shape[0]), compiled.fused
    rows = []
    for name, median in medians.items():
        row = summary.get(name)
        op = row.op if row else "?"
        rows.append(LayerTime(node=name, op=f"{op}+{fused[name]}" if name in fused else op,
                              output_shape=list(row.output_shape) if row else [], backend=backends.get(name),
                              median_s=median, share=median / steps, macs=row.macs if row else 0))
    return rows, float(np.median(totals))
