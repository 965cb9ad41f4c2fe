"""Each convolution inside a model against the same call in a hot loop: what the model's context costs.

A layer that is fast alone can be slow inside a model: its weights and input arrive from
the lower cache levels, and the Numba worker thread may have gone to sleep since the last
parallel kernel. This script runs an ONNX model with convengine's executor, times every
convolution step inside the model (median over ``--runs`` runs), captures the arguments
each step was called with, and then times that same call repeated back to back ("hot"),
and repeated after a 1 ms pause each time ("after idle": the worker has gone to sleep,
caches of the other thread are cold). Printed: the ``--top`` steps by in-model minus hot
time, and the totals. Compilation happens in two warm-up runs before any timing.

    python benchmarks/in_model_vs_hot.py /tmp/tv_onnx/resnet50.onnx
    python benchmarks/in_model_vs_hot.py model.onnx --threads 1 --top 10
"""

from __future__ import annotations

import argparse
import functools
import time

# isort: off
import convengine as ce  # before numpy: sets OPENBLAS_THREAD_TIMEOUT before BLAS loads (docs/usage.md)
# isort: on
import numpy as np

from convengine.core.engine import Engine
from convengine.graph.executor import CompiledGraph
from convengine.runtime.threads import set_num_threads

IDLE_S = 0.001


def _median_ms(call, repeats: int, pause_s: float = 0.0) -> float:
    times = []
    for _ in range(repeats):
        if pause_s:
            time.sleep(pause_s)
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an ONNX file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20, help="timed whole-model runs (default 20)")
    parser.add_argument("--repeats", type=int, default=50, help="calls per hot-loop measurement (default 50)")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)

    set_num_threads(args.threads)
    graph = ce.load_onnx(args.model)
    shape = (args.batch,) + tuple(d or 1 for d in graph.inputs[0].shape[1:])
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    compiled = CompiledGraph(graph, Engine(), batch=args.batch)
    compiled.run(x)
    compiled.run(x)

    captured, in_model = {}, {}
    capturing = [True]
    for step in compiled.steps:
        if step.conv is None:
            continue

        def timed(*a, _conv=step.conv, _name=step.node.name, **kw):
            if capturing[0]:
                if kw.get("out") is None and not kw.get("consume_residual"):  # calls that own their output only
                    captured[_name] = (_conv, [np.array(v) for v in a], kw)  # copies: the run frees its own
                return _conv(*a, **kw)
            start = time.perf_counter()
            result = _conv(*a, **kw)
            in_model.setdefault(_name, []).append(time.perf_counter() - start)
            return result

        step.conv = timed
    compiled.run(x)
    capturing[0] = False
    totals = []
    for _ in range(args.runs):
        start = time.perf_counter()
        compiled.run(x)
        totals.append(time.perf_counter() - start)

    rows = []
    for name, (conv, arrays, kw) in captured.items():
        inside = float(np.median(in_model[name])) * 1e3
        call = functools.partial(conv, *arrays, **kw)
        hot = _median_ms(call, args.repeats)
        idle = _median_ms(call, max(5, args.repeats // 5), IDLE_S)
        rows.append((name, inside, hot, idle))
    rows.sort(key=lambda r: r[2] - r[1])
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"{args.model}: {args.threads} threads, batch {args.batch}, whole run {np.median(totals) * 1e3:.2f} ms, load {load}")
    print(f"{'in-model ms':>12s} {'hot ms':>8s} {'after idle':>10s}  step")
    for name, inside, hot, idle in rows[:args.top]:
        print(f"{inside:12.3f} {hot:8.3f} {idle:10.3f}  {name}")
    print(f"sum over {len(rows)} steps (outputs not written into a concatenation): in-model "
          f"{sum(r[1] for r in rows):.2f} ms, hot {sum(r[2] for r in rows):.2f} ms, after idle {sum(r[3] for r in rows):.2f} ms")


if __name__ == "__main__":
    main()
