"""Concatenations in place and channel shuffles without copies, against the copying executor.

One process, one model at a time: the same graph compiled twice (``concat_in_place=True``,
the default, and ``False``, which runs ``np.concatenate`` and the shuffle's transpose as
before), the two run interleaved (``convengine.runtime.timing.interleaved``), in both orders,
medians of ``2 x --rounds`` samples; the ratio copying / in place (above 1: in place is faster), the
load average before and after, and how many ``Concat`` nodes became views.

    python benchmarks/concat_in_place.py /tmp/tv_onnx/googlenet.onnx squeezenet1_1 --batch 1 --rounds 9
"""

from __future__ import annotations

import argparse
import os
import statistics

# isort: off
import convengine as ce  # noqa: F401  (before numpy: sets OPENBLAS_THREAD_TIMEOUT before BLAS loads, docs/usage.md)
# isort: on
import numpy as np

from convengine.graph.executor import CompiledGraph
from convengine.models.loading import load_model
from convengine.runtime.timing import interleaved


def compare(spec: str, batch: int, rounds: int) -> str:
    graph = load_model(spec)
    shape = (batch,) + tuple(graph.inputs[0].shape[1:])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    placed = CompiledGraph(graph, batch=batch)
    copying = CompiledGraph(graph, batch=batch, concat_in_place=False)
    assert np.allclose(placed.run(x), copying.run(x), rtol=1e-5, atol=1e-5)
    load = os.getloadavg()[0]
    contenders = {"in place": lambda: placed.run(x), "copying": lambda: copying.run(x)}
    samples = interleaved(contenders, rounds=rounds, target_s=0.2)
    for name, values in interleaved(dict(reversed(contenders.items())), rounds=rounds, target_s=0.2).items():
        samples[name] += values  # the other order too: neither always runs first
    after = os.getloadavg()[0]
    fast, slow = statistics.median(samples["in place"]), statistics.median(samples["copying"])
    kinds = sorted(set(placed.gathered.values()))
    return (f"{os.path.basename(spec):28s} batch {batch}  in place {fast * 1e3:8.2f} ms  copying {slow * 1e3:8.2f} ms  "
            f"ratio {slow / fast:5.3f}  ({len(placed.gathered)} Concat as views: {', '.join(kinds)}; "
            f"load {load:.1f} -> {after:.1f})")


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
