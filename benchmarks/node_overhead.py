"""Per-node overhead of the graph executor: what a step costs beyond its kernel's arithmetic.

Small networks at batch 1 (SqueezeNet, MobileNets, EfficientNet) run ~50-120 steps of a
few tens to hundreds of microseconds each, so a fixed cost per step is a real share of
their time. Measured here, single-threaded (no parallel kernel start in the figure):

* a convolution step: ``PreparedConv`` on a problem with almost no arithmetic (16 channels,
  1 or 4 pixels), per backend: the engine's checks, the backend's Python, Numba's dispatch;
* any other step: the executor's loop on a chain of ``Identity`` nodes;
* per model (zoo names or ``.onnx`` files): its steps with fusion (epilogues, squeeze-and-
  excitation) and without, and the overhead bound ``conv steps x conv cost + other steps x
  step cost`` against its median run time.

    python benchmarks/node_overhead.py mobilenet_v2 squeezenet1_1 /tmp/tv_onnx/efficientnet_b0.onnx
"""

from __future__ import annotations

import argparse
import time

# isort: off
import convengine as ce  # before numpy: sets OPENBLAS_THREAD_TIMEOUT before BLAS loads (docs/usage.md)
# isort: on
import numpy as np

from convengine.graph import GraphBuilder
from convengine.graph.executor import CompiledGraph


def _per_call_us(fn, calls: int = 5000, repeats: int = 5) -> float:
    """Best of ``repeats`` means over ``calls`` calls, in microseconds (warm)."""
    for _ in range(100):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def conv_step_us(backend: str) -> float:
    """One PreparedConv call (bias, ReLU fused) on 16 channels of 2x2 pixels: overhead, not arithmetic."""
    groups = 16 if backend == "grouped" else 1
    x = np.ones((1, 16, 2, 2), np.float32)
    w = np.ones((16, 16 // groups, 1, 1), np.float32)
    prepared = ce.Engine(backend).prepare(w, np.ones(16, np.float32), input_shape=x.shape, groups=groups,
                                          activation="relu")
    return _per_call_us(lambda: prepared(x))


def other_step_us(length: int = 200) -> float:
    """One executor step of a cheap operator (``Identity``), from a chain of ``length`` of them."""
    b = GraphBuilder("chain", (16, 2, 2))
    t = b.input.name
    for _ in range(length):
        t = b.node("Identity", [t])
    compiled = CompiledGraph(b.build(t), precompile=False)
    x = np.ones((1, 16, 2, 2), np.float32)
    return _per_call_us(lambda: compiled.run(x), calls=200) / length


def model_row(name: str, conv_us: float, step_us: float) -> str:
    from convengine.models import get_model

    graph = ce.load_onnx(name) if name.endswith(".onnx") else get_model(name)
    x = np.random.default_rng(0).standard_normal((1, *graph.inputs[0].shape[1:])).astype(graph.inputs[0].dtype)
    rows = []
    for fuse in (True, False):
        compiled = CompiledGraph(graph, fuse_epilogues=fuse)
        convs = sum(s.conv is not None for s in compiled.steps)
        others = len(compiled.steps) - convs
        run_ms = _per_call_us(lambda c=compiled: c.run(x), calls=5, repeats=5) / 1e3
        bound_ms = (convs * conv_us + others * step_us) / 1e3
        rows.append(f"{'fused' if fuse else 'unfused':8s} {len(compiled.steps):4d} steps ({convs} conv), run {run_ms:7.2f} ms, "
                    f"overhead <= {bound_ms:5.2f} ms ({bound_ms / run_ms:.0%})")
    return f"{name}:\n  " + "\n  ".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="zoo names or .onnx files")
    args = parser.parse_args(argv)
    ce.set_num_threads(1)
    per_backend = {backend: conv_step_us(backend) for backend in ("direct", "grouped", "im2col")}
    step = other_step_us()
    print("convolution step (engine + backend + dispatch, 1 thread): "
          + ", ".join(f"{b} {us:.1f} us" for b, us in per_backend.items()))
    print(f"other step (executor loop, Identity): {step:.2f} us")
    conv = max(per_backend.values())
    for name in args.models:
        print(model_row(name, conv, step))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
