"""``convengine run``, ``summary`` and ``tune``: whole models from the zoo or from ONNX files."""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from ..models import MODELS
from ..models.loading import load_model
from ..runtime.tables import format_table
from . import arguments
from .commands import command


def _model_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=f"a zoo model ({', '.join(MODELS)}) or an .onnx file")


def _engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", type=arguments.policy, default="auto",
                        help="auto (cost model, default), tune (measure per layer), a backend name, "
                             "or a comma-separated preference list")
    parser.add_argument("--backend", help="run every convolution on this backend (same as --policy NAME)")
    parser.add_argument("--max-rel-error", type=float, help="accuracy budget; e.g. 1e-6 keeps lossy backends out")
    arguments.add_weight_budget(parser)
    parser.add_argument("--threads", type=int, help="threads for every backend (default: usable cores)")


def _engine(args):
    from ..core.engine import Engine
    from ..runtime.threads import set_num_threads

    if args.threads:
        set_num_threads(args.threads)
    budget = arguments.weight_budget(args)
    return Engine(policy=args.backend or args.policy, max_rel_error=args.max_rel_error, **budget)


def _input(graph, batch: int, seed: int = 0):
    if len(graph.inputs) != 1:
        raise ValueError(f"model has {len(graph.inputs)} inputs; the CLI runs single-input models")
    spec = graph.inputs[0]
    shape = tuple(batch if d is None else d for d in spec.shape)
    return np.random.default_rng(seed).standard_normal(shape).astype(spec.dtype)


# -- summary ------------------------------------------------------------------------------------


def _summary_args(parser):
    _model_arg(parser)
    parser.add_argument("--input-shape", type=arguments.ints, metavar="C,H,W or N,C,H,W",
                        help="input shape to count for (default: the model's natural input, batch 1)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


@command("summary", "print a model's per-layer parameter and MAC table", _summary_args)
def _summary(args) -> int:
    shape = args.input_shape
    if shape is not None and len(shape) not in (3, 4):
        raise ValueError(f"--input-shape must be C,H,W or N,C,H,W, got {','.join(map(str, shape))}")
    batch = shape[0] if shape and len(shape) == 4 else 1
    graph = load_model(args.model, tuple(shape[-3:]) if shape else None)
    summary = graph.summary(input_shape=(batch,) + tuple(graph.inputs[0].shape[1:]))
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary)
    return 0


# -- run ----------------------------------------------------------------------------------------


def _run_args(parser):
    _model_arg(parser)
    parser.add_argument("--batch", type=int, default=1)
    _engine_args(parser)
    parser.add_argument("--plan", help="a plan file from `convengine tune` fixing each layer's backend")
    parser.add_argument("--force", action="store_true", help="use a plan tuned on other hardware")
    parser.add_argument("--repeat", type=int, default=5, help="timed whole-model runs (median reported)")


