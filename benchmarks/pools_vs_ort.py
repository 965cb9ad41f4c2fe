"""The pooling steps of whole models, convengine beside ONNX Runtime: ``per_node_vs_ort.py`` restricted to pools.

A pool alone would be a different measurement: inside a model ORT pools in its NCHWc layout
straight after a convolution, and each runtime's pool reads what that convolution just
wrote (from whichever core's cache). So every model runs whole, ``--repeats`` times with the
models interleaved (each repeat a fresh :func:`per_node_vs_ort.compare`: ORT profiled, then
convengine's steps timed), and per MaxPool/AveragePool step this prints the median over the
repeats of both times and of their ratio, then the per-op sums per model, with the load
averages seen.

    python benchmarks/pools_vs_ort.py /tmp/tv_onnx/{inception_v3,googlenet,resnet50,densenet121}.onnx --repeats 2
"""

from __future__ import annotations

import argparse
import glob
import os
from collections import defaultdict

# isort: off
import convengine  # noqa: F401  (before numpy: sets OPENBLAS_THREAD_TIMEOUT before BLAS loads, docs/usage.md)
# isort: on
import numpy as np
from per_node_vs_ort import compare

POOLS = ("MaxPool", "AveragePool")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="ONNX files (globs allowed)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both runtimes (default 2)")
    parser.add_argument("--runs", type=int, default=50, help="profiled/timed runs per runtime and repeat (default 50)")
    parser.add_argument("--repeats", type=int, default=2, help="whole comparisons per model, interleaved (default 2)")
    args = parser.parse_args(argv)
    paths = [p for pattern in args.files for p in (sorted(glob.glob(pattern)) or [pattern])]
    samples: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)  # (model, group) -> (ours, ORT)
    shapes: dict[tuple[str, str], tuple[str, list]] = {}
    loads = []
    for _ in range(args.repeats):
        for path in paths:
            model = os.path.splitext(os.path.basename(path))[0]
            for row in compare(path, args.threads, args.runs):
                if row["op"] in POOLS:
                    samples[model, row["group"]].append((row["ours_s"], row["ort_s"]))
                    shapes[model, row["group"]] = (row["op"], row["shape"])
            loads.append(float(open("/proc/loadavg").read().split()[0]))
    print(f"\nmedians over {args.repeats} repeats, {args.threads} threads; load averages {min(loads):.2f}-{max(loads):.2f}")
    print(f"  {'ours ms':>8} {'ORT ms':>7} {'ratio':>6}  model: pool (op, output)")
    totals: dict[tuple[str, str], list[list[tuple[float, float]]]] = defaultdict(list)
    for (model, group), pairs in samples.items():
        ours, theirs = np.median(pairs, axis=0)
        ratio = np.median([a / b for a, b in pairs if b > 0]) if any(b > 0 for _, b in pairs) else float("inf")
        op, shape = shapes[model, group]
        print(f"  {ours * 1e3:8.3f} {theirs * 1e3:7.3f} {ratio:6.2f}  {model}: {group} ({op}, {shape})")
        totals[model, op].append(pairs)
    print("  per model and op, the sum of the steps' medians (ours ms / ORT ms, ratio):")
    for (model, op), steps in sorted(totals.items()):
        ours = sum(np.median([a for a, _ in pairs]) for pairs in steps)
        theirs = sum(np.median([b for _, b in pairs]) for pairs in steps)
        print(f"    {model} {op} x{len(steps)}: {ours * 1e3:.3f} / {theirs * 1e3:.3f} ({ours / theirs:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
