"""What the NaN/Inf check costs the lossy backends: time per call with it and without it.

``fft`` and the Winograd plugin's ``winograd``/``winograd4`` check every input with
``convengine.core.arrays.all_finite`` and take an exact path when a NaN or Inf would spread
through their transform. This times each backend's prepared executor on ResNet's 3x3
layers (finite inputs, float32) with the check as shipped and with the check replaced by
``lambda x: True``, alternating the two in every round, and prints the ratio (median of the
rounds' ratios, and the ratio of the fastest times, steadier on a shared machine) and the
check's own median time as a share of the call without it.

    python benchmarks/nonfinite_check.py [ROUNDS] [BATCHES]
    e.g.  python benchmarks/nonfinite_check.py 31 1,8
"""

from __future__ import annotations

import sys
import time

# isort: off
import convengine  # noqa: F401  (before numpy: it limits OpenBLAS's idle spinning only if numpy is not loaded yet)
# isort: on

import numpy as np

from convengine.backends import fft as fft_module
from convengine.core.arrays import all_finite
from convengine.core.problem import ConvProblem

#: ResNet's 3x3 stride-1 layers: (channels, image side).
LAYERS = [(64, 56), (128, 28), (256, 14), (512, 7)]


def _contenders():
    """(backend, module whose ``all_finite`` its executor calls) for every lossy backend installed."""
    found = [(fft_module.FFTBackend(), fft_module)]
    try:
        from convengine_winograd import winograd as winograd_module
        from convengine_winograd.plugin import Winograd4Backend, WinogradBackend
    except ImportError:
        print("convengine-winograd is not installed: fft only")
    else:
        found += [(WinogradBackend(), winograd_module), (Winograd4Backend(), winograd_module)]
    return found


def _time(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main(rounds: int, batches: list[int]) -> None:
    rng = np.random.default_rng(0)
    print(f"{'backend':10s} {'layer':20s} {'with ms':>9s} {'without ms':>11s} {'ratio':>7s} {'of min':>7s} "
          f"{'check ms':>9s} {'share':>6s}")
    for n in batches:
        for c, side in LAYERS:
            problem = ConvProblem.from_shapes((n, c, side, side), (c, c, 3, 3), padding=1)
            x = rng.standard_normal(problem.input_shape).astype(np.float32)
            w = (rng.standard_normal(problem.weight_shape) / np.sqrt(9 * c)).astype(np.float32)
            check = [_time(all_finite, x) for _ in range(rounds)]
            for backend, module in _contenders():
                execute = backend.prepare(problem, w, None)
                for _ in range(3):
                    execute(x)  # compile, fill caches
                shipped = module.all_finite
                with_check, without = [], []
                for r in range(rounds):
                    order = (True, False) if r % 2 == 0 else (False, True)
                    for checked in order:
                        module.all_finite = shipped if checked else (lambda a: True)
                        try:
                            (with_check if checked else without).append(_time(execute, x))
                        finally:
                            module.all_finite = shipped
                ratios = np.array(with_check) / np.array(without)
                print(f"{backend.name:10s} {str(problem.input_shape):20s} {np.median(with_check) * 1e3:9.3f} "
                      f"{np.median(without) * 1e3:11.3f} {np.median(ratios):6.3f}x {min(with_check) / min(without):6.3f}x "
                      f"{np.median(check) * 1e3:9.3f} {np.median(check) / np.median(without):6.2%}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 21,
         [int(b) for b in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1, 8])
