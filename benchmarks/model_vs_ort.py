"""One model, convengine vs ONNX Runtime, in a process of its own: the controlled A/B.

``convengine bench --model`` imports every peer library into one process; this script
imports only what it is told to, so the effect of a library on convengine's times (torch's
OpenMP runtime, for one) can be seen by running it with and without ``--import-torch``:

    for i in 1 2 3; do python benchmarks/model_vs_ort.py resnet50; python benchmarks/model_vs_ort.py resnet50 --import-torch; done
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a zoo model name, e.g. resnet50")
    parser.add_argument("--policy", default="auto", help="engine policy (default auto)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (median reported)")
    parser.add_argument("--import-torch", action="store_true", help="import torch first, as a benchmark with torch peers does")
    args = parser.parse_args(argv)
    if args.import_torch:
        import torch  # noqa: F401
    import onnxruntime as ort

    import convengine as ce
    from convengine.bench import interleaved, onnxruntime_options
    from convengine.models import get_model

    graph = get_model(args.model)
    x = np.random.default_rng(0).standard_normal((1,) + tuple(graph.inputs[0].shape[1:])).astype(np.float32)
    compiled = graph.compile(ce.Engine(args.policy))
    session = ort.InferenceSession(ce.to_onnx(graph).SerializeToString(), onnxruntime_options(ort),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    samples = interleaved({"convengine": lambda: compiled.run(x), "onnxruntime": lambda: session.run(None, {name: x})},
                          rounds=args.rounds, target_s=0.0)
    ours, theirs = (float(np.median(samples[k])) for k in ("convengine", "onnxruntime"))
    print(f"{args.model} {args.policy}{' (torch imported)' if args.import_torch else ''}: convengine {ours * 1e3:.2f} ms, "
          f"ONNX Runtime {theirs * 1e3:.2f} ms, ratio {ours / theirs:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
