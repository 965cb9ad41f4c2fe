"""The ``winograd`` backend and the hook that registers it.

Uses only convengine's public API (``Backend``, ``LOSSY``, ``hookimpl``, ``ConvProblem``).
Nothing heavy is imported here: this module is loaded at every convengine start-up, and
Numba plus the kernels are imported in :meth:`WinogradBackend.prepare`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

import convengine

from . import __version__

# -- cost model constants (see WinogradBackend.estimate_seconds) ------------------------------
#: Fraction of the machine's GEMM rate the 16 position GEMMs reach.
GEMM_EFFICIENCY = 0.8
#: Memory passes per transformed element: the input transform writes V and the GEMM reads it;
#: the GEMM writes M and the output transform reads it.
TRANSFORM_PASSES = 2
#: Fixed cost per call (two parallel kernel launches, allocations), and per group the
#: 16 small matrix products numpy issues (measured ~0.3 us each; none when C_in/groups == 1,
#: where the products are one broadcast multiply).
OVERHEAD_S = 3e-5
OVERHEAD_PER_GROUP_S = 5e-6

#: Normwise relative error bounds of F(2x2, 3x3), per dtype (measured: see README.md).
ERROR_BOUNDS = {"float32": 1e-5, "float64": 1e-13}

POSITIONS = 16  # (2 + 3 - 1) ** 2 transform positions


class WinogradBackend(convengine.Backend):
    """Winograd F(2x2, 3x3) for 3x3, stride-1, dilation-1 convolutions (any padding, groups)."""

    name = "winograd"
    device = "cpu"
    numerical_class = convengine.LOSSY
    version = __version__

    def availability(self) -> Optional[str]:
        try:
            import numba  # noqa: F401
        except ImportError as exc:
            return f"numba is not importable: {exc}"
        return None

    def supports(self, problem: convengine.ConvProblem) -> Optional[str]:
        if (problem.kernel_h, problem.kernel_w) != (3, 3):
            return f"only 3x3 kernels (got {problem.kernel_h}x{problem.kernel_w})"
        if tuple(problem.stride) != (1, 1):
            return f"only stride 1 (got stride {problem.stride[0]}x{problem.stride[1]})"
        if tuple(problem.dilation) != (1, 1):
            return f"only dilation 1 (got dilation {problem.dilation[0]}x{problem.dilation[1]})"
        if problem.dtype not in ERROR_BOUNDS:
            return f"only float32 and float64 (got {problem.dtype})"
        return None

    def error_bound(self, dtype: str) -> float:
        return ERROR_BOUNDS[dtype]

    def estimate_seconds(self, problem: convengine.ConvProblem, machine) -> Optional[float]:
        if self.supports(problem) is not None:
            return None
        groups = problem.groups
        c_in_g = problem.in_channels // groups
        c_out_g = problem.out_channels // groups
        tiles = problem.batch * -(-problem.out_height // 2) * -(-problem.out_width // 2)
        itemsize = np.dtype(problem.dtype).itemsize
        gemm_flops = POSITIONS * tiles * c_in_g * c_out_g * 2 * groups
        compute = gemm_flops / (machine.gemm_flops(problem.dtype) * GEMM_EFFICIENCY)
        transformed = POSITIONS * tiles * (problem.in_channels + problem.out_channels) * itemsize
        plain = (problem.batch * (problem.in_channels * problem.height * problem.width
                                  + problem.out_channels * problem.out_height * problem.out_width)) * itemsize
        weights = POSITIONS * c_out_g * c_in_g * groups * itemsize  # U is streamed once per call
        traffic = (TRANSFORM_PASSES * transformed + plain + weights) / machine.bandwidth
        per_group = OVERHEAD_PER_GROUP_S * groups if c_in_g > 1 else 0.0
        return compute + traffic + OVERHEAD_S + per_group

    def fingerprint(self) -> dict:
        import numba

        # numpy's BLAS is in convengine's host fingerprint; the loaded BLAS copies are not
        # listed here because which ones are loaded depends on what else the process imported.
        return {"version": self.version, "numba": numba.__version__, "numpy": np.__version__}

    def supports_epilogue(self, problem: convengine.ConvProblem, epilogue) -> Optional[str]:
        if epilogue.activation not in (None, "relu"):
            return f"activation {epilogue.activation!r} is not fused (only relu)"
        return None  # the output transform adds the residual and applies the ReLU in registers

    def prepare(self, problem: convengine.ConvProblem, weight, bias, epilogue=None):
        reason = self.supports(problem)
        if reason is not None:
            raise ValueError(f"winograd cannot run {problem}: {reason}")
        from .winograd import build_executor  # imports Numba and compiles (or loads) the kernels

        relu = epilogue is not None and epilogue.activation == "relu"
        return build_executor(problem, weight, bias, relu=relu)


@convengine.hookimpl
def convengine_register_backends(register):
    register(WinogradBackend())
