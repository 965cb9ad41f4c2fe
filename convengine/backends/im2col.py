"""``im2col``: unfold the input into columns, then one BLAS matrix product per group.

The unfold is a one-thread Numba kernel that writes the column matrix
``(C_in/groups * kH * kW, out_h * out_w)`` of one image straight from the input, applying
padding on the fly (no padded copy of the input, no Python loop over pixels); each group is
then one GEMM through ``numpy.matmul``, written directly into the output. 1x1 stride-1
unpadded convolutions are already a matrix product and skip the unfold. When one image's
column matrix would exceed ``max_buffer_bytes`` it is built a band of output rows at a time,
so memory stays bounded whatever the problem size. The products can land in a channel slice
of a larger buffer (``out=``, a concatenation's place): BLAS writes strided rows as cheaply.
"""

from __future__ import annotations

import numpy as np

from ..core.contract import EXACT
from ..core.epilogue import NONE, Epilogue
from ..core.hookspecs import hookimpl
from ..core.problem import ConvProblem
from ..runtime.environment import positive_int
from ..runtime.threads import apply_blas_threads, numba_threads
from ..runtime.workspace import scratch
from ._numba import NumbaBackend

DEFAULT_MAX_BUFFER_BYTES = 256 * 2**20
# Fraction of the GEMM rate the column products reach, and memory passes per column byte
# (the unfold's write costs two: the cache line is read for ownership first; the GEMM reads it).
GEMM_EFFICIENCY = 0.85
UNFOLD_PASSES = 3


def _max_buffer_bytes() -> int:
    return positive_int("CONVENGINE_IM2COL_MAX_BYTES", DEFAULT_MAX_BUFFER_BYTES)


