"""Concatenations in place and channel shuffles without copies, against the copying executor.

One process, one model at a time: the same graph compiled twice (``concat_in_place=True``,
the default, and ``False``, which runs ``np.concatenate`` and the shuffle's transpose as
before), the two run interleaved, the order swapped every round, medians of ``2 x --rounds``
samples of >= 0.2 s: wall-clock and CPU time per call (the process's, all threads: what other
processes on a shared machine disturb less); the ratios copying / in place (above 1: in place
is faster), the load average before and after, and how many ``Concat`` nodes became views.

    python benchmarks/concat_in_place.py /tmp/tv_onnx/googlenet.onnx squeezenet1_1 --batch 1 --rounds 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# isort: off
import convengine as ce  # noqa: F401  (before numpy: sets OPENBLAS_THREAD_TIMEOUT before BLAS loads, docs/usage.md)
# isort: on
import numpy as np

from convengine.graph.executor import CompiledGraph
from convengine.models.loading import load_model
from convengine.runtime.timing import SETTLE_S, calls_per_sample


def _samples(contenders: dict, rounds: int, target_s: float = 0.2) -> dict[str, tuple[list, list]]:
    """Per contender, ``rounds`` x 2 samples of (wall, CPU) seconds per call, interleaved, the order swapped
    every round; CPU time is the process's, all threads: less exposed to other processes than the wall clock."""
    for fn in contenders.values():
        fn()
    calls = {name: calls_per_sample(fn, target_s) for name, fn in contenders.items()}
    samples = {name: ([], []) for name in contenders}
    order = list(contenders)
    for r in range(2 * rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            time.sleep(SETTLE_S)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls[name]):
                contenders[name]()
            samples[name][0].append((time.perf_counter() - wall) / calls[name])
            samples[name][1].append((time.process_time() - cpu) / calls[name])
    return samples


def compare(spec: str, batch: int, rounds: int) -> str:
    graph = load_model(spec)
    shape = (batch,) + tuple(graph.inputs[0].shape[1:])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    placed = CompiledGraph(graph, batch=batch)
    copying = CompiledGraph(graph, batch=batch, concat_in_place=False)
    assert np.allclose(placed.run(x), copying.run(x), rtol=1e-5, atol=1e-5)
    load = os.getloadavg()[0]
    samples = _samples({"in place": lambda: placed.run(x), "copying": lambda: copying.run(x)}, rounds)
    after = os.getloadavg()[0]
    (wall_in, cpu_in), (wall_copy, cpu_copy) = ([statistics.median(v) for v in samples[k]] for k in ("in place", "copying"))
    kinds = sorted(set(placed.gathered.values()))
    return (f"{os.path.basename(spec):24s} batch {batch}  wall: in place {wall_in * 1e3:7.2f} ms, "
            f"copying {wall_copy * 1e3:7.2f} ms, ratio {wall_copy / wall_in:5.3f}  CPU: {cpu_in * 1e3:7.2f} / "
            f"{cpu_copy * 1e3:7.2f} ms, ratio {cpu_copy / cpu_in:5.3f}  ({len(placed.gathered)} Concat as views: "
            f"{', '.join(kinds)}; load {load:.1f} -> {after:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="zoo names or .onnx files")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    for spec in args.models:
        print(compare(spec, args.batch, args.rounds), flush=True)


if __name__ == "__main__":
    main()
