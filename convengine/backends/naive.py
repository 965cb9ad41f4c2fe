"""``naive``: the convolution's defining sum as plain nested loops, compiled with Numba.

It supports every problem (any stride, padding, dilation, groups), which makes it the
fallback that guarantees dispatch always finds a backend. Its speed is that of plain
loops: useful for small layers and as a second opinion, not for ResNet-sized work.
"""

from __future__ import annotations

import numpy as np

from ..core.contract import EXACT
from ..core.hookspecs import hookimpl
from ..core.problem import ConvProblem
from ..runtime.threads import numba_threads
from ._numba import NumbaBackend

# Fraction of the machine's GEMM rate that the plain loops reach, vectorised along rows (order of magnitude).
PLAIN_LOOP_EFFICIENCY = 0.025


class NaiveBackend(NumbaBackend):
    name = "naive"
    numerical_class = EXACT
    version = "2"

    def estimate_seconds(self, problem: ConvProblem, machine) -> float:
        rate = machine.gemm_flops(problem.dtype) * PLAIN_LOOP_EFFICIENCY
        return problem.flops / rate + machine.parallel_launch_s

    def prepare(self, problem: ConvProblem, weight, bias):
        from ._naive_kernels import loop_conv

        dtype = np.dtype(problem.dtype)
        w = weight.copy()
        b = bias.copy() if bias is not None else np.zeros(problem.out_channels, dtype)
        top, bottom, left, right = problem.padding
        (sh, sw), (dh, dw) = problem.stride, problem.dilation

        def execute(x: np.ndarray) -> np.ndarray:
            xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(problem.padding) else x
            out = np.empty(problem.output_shape, dtype)
            numba_threads()
            loop_conv(xp, w, b, out, sh, sw, dh, dw, problem.groups)
            return out

        return execute


@hookimpl
def convengine_register_backends(register):
    register(NaiveBackend())
