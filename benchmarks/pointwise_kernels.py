"""``direct``'s two 1x1 kernels side by side on the 1x1 layers of ONNX files: register tiles against pixel vectors.

Every distinct unpadded 1x1 convolution (one group) of the given models at batch 1 runs on
:func:`pointwise_tiles` (output channels in the vector lanes, a transposing store) and on
:func:`pointwise_conv` (6 output channels x 64 pixels, pixels in the lanes), both prepared
by :class:`~convengine.backends.direct.DirectBackend` (the second with the tiles switched
off), each checked against the other, timed in interleaved rounds (:func:`convengine.bench.compare`,
medians) on ``--threads`` threads. Printed per layer: both times, pixel/tiles, and which one
``runs_pointwise_tiles`` picks now; then the sum over layers of each choice. The load
average is printed with it: the machine is shared.

    python benchmarks/pointwise_kernels.py /tmp/tv_onnx/mobilenet_v2.onnx /tmp/tv_onnx/efficientnet_b0.onnx
"""

from __future__ import annotations

import argparse

# isort: off
import convengine as ce  # before numpy: sets OPENBLAS_THREAD_TIMEOUT before BLAS loads (docs/usage.md)
# isort: on
import numpy as np

from convengine import bench
from convengine.backends import direct
from convengine.backends.direct import DirectBackend
from convengine.core.problem import ConvProblem
from convengine.graph.executor import CompiledGraph
from convengine.graph.onnx import load_onnx
from convengine.runtime.threads import set_num_threads


def pointwise_shapes(path: str) -> set[tuple[int, int, int, int, int]]:
    """``(C, H, W, O, stride)`` of each unpadded, ungrouped 1x1 convolution the executor runs for the model at batch 1."""
    compiled = CompiledGraph(load_onnx(path), ce.Engine(), batch=1)
    problems = [step.conv.problem for step in compiled.steps if getattr(step, "conv", None) is not None]
    return {(p.in_channels, p.height, p.width, p.out_channels, p.stride[0])
            for p in problems if direct.is_subsampled_pointwise(p)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    set_num_threads(args.threads)
    shapes = sorted(set().union(*(pointwise_shapes(p) for p in args.files)), key=lambda s: (-s[1], s[0], s[3]))
    totals = {"tiles": 0.0, "pixel": 0.0, "now": 0.0, "best": 0.0}
    backend = DirectBackend()
    for c, h, w, o, s in shapes:
        problem = ConvProblem.from_shapes((1, c, h, w), (o, c, 1, 1), stride=s)
        if problem.out_height * problem.out_width < backend.tile_width:
            continue
        x, weight, bias = bench.problem_data(problem)
        original = direct.runs_pointwise_tiles
        picks_tiles = original(problem, backend.tile_width)
        try:
            direct.runs_pointwise_tiles = lambda *a: True
            tiles = backend.prepare(problem, weight, bias)
            direct.runs_pointwise_tiles = lambda *a: False
            pixel = backend.prepare(problem, weight, bias)
        finally:
            direct.runs_pointwise_tiles = original
        np.testing.assert_allclose(tiles(x), pixel(x), rtol=1e-4, atol=1e-4)
        t = {r.name: r.median_s for r in bench.compare(problem, {"tiles": tiles, "pixel": pixel}, {}, x,
                                                        rounds=args.rounds)}
        totals["tiles"] += t["tiles"]
        totals["pixel"] += t["pixel"]
        totals["now"] += t["tiles"] if picks_tiles else t["pixel"]
        totals["best"] += min(t.values())
        print(f"{c:5d}->{o:5d} {h:3d}x{w:<3d} s{s}: tiles {t['tiles'] * 1e3:7.3f} pixel {t['pixel'] * 1e3:7.3f} ms, "
              f"pixel/tiles {t['pixel'] / t['tiles']:.2f}, picks {'tiles' if picks_tiles else 'pixel'}", flush=True)
    print("sums (ms): " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in totals.items())
          + f"; load {open('/proc/loadavg').read().split()[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
