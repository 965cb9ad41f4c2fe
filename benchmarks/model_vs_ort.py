"""One zoo model, convengine vs ONNX Runtime, each alone in a fresh process: the controlled comparison.

Timing two runtimes interleaved in one process lets one's leftovers (BLAS threads still
spinning after a call, caches) land on the other; ``convengine bench --model`` pauses
between samples for that, but a whole model is best compared with each runtime alone. This
script runs ``--processes`` fresh processes per runtime, alternating, each timing
``--runs`` calls after two untimed ones, and reports the median of the per-process medians,
CPU time per call and each runtime's peak extra RSS (:func:`convengine.bench.alone.bench_alone`, the machinery
of ``convengine bench --onnx FILE``; ONNX Runtime runs the zoo model exported with
``to_onnx``):

    python benchmarks/model_vs_ort.py resnet50
    python benchmarks/model_vs_ort.py resnet50 --from-onnx      # convengine runs the model loaded from ONNX
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import convengine as ce
from convengine.bench.alone import bench_alone
from convengine.models import get_model


def _say(text: str) -> None:
    print(f"  ... {text}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a zoo model name, e.g. resnet50")
    parser.add_argument("--policy", default="auto", help="engine policy or backend (default auto)")
    parser.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per runtime (default 3)")
    parser.add_argument("--runs", type=int, default=15, help="timed calls per process (default 15)")
    parser.add_argument("--from-onnx", action="store_true",
                        help="convengine runs the model exported to ONNX and loaded back (ORT always runs the ONNX)")
    args = parser.parse_args(argv)
    graph = get_model(args.model)
    with tempfile.TemporaryDirectory(prefix="model-vs-ort-") as workdir:
        onnx_path = os.path.join(workdir, f"{args.model}.onnx")
        with open(onnx_path, "wb") as f:
            f.write(ce.to_onnx(graph).SerializeToString())
        report = bench_alone(onnx_path if args.from_onnx else args.model, graph, onnx_path, contender=args.policy,
                             batch=args.batch, rounds=args.processes, calls=args.runs, timed_s=0.0, workdir=workdir,
                             say=_say)
    ours, theirs = report.convengine, report.results[-1]
    for row in (ours, theirs):
        if row.error:
            print(f"{args.model}: {row.runtime} failed: {row.error}", file=sys.stderr)
            return 1
    detail = ", ".join(f"{name}: " + " ".join(f"{v * 1e3:.3g}" for v in row.process_medians_s)
                       for name, row in (("convengine", ours), ("onnxruntime", theirs)))
    print(f"{args.model}{' (from ONNX)' if args.from_onnx else ''} {args.policy}"
          f"{f' batch {args.batch}' if args.batch != 1 else ''}: "
          f"convengine {ours.median_s * 1e3:.2f} ms, ONNX Runtime {theirs.median_s * 1e3:.2f} ms, "
          f"ratio {ours.ratio_to_ort:.3f}; CPU per call {ours.cpu_per_call_s * 1e3:.1f} ms vs "
          f"{theirs.cpu_per_call_s * 1e3:.1f} ms, ratio {ours.cpu_ratio_to_ort:.2f}; "
          f"peak extra RSS {ours.peak_extra_bytes / 2**20:.0f} MiB vs {theirs.peak_extra_bytes / 2**20:.0f} MiB, "
          f"ratio {ours.memory_ratio_to_ort:.2f} "
          f"(per-process medians, ms: {detail})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
