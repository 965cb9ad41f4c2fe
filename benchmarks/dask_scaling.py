"""Images per second on a Dask LocalCluster against one process, and the scheduling overhead per chunk.

ResNet-50 (by default) runs over the same images three ways, for each chunk size: one process
calling ``graph.run`` chunk by chunk with every core's threads (the baseline), a LocalCluster of
one worker with every core's threads, and one of one worker per core with one thread each. The
clusters read the images from a ``.npy`` file as ``convengine predict`` does, and both stay up
(each worker's model prepared before timing starts), so the contenders take turns within every
round and share whatever load the machine has. Reported: the median images/s over the rounds,
and the median over the rounds of each round's ratio to the one process (the ratio of two
runs a few seconds apart, steadier than a ratio of medians on a shared machine).

The overhead per chunk is what a chunk costs a worker beyond running the model on it: for each
worker, the time from the start of its first task to the end of its last (Dask's task stream)
less the time it spent inside the model, summed over the workers and divided by the chunks.
It holds reading the chunk, (de)serialising, scheduling and the gaps between tasks; a worker
idle at the end because the other still runs its last chunk is not in it, but is in images/s.

    python benchmarks/dask_scaling.py                      # ResNet-50, 128 images, chunks 8-64, 3 rounds
    python benchmarks/dask_scaling.py --model resnet18 --images 64 --chunks 8,32 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

# isort: off
import convengine  # noqa: F401  (before numpy: it limits OpenBLAS's idle spinning only if numpy is not loaded yet)
# isort: on

import distributed
import numpy as np
from dask.system import CPU_COUNT

import convengine.dask as cd
from convengine.cli.arguments import ints
from convengine.models.loading import load_model
from convengine.runtime.threads import set_num_threads


def _model_compute_s(client, name: str) -> dict[str, float]:
    """``{worker: seconds spent inside the model behind array name so far}``."""
    return {address: sum(s["compute_s"] for key, s in models.items() if name.startswith(key))
            for address, models in cd.status(client).items()}


def time_cluster(client, graph, path: str, chunk: int) -> tuple[float, float, float]:
    """``(seconds, overhead s per chunk, model s per chunk)`` for one predict over the images at ``path``."""
    result = cd.predict(graph, path, client=client, batch_size=chunk)
    before = _model_compute_s(client, result.name)
    with distributed.get_task_stream(client=client) as stream:
        start = time.perf_counter()
        result.compute(scheduler=client)
        seconds = time.perf_counter() - start
    after = _model_compute_s(client, result.name)
    spans: dict[str, list[float]] = {}
    for task in stream.data:
        for step in task["startstops"]:
            first, last = spans.setdefault(task["worker"], [step["start"], step["stop"]])
            spans[task["worker"]] = [min(first, step["start"]), max(last, step["stop"])]
    inside = sum(after[w] - before.get(w, 0.0) for w in after)
    busy = sum(last - first for first, last in spans.values())
    chunks = len(result.chunks[0])
    return seconds, (busy - inside) / chunks, inside / chunks


def time_process(graph, x: np.ndarray, chunk: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(x), chunk):
        graph.run(x[i:i + chunk])
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--chunks", type=ints, default=(8, 16, 32, 64), help="chunk sizes (default 8,16,32,64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, contenders interleaved (median reported)")
    args = parser.parse_args(argv)
    cores = CPU_COUNT
    graph = load_model(args.model)
    spec = graph.inputs[0]
    x = np.random.default_rng(0).standard_normal((args.images,) + tuple(spec.shape[1:])).astype(spec.dtype)
    set_num_threads(cores)
    with tempfile.TemporaryDirectory() as tmp, \
            cd.local_cluster(1, threads_per_worker=cores, dashboard_address=":0") as one, \
            cd.local_cluster(cores, threads_per_worker=1, dashboard_address=":0") as many, \
            distributed.Client(one, set_as_default=False) as c_one, \
            distributed.Client(many, set_as_default=False) as c_many:
        path = os.path.join(tmp, "images.npy")
        np.save(path, x)
        clusters = {f"1 worker x {cores} threads": c_one, f"{cores} workers x 1 thread": c_many}
        print(f"{args.model}, {args.images} images, {cores} cores; preparing (compiles, per-chunk preparation)...")
        for chunk in args.chunks:  # warm-up: every contender prepared for every chunk size before timing
            time_process(graph, x[: 2 * chunk], chunk)
            for client in clusters.values():
                time_cluster(client, graph, path, chunk)
        samples: dict = {}
        contenders = {"process": lambda chunk: (time_process(graph, x, chunk), 0.0, 0.0)}
        contenders.update({label: (lambda chunk, c=client: time_cluster(c, graph, path, chunk))
                           for label, client in clusters.items()})
        for r in range(args.rounds):
            order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]  # no contender always first
            for chunk in args.chunks:
                for label in order:
                    samples.setdefault((label, chunk), []).append(contenders[label](chunk))
            print(f"round {r + 1}/{args.rounds} done")
    print()
    compiled = graph.compile()
    for chunk in args.chunks:  # what ran (policy auto): a backend excluded on this machine would show here
        backends: dict[str, int] = {}
        for backend in compiled.layer_backends_for(chunk).values():
            backends[backend] = backends.get(backend, 0) + 1
        print(f"backends at chunk {chunk}: {', '.join(f'{b} x{n}' for b, n in sorted(backends.items()))}")
    labels = list(clusters)
    print("| chunk | one process, graph.run (img/s) | "
          + " | ".join(f"{label} (img/s; vs process: median, range over rounds)" for label in labels)
          + " | " + " | ".join(f"overhead per chunk, {label} (ms, % of its compute)" for label in labels) + " |")
    print("|---" * (2 + 2 * len(labels)) + "|")
    for chunk in args.chunks:
        process_s = [s[0] for s in samples[("process", chunk)]]
        process = args.images / np.median(process_s)
        rates, overheads = [], []
        for label in labels:
            seconds, overhead, inside = (float(np.median(column)) for column in zip(*samples[(label, chunk)]))
            ratios = [p / s[0] for p, s in zip(process_s, samples[(label, chunk)])]
            rates.append(f"{args.images / seconds:.1f} ({np.median(ratios):.2f}x; {min(ratios):.2f}-{max(ratios):.2f})")
            overheads.append(f"{overhead * 1e3:.0f} ({overhead / inside * 100:.1f}%)")
        print(f"| {chunk} | {process:.1f} | " + " | ".join(rates) + " | " + " | ".join(overheads) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