def column_bytes(problem: ConvProblem) -> int:
    """Size of the column matrices of the whole batch (0 when the unfold is skipped)."""
    if problem.is_pointwise:
        return 0
    k = (problem.in_channels // problem.groups) * problem.kernel_h * problem.kernel_w
    return problem.batch * problem.groups * k * problem.out_height * problem.out_width * np.dtype(problem.dtype).itemsize


class Im2colBackend(NumbaBackend):
    name = "im2col"
    numerical_class = EXACT
    version = "2"

    def __init__(self, max_buffer_bytes: int | None = None):
        self.max_buffer_bytes = max_buffer_bytes

    def estimate_seconds(self, problem: ConvProblem, machine) -> float:
        compute = problem.flops / (machine.gemm_flops(problem.dtype) * GEMM_EFFICIENCY)
        # BLAS reads the weights and writes its packed copy of them in every GEMM call, one
        # per image and group: on late, small-image layers (512->512 at 7x7: 9 MB of weights,
        # 49 columns) that is what the GEMM waits on, and at batch 32 it is paid 32 times
        # (2048->512 1x1 at 7x7: 38 ms measured, against 18.5 predicted without it)
        # (each group's call packs that group's share: per image, all the weights once)
        weights = 2 * problem.batch * int(np.prod(problem.weight_shape)) * np.dtype(problem.dtype).itemsize
        # bias (and a fused epilogue) is one more read-and-write pass over the output
        finish = 2 * int(np.prod(problem.output_shape)) * np.dtype(problem.dtype).itemsize if problem.has_bias else 0
        traffic = (UNFOLD_PASSES * column_bytes(problem) + weights + finish) / machine.bandwidth
        launches = (0 if problem.is_pointwise else problem.batch) + (1 if problem.has_bias else 0)  # Numba kernels
        return compute + traffic + launches * machine.parallel_launch_s + 2e-5 * problem.groups

    def supports_epilogue(self, problem: ConvProblem, epilogue: Epilogue):
        return None  # bias, residual and activation share one pass after the GEMM

    def supports_output_slice(self, problem: ConvProblem, epilogue: Epilogue, step: int):
        # channels one plane apart: each image's slice is one contiguous run (a GEMM's rows)
        return None if step == 1 else "only channel slices with step 1 (each image's slice one contiguous block)"

    def kernels(self, problem: ConvProblem, epilogue: Epilogue = NONE):
        from numba import types

        from ..runtime.precompile import Kernel

        def array(ndim):
            return types.Array(getattr(types, problem.dtype), ndim, "C")

        listed = []
        if not problem.is_pointwise:
            listed.append(Kernel(f"{__package__}._im2col_kernels", "unfold",
                                 (array(3), array(2)) + (types.int64,) * 10, cost=1.0))
        if problem.has_bias or epilogue:
            listed.append(Kernel(f"{__package__}._epilogue_kernels", "bias_residual_activation",
                                 (array(3), array(1), array(3), types.boolean, types.int64, types.float64, types.float64),
                                 cost=1.5))
        return listed

    def prepare(self, problem: ConvProblem, weight, bias, epilogue: Epilogue = NONE):
        g = problem.groups
        out_per_group = problem.out_channels // g
        w_mat = weight.reshape(g, out_per_group, -1)  # (G, O/G, K): a view, see Backend.prepare
        hw_out = problem.out_height * problem.out_width
        finish = _finisher(problem, bias, epilogue)
        if problem.is_pointwise:
            def execute(x: np.ndarray, residual=None, out=None) -> np.ndarray:
                apply_blas_threads()
                y = np.empty(problem.output_shape, x.dtype) if out is None else out.view
                np.matmul(w_mat, x.reshape(x.shape[0], g, -1, hw_out), out=_viewed(y, (x.shape[0], g, out_per_group, hw_out)))
                return finish(y, residual)

            return execute

        from ._im2col_kernels import unfold

        k_rows = problem.in_channels * problem.kernel_h * problem.kernel_w  # all groups' column rows
        row_bytes = k_rows * problem.out_width * np.dtype(problem.dtype).itemsize
        band = max(1, min(problem.out_height, (self.max_buffer_bytes or _max_buffer_bytes()) // row_bytes))
        geometry = (problem.kernel_h, problem.kernel_w, *problem.stride, *problem.dilation,
                    problem.padding[0], problem.padding[2])

        def execute(x: np.ndarray, residual=None, out=None) -> np.ndarray:
            apply_blas_threads()
            numba_threads()
            y = np.empty(problem.output_shape, x.dtype) if out is None else out.view
            for n in range(x.shape[0]):
                for r0 in range(0, problem.out_height, band):
                    r1 = min(r0 + band, problem.out_height)
                    cols = scratch("im2col.columns", (k_rows, (r1 - r0) * problem.out_width), x.dtype)
                    unfold(x[n], cols, *geometry, r0, problem.out_width)
                    cols = cols.reshape(g, -1, cols.shape[1])
                    if band == problem.out_height:  # the whole image: multiply straight into the output
                        np.matmul(w_mat, cols, out=_viewed(y[n], (g, out_per_group, hw_out)))
                    else:
                        y[n, :, r0:r1, :] = np.matmul(w_mat, cols).reshape(-1, r1 - r0, problem.out_width)
            return finish(y, residual)

        return execute


def _viewed(array: np.ndarray, shape: tuple) -> np.ndarray:
    """``array`` reshaped to ``shape`` as a view: a product written into a reshaped copy would be lost."""
    view = array.view()
    view.shape = shape  # raises where only a copy could have that shape
    return view


def _finisher(problem: ConvProblem, bias, epilogue: Epilogue):
    """``finish(out, residual) -> out``: bias and epilogue in one in-place pass (nothing when neither).

    ``out`` may be a channel slice of a larger buffer (each image one contiguous block): then one pass per image.
    """
    if bias is None and not epilogue:
        return lambda out, residual: out
    from ._epilogue_kernels import bias_residual_activation

    b = np.zeros(problem.out_channels, problem.dtype) if bias is None else bias
    act, p0, p1 = epilogue.kernel_activation()

    def finish(out: np.ndarray, residual) -> np.ndarray:
        numba_threads()
        images = [out] if out.flags.c_contiguous else [out[n:n + 1] for n in range(out.shape[0])]
        for n, y in enumerate(images):
            flat = _viewed(y, (y.shape[0], y.shape[1], -1))
            res = flat if residual is None else residual[n:n + len(y)].reshape(flat.shape)
            bias_residual_activation(flat, b, res, residual is not None, act, p0, p1)
        return out

    return finish


@hookimpl
def convengine_register_backends(register):
    register(Im2colBackend())
