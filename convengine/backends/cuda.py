"""The built-in ``cuda`` backend: direct convolution on an NVIDIA GPU through numba.cuda.

numba is imported inside the methods, never at module level: this module is loaded at
start-up for every command (it is a built-in plugin), and importing numba costs about a
second. The kernels live in :mod:`convengine.backends._cuda_kernels`, imported by
:meth:`CudaBackend.prepare`.

With ``NUMBA_ENABLE_CUDASIM=1`` the same code runs on Numba's CUDA simulator (one Python
thread per GPU thread): correct, so tests run on machines without a GPU, but far too slow
to be chosen for speed, which :meth:`CudaBackend.estimate_seconds` reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..core.contract import EXACT, Backend, Executor
from ..core.hookspecs import hookimpl
from ..core.problem import ConvProblem

#: Largest output tile (per axis) one thread block computes: 16 x 16 = 256 threads.
TILE = 16
#: Dynamic shared memory a block may use on every CUDA GPU without an opt-in.
SHARED_BYTES = 48 * 1024
#: Grid x limit; the launch enumerates every (n, out_channel, tile) along it.
MAX_BLOCKS = 2**31 - 1


@dataclass(frozen=True)
class LaunchPlan:
    """How a problem is launched: block shape, block count, and the shared-memory patch.

    ``patch`` is the ``(rows, cols)`` of input one tile reads, or ``None`` when it does
    not fit in :data:`SHARED_BYTES` and the direct (non-tiled) kernel runs instead.
    """

    block: tuple[int, int]  # (threads along output columns, along output rows)
    blocks: int
    patch: Optional[tuple[int, int]]
    shared_bytes: int


def launch_plan(problem: ConvProblem) -> LaunchPlan:
    """Tiles of up to TILE x TILE outputs, shrunk to the output so small planes waste no threads."""
    tile_h, tile_w = min(TILE, problem.out_height), min(TILE, problem.out_width)
    tiles = -(-problem.out_height // tile_h) * -(-problem.out_width // tile_w)
    blocks = problem.batch * problem.out_channels * tiles
    patch = (
        (tile_h - 1) * problem.stride[0] + problem.effective_kernel[0],
        (tile_w - 1) * problem.stride[1] + problem.effective_kernel[1],
    )
    shared_bytes = patch[0] * patch[1] * np.dtype(problem.dtype).itemsize
    if shared_bytes > SHARED_BYTES:
        return LaunchPlan((tile_w, tile_h), blocks, None, 0)
    return LaunchPlan((tile_w, tile_h), blocks, patch, shared_bytes)


class CudaBackend(Backend):
    """Direct convolution on the GPU, input tiles staged in shared memory."""

    name = "cuda"
    device = "cuda"
    numerical_class = EXACT
    version = "1"

    def availability(self) -> Optional[str]:
        try:
            from numba import cuda

            if cuda.is_available():
                return None
        except Exception as exc:  # numba missing or broken: say so rather than fail
            return f"numba.cuda cannot be used: {type(exc).__name__}: {exc}"
        detail = getattr(cuda, "cuda_error", lambda: None)()  # the driver's own words, when numba has them
        reason = (
            "no CUDA GPU or driver found (numba.cuda.is_available() is False); "
            "set NUMBA_ENABLE_CUDASIM=1 to run on Numba's CUDA simulator"
        )
        return f"{reason}: {' '.join(str(detail).split())}" if detail else reason

    def supports(self, problem: ConvProblem) -> Optional[str]:
        blocks = launch_plan(problem).blocks
        if blocks > MAX_BLOCKS:
            return f"needs {blocks} thread blocks, more than a CUDA grid holds ({MAX_BLOCKS})"
        return None

    def estimate_seconds(self, problem: ConvProblem, machine) -> Optional[float]:
        """Transfers over PCIe plus compute plus launch; the simulator is priced out of any choice."""
        import numba

        if numba.config.ENABLE_CUDASIM:
            return 1.0 + problem.flops / 1e6
        elements = int(np.prod(problem.input_shape)) + int(np.prod(problem.output_shape))
        moved = elements * np.dtype(problem.dtype).itemsize
        return moved / 12e9 + problem.flops / 5e12 + 2e-5

    def fingerprint(self) -> dict:
        import numba

        info = {"version": self.version, "numba": numba.__version__, "simulator": bool(numba.config.ENABLE_CUDASIM)}
        if info["simulator"]:
            return info
        from numba import cuda

        def driver_version() -> str:
            from numba.cuda.cudadrv.driver import driver

            return "%d.%d" % driver.get_version()

        probes = {
            "gpu": lambda: _text(cuda.get_current_device().name),
            "compute_capability": lambda: "%d.%d" % cuda.get_current_device().compute_capability,
            "driver": driver_version,
        }
        for key, probe in probes.items():
            try:
                info[key] = probe()
            except Exception:  # no GPU, or an older numba without the probe: leave the key out
                pass
        return info

    def prepare(self, problem: ConvProblem, weight: np.ndarray, bias: Optional[np.ndarray]) -> Executor:
        """Upload weight and bias once; each call moves only the input and output."""
        from numba import cuda

        from . import _cuda_kernels

        dtype = np.dtype(problem.dtype)
        plan = launch_plan(problem)
        if bias is None:  # the kernels start accumulating from the bias
            bias = np.zeros(problem.out_channels, dtype)
        d_weight = cuda.to_device(np.ascontiguousarray(weight, dtype))
        d_bias = cuda.to_device(np.ascontiguousarray(bias, dtype))
        args = (*problem.stride, *problem.dilation, problem.padding[0], problem.padding[2])
        if plan.patch is None:
            kernel = _cuda_kernels.direct
        else:
            kernel = _cuda_kernels.TILED[problem.dtype]
            args += plan.patch

        def execute(x: np.ndarray) -> np.ndarray:
            y = np.empty(problem.output_shape, dtype)
            if y.size == 0:  # batch 0: a launch of zero blocks is an error on a real GPU
                return y
            stream = cuda.stream()  # per call, so concurrent calls do not serialise on one stream
            d_x = cuda.to_device(np.ascontiguousarray(x, dtype), stream=stream)
            d_y = cuda.device_array(problem.output_shape, dtype, stream=stream)
            kernel[plan.blocks, plan.block, stream, plan.shared_bytes](d_x, d_weight, d_bias, d_y, *args)
            d_y.copy_to_host(y, stream=stream)
            stream.synchronize()
            return y

        return execute


def _text(name) -> str:
    """Device names are bytes in older numba releases and str in newer ones."""
    return name.decode() if isinstance(name, bytes) else str(name)


@hookimpl
def convengine_register_backends(register):
    register(CudaBackend())
