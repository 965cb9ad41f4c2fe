"""``im2col``: unfold the input into columns, then one BLAS matrix product per group.

The unfold is a strided *view* of the padded input (no Python loop over pixels) that a
reshape copies into the column matrix ``(C_in/groups * kH * kW, out_h * out_w)``. 1x1
stride-1 unpadded convolutions are already a matrix product and skip the unfold. When the
column matrix of a whole batch would exceed ``max_buffer_bytes``, the unfold is tiled over
images and output rows, so memory stays bounded whatever the problem size.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..backend import EXACT, Backend
from ..environment import positive_int
from ..hookspecs import hookimpl
from ..problem import ConvProblem
from ..threads import apply_blas_threads

DEFAULT_MAX_BUFFER_BYTES = 256 * 2**20
# Fraction of the GEMM rate the column products reach, and memory passes per column byte
# (written by the unfold, read by the GEMM).
GEMM_EFFICIENCY = 0.85
UNFOLD_PASSES = 3


def _max_buffer_bytes() -> int:
    return positive_int("CONVENGINE_IM2COL_MAX_BYTES", DEFAULT_MAX_BUFFER_BYTES)


def column_bytes(problem: ConvProblem) -> int:
    """Size of the full column matrix for the whole batch (0 when the unfold is skipped)."""
    if problem.is_pointwise:
        return 0
    k = (problem.in_channels // problem.groups) * problem.kernel_h * problem.kernel_w
    return problem.batch * problem.groups * k * problem.out_height * problem.out_width * np.dtype(problem.dtype).itemsize


class Im2colBackend(Backend):
    name = "im2col"
    numerical_class = EXACT
    version = "1"

    def __init__(self, max_buffer_bytes: int | None = None):
        self.max_buffer_bytes = max_buffer_bytes

    def fingerprint(self) -> dict:
        from threadpoolctl import threadpool_info

        blas = [(i.get("internal_api"), i.get("version")) for i in threadpool_info() if i.get("user_api") == "blas"]
        return {"version": self.version, "numpy": np.__version__, "blas": blas}

    def estimate_seconds(self, problem: ConvProblem, machine) -> float:
        compute = problem.flops / (machine.gemm_flops(problem.dtype) * GEMM_EFFICIENCY)
        traffic = UNFOLD_PASSES * column_bytes(problem) / machine.bandwidth
        return compute + traffic + 2e-5 * problem.groups

    def prepare(self, problem: ConvProblem, weight, bias):
        g = problem.groups
        out_per_group = problem.out_channels // g
        w_mat = weight.reshape(g, out_per_group, -1).copy()  # (G, O/G, K)
        b = None if bias is None else bias.reshape(1, -1, 1, 1).copy()
        limit = self.max_buffer_bytes or _max_buffer_bytes()
        unfold = None if problem.is_pointwise else _Unfolder(problem, limit)

        def execute(x: np.ndarray) -> np.ndarray:
            apply_blas_threads()
            n = x.shape[0]
            if unfold is None:
                cols = x.reshape(n, g, -1, problem.height * problem.width)
                out = np.matmul(w_mat, cols).reshape(problem.output_shape)
            else:
                out = np.empty(problem.output_shape, x.dtype)
                for (n0, n1, r0, r1), cols in unfold.tiles(x):
                    out[n0:n1, :, r0:r1, :] = np.matmul(w_mat, cols).reshape(n1 - n0, -1, r1 - r0, problem.out_width)
            if b is not None:
                out += b
            return out

        return execute


class _Unfolder:
    """Produces the column matrix tile by tile: ``(images, G, K, rows * out_w)``."""

    def __init__(self, problem: ConvProblem, limit: int):
        self.problem = problem
        p = problem
        row_bytes = p.groups * (p.in_channels // p.groups) * p.kernel_h * p.kernel_w * p.out_width * np.dtype(p.dtype).itemsize
        image_bytes = row_bytes * p.out_height
        if image_bytes * max(p.batch, 1) <= limit:
            self.images_per_tile, self.rows_per_tile = max(p.batch, 1), p.out_height
        elif image_bytes <= limit:
            self.images_per_tile, self.rows_per_tile = limit // image_bytes, p.out_height
        else:
            self.images_per_tile, self.rows_per_tile = 1, max(1, limit // row_bytes)

    def tiles(self, x: np.ndarray):
        p = self.problem
        top, bottom, left, right = p.padding
        xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(p.padding) else x
        sn, sc, sh_, sw_ = xp.strides
        c_group = p.in_channels // p.groups
        view = as_strided(
            xp,
            shape=(xp.shape[0], p.groups, c_group, p.kernel_h, p.kernel_w, p.out_height, p.out_width),
            strides=(sn, sc * c_group, sc, sh_ * p.dilation[0], sw_ * p.dilation[1], sh_ * p.stride[0], sw_ * p.stride[1]),
            writeable=False,
        )
        k = c_group * p.kernel_h * p.kernel_w
        for n0 in range(0, xp.shape[0], self.images_per_tile):
            n1 = min(n0 + self.images_per_tile, xp.shape[0])
            for r0 in range(0, p.out_height, self.rows_per_tile):
                r1 = min(r0 + self.rows_per_tile, p.out_height)
                cols = view[n0:n1, :, :, :, :, r0:r1, :].reshape(n1 - n0, p.groups, k, (r1 - r0) * p.out_width)
                yield (n0, n1, r0, r1), cols


@hookimpl
def convengine_register_backends(register):
    register(Im2colBackend())
