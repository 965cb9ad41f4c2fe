"""One model, convengine vs ONNX Runtime, each alone in a fresh process: the controlled comparison.

Timing two runtimes interleaved in one process lets one's leftovers (BLAS threads still
spinning after a call, caches) land on the other; ``convengine bench --model`` pauses
between samples for that, but a whole model is best compared with each runtime alone. This
script runs ``--processes`` fresh processes per runtime, alternating, each timing
``--runs`` calls after warm-up, and reports the median of the per-process medians:

    python benchmarks/model_vs_ort.py resnet50
    python benchmarks/model_vs_ort.py resnet18 --import-torch   # torch loaded first, as some users do
    python benchmarks/model_vs_ort.py resnet50 --from-onnx      # convengine runs the model loaded from ONNX
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

# isort: off
import convengine  # noqa: F401  (before numpy: sets OPENBLAS_THREAD_TIMEOUT before BLAS loads, see docs/usage.md)
# isort: on
import numpy as np


def _time_alone(runtime: str, model: str, policy: str, runs: int, import_torch: bool, from_onnx: bool = False) -> float:
    """Runs in the child process: median seconds per call of one runtime on ``model``."""
    if import_torch:
        import torch  # noqa: F401  (loaded before convengine, as in a user's process that imports torch first)
    import convengine as ce
    from convengine import bench
    from convengine.models import get_model

    graph = get_model(model)
    x = bench.model_input(graph)
    if runtime == "convengine" and from_onnx:  # the same architecture and weights, through the ONNX importer
        graph = ce.load_onnx(ce.to_onnx(graph).SerializeToString())
    if runtime == "convengine":
        run, _ = bench.build_model_runner(policy, graph, 1)
    else:
        run, _ = bench.build_model_runner(bench.MODEL_PEER, graph, 1, onnx_model=ce.to_onnx(graph).SerializeToString())
    for _ in range(3):
        run(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a zoo model name, e.g. resnet50")
    parser.add_argument("--policy", default="auto", help="engine policy (default auto)")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per runtime (default 3)")
    parser.add_argument("--runs", type=int, default=15, help="timed calls per process (default 15)")
    parser.add_argument("--import-torch", action="store_true", help="import torch before convengine in each process")
    parser.add_argument("--from-onnx", action="store_true",
                        help="convengine runs the model exported to ONNX and loaded back (ORT always runs the ONNX)")
    parser.add_argument("--child", choices=["convengine", "onnxruntime"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_time_alone(args.child, args.model, args.policy, args.runs, args.import_torch, args.from_onnx)))
        return 0
    medians: dict[str, list[float]] = {"convengine": [], "onnxruntime": []}
    for _ in range(args.processes):
        for runtime in medians:
            cmd = [sys.executable, __file__, args.model, "--policy", args.policy, "--runs", str(args.runs),
                   "--child", runtime] + (["--import-torch"] if args.import_torch else []) + (
                       ["--from-onnx"] if args.from_onnx else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            medians[runtime].append(json.loads(out.strip().splitlines()[-1]))
    ours, theirs = (float(np.median(medians[k])) for k in medians)
    detail = ", ".join(f"{k}: " + " ".join(f"{v * 1e3:.1f}" for v in vals) for k, vals in medians.items())
    print(f"{args.model}{' (from ONNX)' if args.from_onnx else ''} {args.policy}"
          f"{' (torch imported first)' if args.import_torch else ''}: "
          f"convengine {ours * 1e3:.2f} ms, ONNX Runtime {theirs * 1e3:.2f} ms, ratio {ours / theirs:.3f} "
          f"(per-process medians, ms: {detail})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
