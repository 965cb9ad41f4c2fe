"""``convengine bench``: each backend's time on named layers or whole models, as a ratio to the peers.

For every selected layer (:mod:`convengine.bench.catalogue`), every available backend that supports
it, the engine's own choice (``auto``), and the peers that are installed
(``torch.nn.functional.conv2d``, ONNX Runtime) are prepared, warmed, and timed in
interleaved rounds (:func:`convengine.bench.compare.compare`); the report gives each one's median
time, its ratio to the fastest peer measured in the same run, its achieved GFLOP/s and its
share of the machine's measured GEMM rate, the practical limit. When every layer of a model
is selected, a model total follows: the layer times weighted by how often the model runs
each shape.

With ``--model`` (a zoo name or an ``.onnx`` file), the whole graph runs through the
executor under ``auto``, ``tune`` and each single backend that runs every layer, against
ONNX Runtime on ``to_onnx(graph)`` (:func:`convengine.bench.models.bench_model`): median latency,
ratio to ONNX Runtime, GMAC/s, the first call (preparation + one run) and, with
``--memory``, each contender's peak extra RSS and cold first call in a fresh process.

With ``--onnx FILE``, convengine (``auto``) and ONNX Runtime run the file each alone in fresh
processes, alternating (:func:`convengine.bench.alone.bench_alone`): median latency with the
spread over the processes, the ratio to ONNX Runtime, each one's peak extra RSS, and with
``--per-layer`` convengine's time per executor step and the backend of each convolution.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from typing import Optional

from ..runtime import threads as threads_module
from .commands import command


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _shape(text: str):
    """``C,H,W:O,KH,KW[:STRIDE[:PADDING]]`` as an unnamed :class:`~convengine.bench.catalogue.LayerSpec`."""
    from ..bench.catalogue import LayerSpec

    parts = text.split(":")
    try:
        if len(parts) not in (2, 3, 4):
            raise ValueError
        c, h, w = (int(v) for v in parts[0].split(","))
        o, kh, kw = (int(v) for v in parts[1].split(","))
        stride = int(parts[2]) if len(parts) > 2 else 1
        padding = int(parts[3]) if len(parts) > 3 else 0
        spec = LayerSpec(f"shape:{text}", c, h, w, o, (kh, kw), stride=stride, padding=padding)
        spec.problem(1)  # validate now
    except ValueError as exc:
        detail = f": {exc}" if str(exc) else ""
        raise argparse.ArgumentTypeError(f"expected C,H,W:O,KH,KW[:STRIDE[:PADDING]], got {text!r}{detail}") from None
    return spec


def _bench_args(parser: argparse.ArgumentParser) -> None:
    from ..bench.catalogue import SETS

    parser.add_argument("--layer", action="append", default=[], metavar="NAME",
                        help="a layer by name, e.g. resnet50.layer1.conv2 (repeatable); see --list")
    parser.add_argument("--set", action="append", default=[], dest="sets", choices=tuple(SETS),
                        help="a named set of layers (repeatable); default: quick, unless --layer is given")
    parser.add_argument("--shape", action="append", default=[], type=_shape, metavar="C,H,W:O,KH,KW[:S[:P]]",
                        help="an ad-hoc layer: input channels and size, output channels and kernel size, "
                             "optional stride and padding, e.g. 256,56,56:64,1,1 (repeatable)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME|FILE.onnx",
                        help="time a whole model through the executor (repeatable): a zoo name (lenet, alexnet, "
                             "resnet18, resnet50, densenet121, ...) or an .onnx file; against ONNX Runtime")
    parser.add_argument("--onnx", action="append", default=[], metavar="FILE",
                        help="an ONNX model file: convengine (auto) against ONNX Runtime, each alone in fresh "
                             "processes, alternating; --rounds processes each (repeatable)")
    parser.add_argument("--per-layer", action="store_true",
                        help="with --onnx: also convengine's time per executor step and each convolution's backend")
    parser.add_argument("--memory", action="store_true",
                        help="with --model: also measure each contender's peak extra RSS and cold first call, "
                             "each in a fresh process (slower)")
    parser.add_argument("--no-tune", action="store_true",
                        help="with --model: leave out the 'tune' policy (tuning a large model takes minutes)")
    parser.add_argument("--max-run-s", type=float, default=10.0, metavar="SECONDS",
                        help="with --model: skip single backends the cost model predicts slower than this per run, "
                             "and do not time further a contender whose first run took longer (default 10; "
                             "0 = no limit; --backend NAME lifts the prediction rule for NAME)")
    parser.add_argument("--batch", type=_positive_int, default=1, help="images per call (default 1)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="threads for every contender (default: convengine's setting, i.e. the usable cores)")
    parser.add_argument("--rounds", type=_positive_int, default=7,
                        help="interleaved timing rounds; with --onnx, fresh processes per runtime (default 7)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="layers' dtype (default float32); a --model runs in its own dtype")
    parser.add_argument("--backend", action="append", default=[], metavar="NAME",
                        help="time only these backends (repeatable); peers and auto are always timed")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--list", action="store_true", help="list the layer names and sets, then exit")


def _progress(items, enabled: bool):
    """``items`` wrapped in a tqdm bar on stderr (when enabled and tqdm is installed)."""
    if not enabled:
        return items, print
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency; degrade to no bar
        return items, print
    bar = tqdm(items, file=sys.stderr, unit="layer", desc="convengine bench", leave=False, dynamic_ncols=True)
    return bar, lambda text="": tqdm.write(text, file=sys.stdout)


def _contenders(problem, spec, backend_names, x, w, b):
    """Prepared executors by name, and the backends/peers that cannot run (name -> reason)."""
    from ..bench.peers import available_peers
    from ..core.engine import Engine
    from ..core.registry import default_registry

    executors, skipped = {}, {}
    registry = default_registry()
    for name in backend_names:
        try:
            declined = registry.get(name).backend.supports(problem)
        except Exception as exc:  # a plugin's check must not end the run
            declined = f"supports() raised {type(exc).__name__}: {exc}"
        if declined:
            skipped[name] = f"unsupported: {declined}"
            continue
        try:
            executors[name] = Engine(policy=name).prepare(w, b, input_shape=problem.input_shape, **spec.conv_kwargs())
        except Exception as exc:
            skipped[name] = f"prepare failed: {type(exc).__name__}: {exc}"
    auto = Engine().prepare(w, b, input_shape=problem.input_shape, **spec.conv_kwargs())
    executors[f"auto ({auto.backend})"] = auto
    peers, why_not = available_peers(problem, x, w, b)
    skipped.update(why_not)
    return executors, peers, skipped


def _refresh_profile() -> None:
    """Re-measure the cost model's machine profile (best of stored and now), so 'auto' here and later
    does not decide on rates measured while the machine was busy."""
    from ..core.costmodel import refresh_machine_profile
    from ..core.engine import default_engine

    refresh_machine_profile(default_engine().tuning_cache)


@command("bench", "time every backend on named layers (ResNet-50, AlexNet, the course's examples) against torch and ONNX Runtime",
         _bench_args)
def _bench(args: argparse.Namespace) -> int:
    from ..bench import MEMORY_METHOD, PEERS, SETTLE_S, Timing, compare, model_totals, problem_data, simulated
    from ..bench.catalogue import LAYERS, SETS, select
    from ..bench.report import cut, format_layer, format_totals
    from ..core.costmodel import measure_gemm_flops
    from ..core.registry import default_registry, list_backends
    from ..runtime.tables import format_table
    from ..runtime.threads import get_num_threads, set_num_threads

    if args.list:
        rows = [(spec.name, spec.input_shape, spec.problem(1).output_shape[1:], f"{spec.kernel[0]}x{spec.kernel[1]}",
                 f"x{spec.count}") for spec in LAYERS]
        print(format_table(("layer", "input", "output", "kernel", "count"), rows))
        for name, members in SETS.items():
            print(f"--set {name}: {len(members)} layers")
        return 0
    try:
        default_sets = [] if args.layer or args.shape or args.model or args.onnx else ["quick"]
        specs = select(args.layer, args.sets or default_sets) + tuple(args.shape)
    except KeyError as exc:
        print(f"convengine bench: error: {exc.args[0]}", file=sys.stderr)
        return 2
    problem = _check_models(args.model)
    if problem:
        print(f"convengine bench: error: {problem}", file=sys.stderr)
        return 2
    onnx_graphs, problem = _load_onnx_files(args.onnx, args.batch)
    if problem:
        print(f"convengine bench: error: {problem}", file=sys.stderr)
        return 2
    infos = list_backends()
    known = {i.name: i for i in infos}
    for name in args.backend:
        if name not in known:
            why = default_registry().why_not_registered(name)  # e.g. its plugin failed to import, and why
            print(f"convengine bench: error: backend {name!r} is not registered: {why}; registered: {', '.join(known)}",
                  file=sys.stderr)
            return 2
    wanted = [i for i in infos if not args.backend or i.name in args.backend]
    unavailable = {i.name: i.reason if not i.available else simulated(i.device)
                   for i in wanted if not i.available or simulated(i.device)}
    backend_names = [i.name for i in wanted if i.name not in unavailable]

    if args.threads:
        set_num_threads(args.threads)
    threads = get_num_threads()
    gemm = measure_gemm_flops(args.dtype)
    _refresh_profile()
    what = [f"{len(specs)} layer{'s' if len(specs) != 1 else ''}"] if specs else []
    what += [f"{len(args.model)} model{'s' if len(args.model) != 1 else ''}"] if args.model else []
    what += [f"{len(args.onnx)} ONNX file{'s' if len(args.onnx) != 1 else ''}"] if args.onnx else []
    header = [f"convengine bench: {' and '.join(what)}, batch {args.batch}, "
              + (f"{args.dtype}, " if specs else "")
              + f"{threads} thread{'s' if threads != 1 else ''}"
              + (f", median of {args.rounds} interleaved rounds" if specs or args.model else ""),
              f"practical limit: numpy GEMM {gemm / 1e9:.1f} GFLOP/s ({args.dtype}, measured now)"
              + ("; 'vs peer' is the ratio to the fastest peer on the same layer in this run" if specs else "")]
    if specs or args.model:
        header.append(f"each sample starts {SETTLE_S:g} s after the previous contender's, once BLAS threads that "
                      "spin after a call have gone to sleep")
    header += [f"not run: {name} ({cut(reason, 70, clause=True)})" for name, reason in unavailable.items()]
    if specs and threads_module.WAIT_POLICY_SET_HERE and importlib.util.find_spec("torch") is not None:
        header.append("peer:torch runs with OMP_WAIT_POLICY=PASSIVE, set by convengine at import: alone, torch's "
                      "64->64 3x3 measured ~12% slower so (docs/performance.md); prefer the ORT ratios")
    if args.model:
        header += _model_notes(args)
    if args.onnx:
        header.append("ONNX files: convengine (auto) and ONNX Runtime on the file, each alone in --rounds fresh "
                      "processes, alternating; ONNX Runtime runs the file itself (CPU provider, default ORT_ENABLE_ALL "
                      "optimizations, sequential, no spinning); a process is timed after two calls (the first is its "
                      "'cold call'); "
                      "median of the processes' medians; CPU/call: the process's CPU time per call, all threads; "
                      "peak RSS: extra resident memory of loading the model, building the runtime and running it "
                      "twice in that process, after imports ('loading peak': the part while loading)")

    items, emit = _progress(specs, enabled=len(specs) > 1 and not args.no_progress)
    if not args.json:
        emit("\n".join(header))
    reports = []
    for spec in items:
        problem = spec.problem(args.batch, args.dtype)
        x, w, b = problem_data(problem)
        executors, peers, skipped = _contenders(problem, spec, backend_names, x, w, b)
        timings = compare(problem, executors, peers, x, rounds=args.rounds)
        timings += [Timing(name, "peer" if name in PEERS else "backend", None, problem.flops, reason)
                    for name, reason in skipped.items()]
        peer_times = [t.median_s for t in timings if t.kind == "peer" and t.median_s]
        reference = min(peer_times) if peer_times else None
        report = {
            "layer": spec.name, "count": spec.count, "problem": str(problem), "flops": problem.flops,
            "results": [{"contender": t.name, "kind": t.kind, "median_s": t.median_s,
                         "ratio_to_peer": (t.median_s / reference) if (t.median_s and reference) else None,
                         "gflops": t.gflops, "gemm_share": (t.gflops * 1e9 / gemm) if t.gflops else None,
                         "error": t.error} for t in timings],
        }
        reports.append(report)
        if not args.json:
            emit(f"\n{spec.name}" + (f"  (x{spec.count} in {spec.model})" if spec.count > 1 else ""))
            emit(format_layer(problem, timings, gemm))
    totals = model_totals(reports, SETS)
    if not args.json:
        for total in totals:
            print()
            print(format_totals(total, gemm))
    whole = []
    if args.model:
        whole = _bench_models(args, backend_names, gemm, print if not args.json else None)
    onnx_reports = _bench_onnx_files(args, onnx_graphs, print if not args.json else None)
    if args.json:
        print(json.dumps({
            "batch": args.batch, "dtype": args.dtype, "threads": threads, "rounds": args.rounds,
            "gemm_flops": gemm, "unavailable": unavailable, "layers": reports, "models": totals,
            "whole_models": [r.to_dict() for r in whole],
            "onnx_files": [r.to_dict() for r in onnx_reports],
            "memory_method": MEMORY_METHOD if args.memory and args.model else None,
        }, indent=2))
    return 0


# -- whole models -----------------------------------------------------------------------------


def _check_models(specs) -> Optional[str]:
    """Why a --model argument cannot be used (checked before anything is timed), else ``None``."""
    import os

    from ..models.loading import is_model_file

    for spec in specs:
        if is_model_file(spec):
            if not os.path.isfile(spec):
                return f"model file {spec!r} does not exist"
            continue
        from ..models import MODELS

        if spec not in MODELS:
            import difflib

            close = difflib.get_close_matches(spec, MODELS, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            return f"unknown model {spec!r} (not a zoo model nor an .onnx file); zoo: {', '.join(MODELS)}{hint}"
    return None


def _model_notes(args) -> list[str]:
    notes = ["whole models: every contender is prepared and run once (the 'first call': preparation, incl. Numba "
             "compilation or its cache load the first time this process uses a kernel, + one run), then timed; "
             "'vs ORT' is the ratio to ONNX Runtime running to_onnx(graph) on the same weights and input "
             "(CPU provider, default ORT_ENABLE_ALL optimizations, sequential, no spinning); peer:torch is not run "
             "on whole models (it would need a torch twin of the graph)"]
    if not args.no_tune:
        notes.append("tune: tuned before timing into a fresh tuning cache in a temporary directory (no stale "
                     "measurement reused); its first call is preparation from that cache")
    if args.memory:
        notes.append("peak RSS: extra resident memory of building + running the contender (twice) in a fresh "
                     "process, after imports and loading the model; 'cold call' is that process's first call")
    return notes


def _say(args):
    """Progress lines on stderr, or nothing with --no-progress."""
    if args.no_progress:
        return lambda text: None
    return lambda text: print(f"  ... {text}", file=sys.stderr, flush=True)


def _bench_models(args, backend_names, gemm, emit) -> list:
    """Run :func:`convengine.bench.models.bench_model` for every --model (its reports); print each table when ``emit``."""
    import tempfile

    from ..bench.models import bench_model
    from ..bench.report import format_model
    from ..models.loading import load_model

    say = _say(args)
    reports = []
    with tempfile.TemporaryDirectory(prefix="convengine-bench-") as workdir:
        for spec in args.model:
            graph = load_model(spec)
            report = bench_model(spec, graph, batch=args.batch, backends=backend_names, explicit=set(args.backend),
                                 rounds=args.rounds, tune=not args.no_tune, memory=args.memory,
                                 max_run_s=args.max_run_s or None, workdir=workdir, gemm_flops=gemm, say=say)
            del graph
            reports.append(report)
            if emit is not None:
                emit("")
                emit(format_model(report, memory=args.memory))
    return reports



# -- ONNX files, each runtime alone ------------------------------------------------------------


def _load_onnx_files(paths, batch: int) -> tuple[list, Optional[str]]:
    """Every --onnx file loaded and checked before anything is timed: ``(graphs, None)`` or ``([], why not)``."""
    from ..bench.alone import load_onnx_file
    from ..bench.peers import PeerUnavailable
    from ..graph.ir import GraphError

    graphs = []
    for path in paths:
        try:
            graphs.append(load_onnx_file(path, batch))
        except (FileNotFoundError, GraphError, PeerUnavailable, ValueError, ImportError) as exc:
            return [], str(exc)
    return graphs, None


def _bench_onnx_files(args, graphs, emit) -> list:
    """:func:`convengine.bench.alone.bench_alone` on every --onnx file (its reports); print each table when ``emit``."""
    import tempfile

    from ..bench.alone import bench_alone
    from ..bench.report import format_alone

    say = _say(args)
    reports = []
    with tempfile.TemporaryDirectory(prefix="convengine-bench-") as workdir:
        for path, graph in zip(args.onnx, graphs):
            report = bench_alone(path, graph, path, batch=args.batch, rounds=args.rounds, per_layer=args.per_layer,
                                 threads=args.threads, workdir=workdir, say=say)
            reports.append(report)
            if emit is not None:
                emit("")
                emit(format_alone(report))
    return reports