@command("run", "run a model, printing each layer's backend and time and the whole-model time", _run_args)
def _run(args) -> int:
    from ..graph.plan import PlanSet
    from .info import backends as print_backends

    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    print("backends on this machine:")
    print_backends(argparse.Namespace(json=False))
    engine = _engine(args)
    graph = load_model(args.model)
    plan = None
    if args.plan:  # a one-plan file, or a plans file with a plan per hardware: say which plan runs
        choice = PlanSet.read(args.plan).choose(graph, force=args.force, backends=engine.registry.names())
        plan = choice.plan
        print(f"plan: {choice.message}")
    from ..graph.executor import CompiledGraph

    start = time.perf_counter()
    compiled = CompiledGraph(graph, engine, plan=plan, progress=True)
    x = _input(graph, args.batch)
    compiled.run(x)  # warm-up: JIT compilation, per-batch preparation
    prepare_s = time.perf_counter() - start
    per_layer: dict[str, list[float]] = {}
    totals = []
    for _ in range(max(1, args.repeat)):
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        y = compiled.run(x, timings=timings)
        totals.append(time.perf_counter() - t0)
        for name, seconds in timings.items():
            per_layer.setdefault(name, []).append(seconds)
    summary = graph.summary(input_shape=x.shape)
    backends = compiled.layer_backends_for(args.batch)
    layouts = {name: "->".join(layout) for name, layout in compiled.layer_layouts.items()}
    fused = compiled.fused
    print()
    rows = []
    for row in summary.layers:
        if row.name not in per_layer:
            continue  # folded into the preceding convolution (batch norm, or its epilogue)
        median = float(np.median(per_layer[row.name]))
        rate = f"{row.macs / median / 1e9:.1f}" if row.macs and median > 0 else ""
        op = f"{row.op}+{fused[row.name]}" if row.name in fused else row.op
        rows.append((row.name, op, "x".join(map(str, row.output_shape)), backends.get(row.name, "-"),
                     layouts.get(row.name, "-"), f"{median * 1e3:.3f}", rate))
    print(format_table(("layer", "op", "output shape", "backend", "layouts", "median ms", "GMAC/s"), rows))
    conversions = [s.node.name for s in compiled.steps if s.node.op == "LayoutConversion"]
    if conversions:
        seconds = sum(float(np.median(per_layer[name])) for name in conversions)
        print(f"layout conversions (a blocked tensor's NCHW copy for another reader): {len(conversions)}, "
              f"{seconds * 1e3:.3f} ms")
    outputs = y if isinstance(y, dict) else {graph.outputs[0]: y}
    print()
    print(f"model {graph.name}, batch {args.batch}, policy {engine.policy if plan is None else 'plan ' + args.plan}")
    print(f"prepare + first run (incl. JIT compilation): {prepare_s:.2f} s; kernels: {compiled.precompiled}")
    print(f"whole model: median {np.median(totals) * 1e3:.2f} ms over {len(totals)} runs "
          f"({summary.total_macs / 1e9:.2f} GMACs, {summary.total_macs / np.median(totals) / 1e9:.1f} GMAC/s)")
    for name, value in outputs.items():
        print(f"output {name}: shape {value.shape}, dtype {value.dtype}, finite {bool(np.isfinite(value).all())}")
    return 0


# -- tune ---------------------------------------------------------------------------------------


def _tune_args(parser):
    _model_arg(parser)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--output", "-o", help="plan file to write (default: MODEL-plan.json, or MODEL-plans.json "
                                               "with --scheduler)")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of measurement per layer")
    parser.add_argument("--max-rel-error", type=float, help="accuracy budget; e.g. 1e-6 keeps lossy backends out")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="tune on every kind of machine of a Dask cluster (needs the dask extra) and write one "
                             "plans file with a plan per hardware fingerprint")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the scheduler (with --scheduler)")


def _backend_counts(plan) -> str:
    counts: dict[str, int] = {}
    for backend in plan.layers.values():
        counts[backend] = counts.get(backend, 0) + 1
    return ", ".join(f"{b} x{n}" for b, n in sorted(counts.items()))


@command("tune", "measure every backend on each layer of a model and write the plan", _tune_args)
def _tune(args) -> int:
    from ..graph.plan import tune_plan

    stem = os.path.splitext(os.path.basename(args.model))[0]
    if args.scheduler:
        return _tune_fleet(args, args.output or f"{stem}-plans.json")
    graph = load_model(args.model)
    plan = tune_plan(graph, batch=args.batch, budget_s=args.budget, max_rel_error=args.max_rel_error, progress=True)
    output = args.output or f"{stem}-plan.json"
    plan.save(output)
    print(f"tuned {len(plan.layers)} convolutions of {graph.name} at batch {args.batch}: {_backend_counts(plan)}")
    print(f"plan written to {output}")
    return 0


def _tune_fleet(args, output: str) -> int:
    from .. import dask as ce_dask  # ImportError (the extra is missing): one line from main()

    graph = load_model(args.model)
    with ce_dask.connect(args.scheduler, timeout=args.timeout) as client:
        plans = ce_dask.tune(graph, client, batch=args.batch, budget_s=args.budget, max_rel_error=args.max_rel_error)
    plans.save(output)
    for plan in plans.plans.values():
        print(f"{plan.describe()}: {len(plan.layers)} convolutions of {graph.name} at batch {args.batch}: "
              f"{_backend_counts(plan)}")
    kinds = len(plans.plans)
    print(f"plans for {kinds} kind{'s' * (kinds != 1)} of machine written to {output}")
    return 0
