"""``direct`` per layer against ONNX Runtime's ``Conv`` kernel alone, without the layout changes around it.

Why: ONNX Runtime runs a one-node ``Conv`` model (what ``convengine bench`` and
``benchmarks/direct_efficiency.py`` time) as ``ReorderInput -> Conv (NCHWc) -> ReorderOutput``;
in a whole model its activations stay in the blocked NCHWc layout from one convolution to
the next, so it pays neither reorder per layer. ``direct`` pays its own equivalents (the
blocked input copy of a kxk layer, the transposing NCHW store) on every call, in the model
too. Comparing against the one-node session's wall time therefore flatters ``direct`` by
ORT's reorders; comparing against ORT's ``Conv`` kernel time (its profiler's
``kernel_time``) is what a whole model sees.

For each layer (ResNet-50's distinct convolutions unless ``--layer``/``--set`` say
otherwise), in interleaved rounds in this one process (the order swapped every round,
medians): ``direct``'s ``prepare``d call, and ONNX Runtime's one-node session with its
profiler on (same threads, :func:`convengine.bench.peers.onnxruntime_options`). Printed: the
medians of ``direct``, the session's wall time, its ``Conv`` node and its ``Reorder*``
nodes (ms), and ``direct``'s time over the session's and over the ``Conv`` kernel's.

    python benchmarks/direct_vs_ort_kernel.py
    python benchmarks/direct_vs_ort_kernel.py --set alexnet --batch 8 --rounds 15
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import tempfile
import time

# isort: off
import convengine as ce  # before numpy: sets OPENBLAS_THREAD_TIMEOUT before BLAS loads (docs/usage.md)
# isort: on
import numpy as np

from convengine import bench
from convengine.backends.direct import DirectBackend
from convengine.bench.catalogue import SETS, select
from convengine.bench.peers import onnx_conv_model, onnxruntime_options
from convengine.runtime.threads import set_num_threads

WARMUP = 3


def measure(spec, batch: int, rounds: int, threads: int, folder: str) -> dict:
    import onnxruntime as ort

    problem = spec.problem(batch)
    x, w, b = bench.problem_data(problem)
    direct = DirectBackend().prepare(problem, w, b)
    options = onnxruntime_options(ort, threads)
    options.enable_profiling = True
    options.profile_file_prefix = f"{folder}/{spec.name}"
    session = ort.InferenceSession(onnx_conv_model(problem, w, b).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {"X": x}
    contenders = {"direct": lambda: direct(x), "ort": lambda: session.run(None, feeds)}
    for _ in range(WARMUP):
        for fn in contenders.values():
            fn()
    seconds = {name: [] for name in contenders}
    for r in range(rounds):
        for name in (list(contenders) if r % 2 == 0 else list(contenders)[::-1]):
            start = time.perf_counter()
            contenders[name]()
            seconds[name].append(time.perf_counter() - start)
    with open(session.end_profiling()) as f:
        events = json.load(f)
    nodes = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            nodes[e["args"]["op_name"]].append(e["dur"] * 1e-6)
    kernel = {op: float(np.median(v[WARMUP:])) for op, v in nodes.items()}
    return dict(layer=spec.name, batch=batch, direct=float(np.median(seconds["direct"])),
                ort=float(np.median(seconds["ort"])), conv=kernel.get("Conv", math.nan),
                reorder=sum(t for op, t in kernel.items() if op.startswith("Reorder")))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", action="append", default=[], help="a catalogue layer name (repeatable)")
    parser.add_argument("--set", action="append", default=[], choices=sorted(SETS), help="a catalogue set (repeatable)")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default: 1)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    set_num_threads(args.threads)
    specs = select(args.layer, args.set or ([] if args.layer else ["resnet50"]))
    with open("/proc/loadavg") as f:
        print(f"convengine {ce.__version__}, {args.threads} threads, {args.rounds} interleaved rounds (medians); "
              f"load average {f.read().split()[0]} at the start")
    print(f"{'layer':28s} {'batch':>5s} {'direct ms':>9s} {'ORT wall':>9s} {'ORT Conv':>9s} {'reorders':>9s} "
          f"{'/ wall':>7s} {'/ Conv':>7s}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for batch in args.batch or [1]:
            for spec in specs:
                row = measure(spec, batch, args.rounds, args.threads, folder)
                rows.append(row)
                print(f"{row['layer']:28s} {batch:5d} {row['direct'] * 1e3:9.3f} {row['ort'] * 1e3:9.3f} "
                      f"{row['conv'] * 1e3:9.3f} {row['reorder'] * 1e3:9.3f} {row['direct'] / row['ort']:7.2f} "
                      f"{row['direct'] / row['conv']:7.2f}", flush=True)
    for key in ("ort", "conv"):
        logs = [math.log(r["direct"] / r[key]) for r in rows]
        print(f"direct / ORT {'session wall' if key == 'ort' else 'Conv kernel'}, geometric mean: "
              f"{math.exp(sum(logs) / len(logs)):.3f}")
    with open("/proc/loadavg") as f:
        print(f"load average at the end: {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
