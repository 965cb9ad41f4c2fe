"""Issue 14's speed and memory targets: every torchvision CNN family's ONNX export, convengine against ONNX Runtime.

Each family's file (made by ``benchmarks/export_torchvision.py export``) goes through the
machinery of ``convengine bench --onnx FILE`` (:func:`convengine.bench.alone.bench_alone`):
convengine (``auto``) and ONNX Runtime (2 intra-op threads, the file itself), each alone in
fresh processes, alternating. The zoo's own ResNet-50 and AlexNet follow (convengine runs
convengine's definition, ONNX Runtime its ``to_onnx`` export, as ``benchmarks/model_vs_ort.py``).

The list is run ``--passes`` times over (all families, then all again), so that each
family is measured at two moments of a shared machine's load; a family's times are the
median over all its processes, its ratio the median of the passes' ratios, with their range.
The 1-minute load average is recorded around every measurement. Prints a Markdown table and
the targets (geometric mean <= 1.0x ORT, none above 1.25x, the zoo's ResNet-50 and AlexNet
<= 1.0x, peak memory <= 1.2x ORT's on each), and writes every report to ``--json``::

    python benchmarks/onnx_families.py                                  # batch 1, every family, 2 passes
    python benchmarks/onnx_families.py --batch 32 --only resnet50,mobilenet_v2,efficientnet_b0,densenet121 --zoo ""
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from typing import Optional

# isort: off
import convengine as ce  # before numpy: sets OPENBLAS_THREAD_TIMEOUT before BLAS loads, see docs/usage.md
# isort: on
import numpy as np

from convengine.bench.alone import AloneReport, bench_alone, load_onnx_file
from convengine.models import get_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling script with the list of families
from export_torchvision import DEFAULT_OUT, FAMILIES  # isort: skip

#: The targets of issue 14.
GEOMEAN_TARGET, EACH_TARGET, ZOO_TARGET, MEMORY_TARGET = 1.0, 1.25, 1.0, 1.2


def _say(text: str) -> None:
    print(f"  ... {text}", file=sys.stderr, flush=True)


def _measure(name: str, batch: int, rounds: int, threads: Optional[int], folder: str, workdir: str) -> dict:
    """One pass over one family (an ONNX file in ``folder``) or zoo model (``zoo:NAME``): its report as a dict."""
    load_before = os.getloadavg()[0]
    start = time.time()
    if name.startswith("zoo:"):
        graph = get_model(name[4:])
        onnx_path = os.path.join(workdir, f"{name[4:]}.onnx")
        with open(onnx_path, "wb") as f:
            f.write(ce.to_onnx(graph).SerializeToString())
        report = bench_alone(name[4:], graph, onnx_path, batch=batch, rounds=rounds, threads=threads, workdir=workdir,
                             say=_say)
    else:
        path = os.path.join(folder, f"{name}.onnx")
        report = bench_alone(path, load_onnx_file(path, batch), path, batch=batch, rounds=rounds, threads=threads,
                             workdir=workdir, say=_say)
    return {"name": name, "load_before": load_before, "load_after": os.getloadavg()[0],
            "started": time.strftime("%H:%M:%S", time.localtime(start)), "seconds": time.time() - start,
            "report": report.to_dict()}


def summarise(runs: list[dict]) -> list[dict]:
    """One row per model over its passes: pooled process medians, the passes' ratios (median and range)."""
    rows = []
    for name in dict.fromkeys(r["name"] for r in runs):
        reports = [AloneReport.from_dict(r["report"]) for r in runs if r["name"] == name]
        loads = [v for r in runs if r["name"] == name for v in (r["load_before"], r["load_after"])]
        row = {"name": name, "passes": len(reports), "load_min": min(loads), "load_max": max(loads), "error": None}
        ours = [rep.convengine for rep in reports]
        theirs = [rep.result("peer:onnxruntime") for rep in reports]
        failed = [r.error for r in ours + theirs if r.error]
        if failed or any(r.median_s is None for r in ours + theirs):
            row["error"] = failed[0] if failed else "no timing"
            rows.append(row)
            continue
        for key, results in (("ours", ours), ("ort", theirs)):
            medians = [v for r in results for v in r.process_medians_s]
            peaks = [v for r in results for v in r.process_peaks_bytes]
            row[key] = {"median_s": float(np.median(medians)), "fastest_s": min(medians), "slowest_s": max(medians),
                        "processes": len(medians), "peak_bytes": int(np.median(peaks)),
                        "cpu_s": float(np.median([v for r in results for v in r.process_cpu_s]))}
            loads = [v for r in results for v in r.process_load_peaks_bytes if v is not None]
            row[key]["load_peak_bytes"] = int(np.median(loads)) if loads else None
        ratios = [r.ratio_to_ort for r in ours]
        row.update(ratio=float(np.median(ratios)), ratio_min=min(ratios), ratio_max=max(ratios),
                   cpu_ratio=float(np.median([r.cpu_ratio_to_ort for r in ours])),
                   memory_ratio=row["ours"]["peak_bytes"] / row["ort"]["peak_bytes"],
                   backends=ours[-1].backends)
        rows.append(row)
    return rows


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def table(rows: list[dict], batch: int) -> str:
    def ms(value: float) -> str:
        return f"{value * 1e3:.1f}" if value < 10 else f"{value * 1e3:.0f}"

    lines = [f"| model (batch {batch}) | convengine ms (fastest-slowest) | ORT ms (fastest-slowest) | ratio (passes) "
             "| CPU-time ratio | peak MiB convengine / ORT | memory ratio | convengine's loading peak MiB | load avg |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['name']} | failed: {r['error'][:100]} | | | | | | | |")
            continue
        o, t = r["ours"], r["ort"]
        lines.append(f"| {r['name']} | {ms(o['median_s'])} ({ms(o['fastest_s'])}-{ms(o['slowest_s'])}) "
                     f"| {ms(t['median_s'])} ({ms(t['fastest_s'])}-{ms(t['slowest_s'])}) "
                     f"| **{r['ratio']:.2f}x** ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | {r['cpu_ratio']:.2f}x "
                     f"| {o['peak_bytes'] / 2**20:.0f} / {t['peak_bytes'] / 2**20:.0f} | {r['memory_ratio']:.2f}x "
                     f"| {'-' if o['load_peak_bytes'] is None else round(o['load_peak_bytes'] / 2**20)} "
                     f"| {r['load_min']:.1f}-{r['load_max']:.1f} |")
    return "\n".join(lines)


