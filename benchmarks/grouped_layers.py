"""Grouped and depthwise layers: convengine against ONNX Runtime and PyTorch, side by side, as ratios.

Every grouped convolution of MobileNetV2, EfficientNet-B0, ResNeXt-50 (32x4d) and
RegNetY-400MF (the catalogue's ``grouped`` set, :mod:`convengine.bench.catalogue`) at each
batch size: convengine's ``grouped`` backend (and the engine's own choice, ``auto``, when it
picks another), ``torch.nn.functional.conv2d`` and ONNX Runtime's ``Conv`` (a one-node
model), all with the same thread count (2 unless ``--threads``), prepared and warmed first,
then timed in alternating rounds in this one process (:func:`convengine.bench.compare`);
the median of the rounds is each one's time. Bias is on (ONNX exports fold batch norm into
it). Printed: one row per layer and batch with the ratios ours/ORT and ours/torch, then per
network the layer times weighted by how often the network runs each shape, and the
geometric means of the ratios.

    python benchmarks/grouped_layers.py                      # batch 1 and 32, every layer
    python benchmarks/grouped_layers.py --batch 1 --model mobilenet_v2 --rounds 5
    python benchmarks/grouped_layers.py --json > grouped.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict

# isort: off
import convengine as ce  # before numpy: sets OPENBLAS_THREAD_TIMEOUT before BLAS loads (docs/usage.md)
# isort: on
from convengine import bench
from convengine.bench.catalogue import SETS, layer

OURS = "grouped"
AUTO = "auto"


def _time_layer(spec, batch: int, rounds: int) -> dict:
    problem = spec.problem(batch)
    x, w, b = bench.problem_data(problem)
    params = spec.conv_kwargs()
    contenders = {OURS: ce.Engine(OURS).prepare(w, b, input_shape=problem.input_shape, **params)}
    auto = ce.Engine().prepare(w, b, input_shape=problem.input_shape, **params)
    if auto.backend != OURS:
        contenders[f"auto ({auto.backend})"] = auto
    peers, missing = bench.available_peers(problem, x, w, b)
    timings = {t.name: t.median_s for t in bench.compare(problem, contenders, peers, x, rounds=rounds)}
    timings[AUTO] = timings.pop(f"auto ({auto.backend})", timings[OURS])  # what a user gets: the engine's choice
    row = {"layer": spec.name, "model": spec.model, "count": spec.count, "batch": batch, "gflop": problem.flops / 1e9,
           "seconds": timings, "auto": auto.backend, "missing": missing}
    for peer, key in (("peer:onnxruntime", "vs_ort"), ("peer:torch", "vs_torch")):
        row[key] = timings[OURS] / timings[peer] if timings.get(peer) else None
        row[f"auto_{key}"] = timings[AUTO] / timings[peer] if timings.get(peer) else None
    return row


def _geomean(values) -> float | None:
    values = [v for v in values if v]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _ratio(value) -> str:
    return f"{value:.2f}" if value else "-"


def _print(rows: list[dict], threads: int) -> None:
    print(f"convengine {ce.__version__}, {threads} threads; times are medians of alternating rounds, ms; "
          f"'{OURS}' is the backend, 'auto' the engine's choice (named in the last column)")
    names = (OURS, AUTO, "peer:onnxruntime", "peer:torch")
    print(f"{'layer':52s} {'N':>3s} {OURS:>8s} {'auto':>8s} {'ORT':>8s} {'torch':>8s} {'/ORT':>6s} {'/torch':>6s} "
          f"{'auto/ORT':>8s} {'auto/torch':>10s}  auto")
    for r in rows:
        ms = {name: f"{r['seconds'][name] * 1e3:8.3f}" if r["seconds"].get(name) else f"{'-':>8s}" for name in names}
        print(f"{r['layer']:52s} {r['batch']:3d} {ms[OURS]} {ms[AUTO]} {ms['peer:onnxruntime']} {ms['peer:torch']} "
              f"{_ratio(r['vs_ort']):>6s} {_ratio(r['vs_torch']):>6s} {_ratio(r['auto_vs_ort']):>8s} "
              f"{_ratio(r['auto_vs_torch']):>10s}  {r['auto']}")
    print("\nper network: layer times weighted by occurrence (ratios of the totals), and geometric means of the layer ratios")
    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["batch"])].append(r)
    for (model, batch), members in groups.items():
        totals = {name: sum(r["count"] * r["seconds"][name] for r in members) if all(r["seconds"].get(name) for r in members)
                  else None for name in names}
        parts = []
        for mine in (OURS, AUTO):
            ort, torch = totals["peer:onnxruntime"], totals["peer:torch"]
            prefix = "" if mine == OURS else "auto_"
            parts.append(f"{mine} {totals[mine] * 1e3:8.2f} ms: /ORT {_ratio(totals[mine] / ort if ort else None)}, "
                         f"/torch {_ratio(totals[mine] / torch if torch else None)} (geomean per layer "
                         f"{_ratio(_geomean(r[prefix + 'vs_ort'] for r in members))}, "
                         f"{_ratio(_geomean(r[prefix + 'vs_torch'] for r in members))})")
        print(f"  {model:18s} N={batch:<3d} " + "; ".join(parts))
    for batch in sorted({r["batch"] for r in rows}):
        members = [r for r in rows if r["batch"] == batch]
        for mine in (OURS, AUTO):
            prefix = "" if mine == OURS else "auto_"
            print(f"  all layers N={batch}, {mine}: geomean /ORT {_ratio(_geomean(r[prefix + 'vs_ort'] for r in members))}, "
                  f"/torch {_ratio(_geomean(r[prefix + 'vs_torch'] for r in members))}; "
                  f"worst /ORT {_ratio(max((r[prefix + 'vs_ort'] or 0) for r in members))}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, action="append", help="batch size (repeatable; default 1 and 32)")
    parser.add_argument("--model", action="append", choices=sorted({layer(n).model for n in SETS["grouped"]}),
                        help="only this network's layers (repeatable)")
    parser.add_argument("--layer", action="append", help="only this layer (repeatable)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating timing rounds (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every contender (default 2)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    ce.set_num_threads(args.threads)
    bench.import_heavy_libraries()
    specs = [layer(n) for n in SETS["grouped"]
             if (not args.model or layer(n).model in args.model) and (not args.layer or n in args.layer)]
    if not specs:
        parser.error("no layer selected")
    rows = []
    for batch in args.batch or [1, 32]:
        for spec in specs:
            rows.append(_time_layer(spec, batch, args.rounds))
            if not args.json:
                print(f"  {spec.name} N={batch}: ours/ORT {_ratio(rows[-1]['vs_ort'])}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        _print(rows, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
