"""Time against batch size and thread count: does the cost grow linearly, without cliffs?

For each layer, thread count and batch size, the backend ``auto`` chooses is timed next to
``torch.nn.functional.conv2d`` and ONNX Runtime (when installed) in interleaved rounds; the
table gives milliseconds per image (flat = linear in batch) and the ratio to each peer.

    python benchmarks/scaling.py                          # the issue's four layers, batch 1-32, threads 1 and 2
    python benchmarks/scaling.py --layer resnet50.layer1.conv2 --batch 1 --batch 32 --threads 2
"""

from __future__ import annotations

import argparse

# isort: off
import convengine as ce  # before numpy: it limits OpenBLAS's idle spinning only if numpy is not loaded yet
# isort: on

import numpy as np
from tqdm import tqdm

from convengine import bench
from convengine.bench.catalogue import layer
from convengine.runtime.threads import set_num_threads

DEFAULT_LAYERS = ("resnet50.layer1.conv2", "resnet50.layer1.conv3", "resnet50.layer4.conv2", "alexnet.conv1")


def measure(name: str, batch: int, threads: int, rounds: int) -> dict:
    set_num_threads(threads)
    problem = layer(name).problem(batch)
    x, w, b = bench.problem_data(problem)
    engine = ce.Engine()
    prepared = engine.prepare(w, b, input_shape=problem.input_shape, stride=problem.stride,
                              padding=problem.padding, dilation=problem.dilation, groups=problem.groups)
    contenders = {"auto": lambda: prepared(x)}
    peers, _ = bench.available_peers(problem, x, w, b)
    contenders.update(peers)
    samples = bench.interleaved(contenders, rounds=rounds)
    medians = {k: float(np.median(v)) for k, v in samples.items()}
    return {"layer": name, "batch": batch, "threads": threads, "backend": prepared.backend_for(batch), **medians}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", action="append", help=f"layer name (repeatable; default {', '.join(DEFAULT_LAYERS)})")
    parser.add_argument("--batch", action="append", type=int, help="batch sizes (default 1 2 4 8 16 32)")
    parser.add_argument("--threads", action="append", type=int, help="thread counts (default 1 and 2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per point (median reported)")
    args = parser.parse_args(argv)
    bench.import_heavy_libraries()
    points = [(n, t, bt) for n in args.layer or DEFAULT_LAYERS for t in args.threads or (1, 2)
              for bt in args.batch or (1, 2, 4, 8, 16, 32)]
    rows = [measure(n, bt, t, args.rounds) for n, t, bt in tqdm(points, desc="scaling", unit="point")]
    print("| layer | threads | batch | backend | auto ms/image | torch ms/image | ORT ms/image | vs torch | vs ORT |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per = {k: r.get(k) for k in ("auto", "peer:torch", "peer:onnxruntime")}
        cells = [f"{v / r['batch'] * 1e3:.3f}" if v else "-" for v in per.values()]
        ratios = [f"{per['auto'] / per[p]:.2f}x" if per.get(p) else "-" for p in ("peer:torch", "peer:onnxruntime")]
        print(f"| {r['layer']} | {r['threads']} | {r['batch']} | {r['backend']} | " + " | ".join(cells + ratios) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