def targets(rows: list[dict], batch: int) -> list[str]:
    """The issue's targets, each with the measured value and whether it is met."""
    families = [r for r in rows if not r["name"].startswith("zoo:") and not r["error"]]
    zoo = [r for r in rows if r["name"].startswith("zoo:") and not r["error"]]
    failed = [r["name"] for r in rows if r["error"]]
    lines = []
    if families:
        g = geomean(r["ratio"] for r in families)
        lines.append(f"geometric mean over {len(families)} families: {g:.2f}x ORT (target <= {GEOMEAN_TARGET:.2f}x: "
                     f"{'met' if g <= GEOMEAN_TARGET else 'NOT met'}); CPU-time ratio "
                     f"{geomean(r['cpu_ratio'] for r in families):.2f}x")
        if batch == 1:
            over = [f"{r['name']} {r['ratio']:.2f}x" for r in families if r["ratio"] > EACH_TARGET]
            lines.append(f"families above {EACH_TARGET}x: {len(over)}" + (f" ({', '.join(over)})" if over else "")
                         + f" (target: none: {'met' if not over else 'NOT met'})")
    for r in zoo:
        lines.append(f"{r['name']}: {r['ratio']:.2f}x (target <= {ZOO_TARGET:.2f}x: "
                     f"{'met' if r['ratio'] <= ZOO_TARGET else 'NOT met'})")
    measured = families + zoo
    if measured:
        over = [f"{r['name']} {r['memory_ratio']:.2f}x" for r in measured if r["memory_ratio"] > MEMORY_TARGET]
        lines.append(f"peak memory above {MEMORY_TARGET}x ORT's: {len(over)} of {len(measured)}"
                     + (f" ({', '.join(over)})" if over else "") + f" (target: none: {'met' if not over else 'NOT met'}); "
                     f"geometric mean {geomean(r['memory_ratio'] for r in measured):.2f}x")
    if failed:
        lines.append(f"not measured: {', '.join(failed)}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder of the exported .onnx files (default {DEFAULT_OUT})")
    parser.add_argument("--only", default="", help="comma-separated families (default: all)")
    parser.add_argument("--zoo", default="resnet50,alexnet", help="zoo models to add (default resnet50,alexnet)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per runtime per pass (default 2)")
    parser.add_argument("--passes", type=int, default=2, help="times over the whole list (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="threads for both runtimes (default: convengine's)")
    parser.add_argument("--json", default=None, help="write every pass's report here (after each model)")
    parser.add_argument("--summary", default=None, help="only print the table of a --json file written before")
    args = parser.parse_args(argv)
    if args.summary:
        with open(args.summary) as f:
            saved = json.load(f)
        runs, batch = saved["runs"], saved["batch"]
    else:
        names = [n for n in args.only.split(",") if n] or list(FAMILIES)
        unknown = sorted(set(names) - set(FAMILIES))
        if unknown:
            parser.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
        missing = [n for n in names if not os.path.exists(os.path.join(args.out, f"{n}.onnx"))]
        if missing:
            parser.error(f"not exported to {args.out}: {', '.join(missing)} (benchmarks/export_torchvision.py export)")
        names += [f"zoo:{n}" for n in args.zoo.split(",") if n]
        runs, batch = [], args.batch
        with tempfile.TemporaryDirectory(prefix="onnx-families-") as workdir:
            for i in range(args.passes):
                for name in names:
                    _say(f"pass {i + 1}/{args.passes}: {name}, batch {batch}, load average {os.getloadavg()[0]:.1f}")
                    try:
                        runs.append(_measure(name, batch, args.rounds, args.threads, args.out, workdir))
                    except Exception as exc:  # a family that does not load stays in the table, with why
                        runs.append({"name": name, "error": f"{type(exc).__name__}: {exc}".splitlines()[0],
                                     "load_before": os.getloadavg()[0], "load_after": os.getloadavg()[0]})
                    if args.json:
                        with open(args.json, "w") as f:
                            json.dump({"batch": batch, "runs": runs}, f, indent=1)
    ok = [r for r in runs if "report" in r]
    rows = summarise(ok) + [{"name": r["name"], "error": r["error"]} for r in runs if "report" not in r]
    print(table(rows, batch))
    print()
    for line in targets(rows, batch):
        print(f"- {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
