"""``convengine bench``: each backend's time on named layers, as a ratio to the fastest peer.

For every selected layer (:mod:`convengine.layers`), every available backend that supports
it, the engine's own choice (``auto``), and the peers that are installed
(``torch.nn.functional.conv2d``, ONNX Runtime) are prepared, warmed, and timed in
interleaved rounds (:func:`convengine.bench.compare`); the report gives each one's median
time, its ratio to the fastest peer measured in the same run, its achieved GFLOP/s and its
share of the machine's measured GEMM rate, the practical limit. When every layer of a model
is selected, a model total follows: the layer times weighted by how often the model runs
each shape.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from .cli import command


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _shape(text: str):
    """``C,H,W:O,KH,KW[:STRIDE[:PADDING]]`` as an unnamed :class:`~convengine.layers.LayerSpec`."""
    from .layers import LayerSpec

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
    from .layers import SETS

    parser.add_argument("--layer", action="append", default=[], metavar="NAME",
                        help="a layer by name, e.g. resnet50.layer1.conv2 (repeatable); see --list")
    parser.add_argument("--set", action="append", default=[], dest="sets", choices=tuple(SETS),
                        help="a named set of layers (repeatable); default: quick, unless --layer is given")
    parser.add_argument("--shape", action="append", default=[], type=_shape, metavar="C,H,W:O,KH,KW[:S[:P]]",
                        help="an ad-hoc layer: input channels and size, output channels and kernel size, "
                             "optional stride and padding, e.g. 256,56,56:64,1,1 (repeatable)")
    parser.add_argument("--batch", type=_positive_int, default=1, help="images per call (default 1)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="threads for every contender (default: convengine's setting, i.e. the usable cores)")
    parser.add_argument("--rounds", type=_positive_int, default=7, help="interleaved timing rounds (default 7)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--backend", action="append", default=[], metavar="NAME",
                        help="time only these backends (repeatable); peers and auto are always timed")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of tables")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--list", action="store_true", help="list the layer names and sets, then exit")


def _short(reason: Optional[str], limit: int = 90) -> str:
    """The first line (and first clause) of a reason, cut to ``limit`` characters."""
    text = reason.splitlines()[0].split("; ")[0] if reason else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    from . import bench
    from .engine import Engine
    from .plugins import default_registry

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
    peers, why_not = bench.available_peers(problem, x, w, b)
    skipped.update(why_not)
    return executors, peers, skipped


def _model_totals(layer_reports: list[dict]) -> list[dict]:
    """Per model whose every layer was run: each contender's total, weighting layers by ``count``."""
    from .layers import SETS

    by_name = {r["layer"]: r for r in layer_reports}
    totals = []
    for model in ("resnet50", "alexnet"):
        names = SETS[model]
        if not all(n in by_name for n in names):
            continue
        reports = [by_name[n] for n in names]
        flops = sum(r["flops"] * r["count"] for r in reports)

        def total(pick) -> Optional[float]:
            seconds = 0.0
            for r in reports:
                value = pick(r)
                if value is None:
                    return None
                seconds += r["count"] * value
            return seconds

        def median_of(name):
            return lambda r: next((t["median_s"] for t in r["results"] if t["contender"] == name), None)

        def best_of(kind):
            def pick(r):
                times = [t["median_s"] for t in r["results"]
                         if t["kind"] == kind and t["median_s"] and not t["contender"].startswith("auto")]
                return min(times) if times else None
            return pick

        names_seen = list(dict.fromkeys(t["contender"] for r in reports for t in r["results"]
                                        if not t["contender"].startswith("auto")))
        rows = [(name, next(t["kind"] for r in reports for t in r["results"] if t["contender"] == name),
                 total(median_of(name))) for name in names_seen]
        rows.append(("auto", "backend", total(lambda r: next((t["median_s"] for t in r["results"]
                                                               if t["contender"].startswith("auto")), None))))
        rows.append(("best backend per layer", "backend", total(best_of("backend"))))
        peer_totals = [s for _, kind, s in rows if kind == "peer" and s]
        reference = min(peer_totals) if peer_totals else None
        totals.append({
            "model": model, "layers": len(names), "convolutions": sum(r["count"] for r in reports), "flops": flops,
            "results": [{"contender": name, "kind": kind, "total_s": s,
                         "ratio_to_peer": (s / reference) if (s and reference) else None,
                         "gflops": (flops / s / 1e9) if s else None}
                        for name, kind, s in rows],
        })
    return totals


