"""Winograd vs im2col on ResNet's 3x3 stride-1 layers (float32): warmed, interleaved rounds.

    python plugins/convengine-winograd/benchmarks/resnet_layers.py [ROUNDS] [BATCHES]
    e.g.  CONVENGINE_NUM_THREADS=1 python .../resnet_layers.py 41 1,8

Prints the median (and minimum) time per call of each prepared executor, both backends'
``estimate_seconds`` for this machine, and winograd's normwise error against the float64
reference. The order of the two backends alternates between rounds, so slow phases of a
shared machine hit both alike; still, report medians of several runs.
"""

import sys
import time

import numpy as np

import convengine as ce
from convengine.core.costmodel import measure_machine
from convengine.testing.reference import conv2d_reference, relative_error

LAYERS = [((64, 56), 64), ((256, 14), 256), ((512, 7), 512)]


def main(rounds: int, batches: list[int]) -> None:
    from convengine.backends.im2col import Im2colBackend  # only for its estimate
    from convengine_winograd.plugin import WinogradBackend

    machine = measure_machine()
    print(f"machine: {machine.describe()}; threads {ce.get_num_threads()}")
    wb, ib = WinogradBackend(), Im2colBackend()
    rng = np.random.default_rng(0)
    print(f"{'layer':34s} {'im2col ms':>10s} {'winograd ms':>12s} {'speedup':>8s} {'est im2col':>10s} "
          f"{'est wino':>9s} {'rel err':>9s}  (min im2col / winograd)")
    for n in batches:
        for (c, hw), o in LAYERS:
            xs, ws = (n, c, hw, hw), (o, c, 3, 3)
            x = rng.standard_normal(xs).astype(np.float32)
            w = (rng.standard_normal(ws) / np.sqrt(9 * c)).astype(np.float32)
            problem = ce.ConvProblem.from_shapes(xs, ws, padding=1)
            runs = {name: ce.Engine(policy=name).prepare(w, input_shape=xs, padding=1) for name in ("im2col", "winograd")}
            for run in runs.values():
                for _ in range(3):
                    run(x)
            times = {name: [] for name in runs}
            for r in range(rounds):
                for name, run in (list(runs.items()) if r % 2 == 0 else list(runs.items())[::-1]):
                    t0 = time.perf_counter()
                    run(x)
                    times[name].append(time.perf_counter() - t0)
            med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
            low = {k: float(np.min(v)) * 1e3 for k, v in times.items()}
            err = relative_error(runs["winograd"](x), conv2d_reference(x, w, padding=(1, 1, 1, 1)))
            print(f"{str(xs) + 'x' + str(ws):34s} {med['im2col']:10.3f} {med['winograd']:12.3f} "
                  f"{med['im2col'] / med['winograd']:7.2f}x {ib.estimate_seconds(problem, machine) * 1e3:10.3f} "
                  f"{wb.estimate_seconds(problem, machine) * 1e3:9.3f} {err:9.2e}  ({low['im2col']:.3f} / {low['winograd']:.3f})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 25,
         [int(b) for b in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1])
