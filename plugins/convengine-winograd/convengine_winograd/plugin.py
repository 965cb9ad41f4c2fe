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
#: Fraction of the machine's GEMM rate the 16 position GEMMs reach. Their K is the channel
#: count (64-512) and each is a separate BLAS call that wakes BLAS's sleeping threads
#: (convengine sets OPENBLAS_THREAD_TIMEOUT so that they do not spin), so inside ResNet-18
#: they measured 0.4-0.5 of it (0.8 on a lone layer timed back to back).
GEMM_EFFICIENCY = 0.45
#: Memory passes per transformed element: the input transform writes V and the GEMM reads it;
#: the GEMM writes M and the output transform reads it.
TRANSFORM_PASSES = 2
#: GEMM columns (tiles) from which the position GEMMs run at full efficiency; fewer, and the
#: time goes into streaming U (F(4x4) on a 7x7 image has 4 tiles: 25 GFLOP/s measured).
MIN_FULL_COLUMNS = 16
#: Fixed cost per call besides its two parallel kernel launches (allocations), and per group the
#: 16 small matrix products numpy issues (measured ~0.3 us each; none when C_in/groups == 1,
#: where the products are one broadcast multiply).
OVERHEAD_S = 2e-5
OVERHEAD_PER_GROUP_S = 5e-6

#: Normwise relative error bounds of F(2x2, 3x3), per dtype (measured: see README.md).
ERROR_BOUNDS = {"float32": 1e-5, "float64": 1e-13}
#: F(4x4, 3x3): larger transform constants, larger error (measured up to 6.2e-6 float32 and
#: 1.5e-14 float64 on 512-channel layers; bounds with a margin).
F4_ERROR_BOUNDS = {"float32": 5e-5, "float64": 1e-12}


class WinogradBackend(convengine.Backend):
    """Winograd F(2x2, 3x3) for 3x3, stride-1, dilation-1 convolutions (any padding, groups)."""

    name = "winograd"
    device = "cpu"
    numerical_class = convengine.LOSSY
    version = __version__
    #: Output tile side m of F(m x m, 3x3), and its error bounds.
    m_tile = 2
    bounds = ERROR_BOUNDS
    transform_passes = TRANSFORM_PASSES

    def availability(self) -> Optional[str]:
        try:
            import numba  # noqa: F401  (only whether Numba is installed)
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

    @property
    def positions(self) -> int:
        """Transform positions (products per tile and channel pair): the input tile's (m + 2) ** 2."""
        return (self.m_tile + 2) ** 2

    def error_bound(self, dtype: str) -> float:
        return self.bounds[dtype]

    def estimate_seconds(self, problem: convengine.ConvProblem, machine) -> Optional[float]:
        if self.supports(problem) is not None:
            return None
        groups = problem.groups
        c_in_g = problem.in_channels // groups
        c_out_g = problem.out_channels // groups
        m = self.m_tile
        tiles = problem.batch * -(-problem.out_height // m) * -(-problem.out_width // m)
        itemsize = np.dtype(problem.dtype).itemsize
        gemm_flops = self.positions * tiles * c_in_g * c_out_g * 2 * groups
        # each of the GEMMs has `tiles` columns: below MIN_FULL_COLUMNS BLAS streams U for little work
        efficiency = GEMM_EFFICIENCY * min(1.0, tiles / MIN_FULL_COLUMNS)
        compute = gemm_flops / (machine.gemm_flops(problem.dtype) * efficiency)
        transformed = self.positions * tiles * (problem.in_channels + problem.out_channels) * itemsize
        plain = (problem.batch * (problem.in_channels * problem.height * problem.width
                                  + problem.out_channels * problem.out_height * problem.out_width)) * itemsize
        weights = self.positions * c_out_g * c_in_g * groups * itemsize  # U is streamed once per call
        traffic = (self.transform_passes * transformed + plain + weights) / machine.bandwidth
        per_group = OVERHEAD_PER_GROUP_S * groups if c_in_g > 1 else 0.0
        # two parallel Numba kernels (input and output transforms) and the allocations
        launches = 2 * getattr(machine, "parallel_launch_s", 5e-6)
        return compute + traffic + launches + OVERHEAD_S + per_group

    def extra_weight_bytes(self, problem: convengine.ConvProblem) -> int:
        """The transformed weights ``U`` (``positions`` values per channel pair), held beside the
        weights themselves (its exact path runs on those): the engine's weight-memory budget."""
        pairs = problem.out_channels * (problem.in_channels // problem.groups)
        return self.positions * pairs * np.dtype(problem.dtype).itemsize

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
        from .winograd import VARIANTS, build_executor  # imports Numba and compiles (or loads) the kernels

        relu = epilogue is not None and epilogue.activation == "relu"
        return build_executor(problem, weight, bias, relu=relu, variant=VARIANTS[self.m_tile])


class Winograd4Backend(WinogradBackend):
    """Winograd F(4x4, 3x3): 2.25x fewer GEMM multiplications than F(2x2, 3x3), a larger error,
    and GEMMs with a quarter of the columns (few tiles on small images: slow there)."""

    name = "winograd4"
    m_tile = 4
    bounds = F4_ERROR_BOUNDS
    #: Its 6x6 transforms cost about 6x per element what the traffic model says; measured on ResNet
    #: layers, F(4x4) lost to F(2x2) everywhere but 512->512 at 7x7, batch 32 (27.5 vs 34.7 ms).
    transform_passes = 12


@convengine.hookimpl
def convengine_register_backends(register):
    register(WinogradBackend())
    register(Winograd4Backend())