def _format_totals(total: dict, gemm: float) -> str:
    lines = [f"{total['model']}: all {total['convolutions']} convolutions ({total['layers']} distinct shapes, "
             f"{total['flops'] / 1e9:.2f} GFLOP), layer medians weighted by occurrence"]
    rows = [("contender", "total", "vs peer", "GFLOP/s", "of GEMM")]
    for t in total["results"]:
        if t["total_s"] is None:
            rows.append((t["contender"], "-", "-", "-", "(not every layer ran)"))
            continue
        ratio = f"{t['ratio_to_peer']:.2f}x" if t["ratio_to_peer"] else "-"
        rows.append((t["contender"], f"{t['total_s'] * 1e3:.2f} ms", ratio, f"{t['gflops']:.1f}",
                     f"{t['gflops'] * 1e9 / gemm:.0%}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


@command("bench", "time every backend on named layers (ResNet-50, AlexNet, the course's examples) against torch and ONNX Runtime",
         _bench_args)
def _bench(args: argparse.Namespace) -> int:
    from . import bench, list_backends
    from .costmodel import measure_gemm_flops
    from .layers import LAYERS, SETS, select
    from .threads import get_num_threads, set_num_threads

    if args.list:
        for spec in LAYERS:
            problem = spec.problem(1)
            print(f"{spec.name:30s} {str(spec.input_shape):18s} -> {str(problem.output_shape[1:]):18s} "
                  f"kernel {spec.kernel[0]}x{spec.kernel[1]}  x{spec.count}")
        for name, members in SETS.items():
            print(f"--set {name}: {len(members)} layers")
        return 0
    try:
        specs = select(args.layer, args.sets or ([] if args.layer or args.shape else ["quick"])) + tuple(args.shape)
    except KeyError as exc:
        print(f"convengine bench: error: {exc.args[0]}", file=sys.stderr)
        return 2
    infos = list_backends()
    known = {i.name: i for i in infos}
    for name in args.backend:
        if name not in known:
            print(f"convengine bench: error: unknown backend {name!r}; registered: {', '.join(known)}", file=sys.stderr)
            return 2
    wanted = [i for i in infos if not args.backend or i.name in args.backend]
    unavailable = {i.name: i.reason if not i.available else bench.simulated(i.device)
                   for i in wanted if not i.available or bench.simulated(i.device)}
    backend_names = [i.name for i in wanted if i.name not in unavailable]

    if args.threads:
        set_num_threads(args.threads)
    threads = get_num_threads()
    gemm = measure_gemm_flops(args.dtype)
    header = [f"convengine bench: {len(specs)} layer{'s' if len(specs) != 1 else ''}, batch {args.batch}, "
              f"{args.dtype}, {threads} thread{'s' if threads != 1 else ''}, median of {args.rounds} interleaved rounds",
              f"practical limit: numpy GEMM {gemm / 1e9:.1f} GFLOP/s ({args.dtype}, measured now); "
              f"'vs peer' is the ratio to the fastest peer on the same layer in this run"]
    header += [f"not run: {name} ({_short(reason, 70)})" for name, reason in unavailable.items()]

    items, emit = _progress(specs, enabled=len(specs) > 1 and not args.no_progress)
    if not args.json:
        emit("\n".join(header))
    reports = []
    for spec in items:
        problem = spec.problem(args.batch, args.dtype)
        x, w, b = bench.problem_data(problem)
        executors, peers, skipped = _contenders(problem, spec, backend_names, x, w, b)
        timings = bench.compare(problem, executors, peers, x, rounds=args.rounds)
        timings += [bench.Timing(name, "peer" if name in bench.PEERS else "backend", None, problem.flops, reason)
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
            shown = [bench.Timing(t.name, t.kind, t.median_s, t.flops, _short(t.error, 70)) for t in timings]
            emit(f"\n{spec.name}" + (f"  (x{spec.count} in {spec.model})" if spec.count > 1 else ""))
            emit(bench.format_table(problem, shown, gemm))
    totals = _model_totals(reports)
    if args.json:
        print(json.dumps({
            "batch": args.batch, "dtype": args.dtype, "threads": threads, "rounds": args.rounds,
            "gemm_flops": gemm, "unavailable": unavailable, "layers": reports, "models": totals,
        }, indent=2))
        return 0
    for total in totals:
        print()
        print(_format_totals(total, gemm))
    return 0
