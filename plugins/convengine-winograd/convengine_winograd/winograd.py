"""The executor: input transform (Numba), 16 or 36 batched GEMMs (numpy/BLAS), output transform (Numba).

Imported by :meth:`WinogradBackend.prepare`, never at plugin load, because it imports Numba.

A NaN or Inf in an input tile reaches all of the tile's outputs through the transforms (and
``Inf - Inf`` turns an Inf into NaN), where a direct convolution confines it to the outputs
whose 3x3 window holds it. Inputs (or weights) that are not all finite therefore take
:func:`direct_executor`, an exact path; checking costs one pass over the input per call
(measured in ``benchmarks/nonfinite_check.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import kernels, kernels_f4

try:  # the host's one thread setting for Numba and BLAS pools
    from convengine.runtime.threads import apply_blas_threads, numba_threads
except ImportError:  # pragma: no cover - an older convengine without the helpers: use the pools as they are
    def apply_blas_threads() -> None:
        return None

    def numba_threads() -> int:
        return 0

try:  # reused scratch buffers: no page faults per call (see convengine.runtime.workspace)
    from convengine.runtime.workspace import scratch
except ImportError:  # pragma: no cover - an older convengine: fresh buffers per call
    def scratch(purpose, shape, dtype):
        return np.empty(shape, dtype)

try:  # one BLAS pass over the input (see convengine.core.arrays)
    from convengine.core.arrays import all_finite
except ImportError:  # pragma: no cover - an older convengine: the element-wise test
    def all_finite(array) -> bool:
        return bool(np.isfinite(array).all())

#: Upper bound on the transformed input + GEMM output (``V`` + ``M``) held at once.
DEFAULT_MAX_BUFFER_BYTES = 256 * 2**20
#: Below that bound, batches are processed in chunks of images whose ``V`` + ``M`` take about
#: this many bytes, or four times the transformed weights if that is more: small chunks stay
#: in the last-level cache between the three phases, but every chunk streams all of ``U``
#: again, which only pays when ``U`` is small (measured on ResNet layers at batch 8 and 32).
CHUNK_TARGET_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Variant:
    """One Winograd algorithm F(m x m, 3x3): its tile size, weight transform and Numba kernels."""

    name: str
    m_tile: int
    g_matrix: np.ndarray
    input_transform: Callable
    output_transform: Callable

    @property
    def positions(self) -> int:
        """Transform positions: the input tile's area, (m + 2) ** 2."""
        return (self.m_tile + 2) ** 2


F2 = Variant("F(2x2,3x3)", kernels.M_TILE, kernels.G, kernels.input_transform, kernels.output_transform)
F4 = Variant("F(4x4,3x3)", kernels_f4.M_TILE, kernels_f4.G, kernels_f4.input_transform, kernels_f4.output_transform)
VARIANTS = {2: F2, 4: F4}


def buffer_bytes_per_image(problem, variant: Variant = F2) -> int:
    """Bytes of ``V`` and ``M`` for one image (the transformed input and the GEMM output)."""
    tiles_h, tiles_w = kernels.tile_counts(problem.out_height, problem.out_width, variant.m_tile)
    itemsize = np.dtype(problem.dtype).itemsize
    return variant.positions * (tiles_h * tiles_w + 64 // itemsize) * (problem.in_channels + problem.out_channels) * itemsize


def direct_executor(problem, weight: np.ndarray, bias: Optional[np.ndarray], *, relu: bool = False
                    ) -> Callable[..., np.ndarray]:
    """``execute(x, residual=None) -> y`` by the direct formula, nine taps summed over channels: exact,
    so NaN and Inf land where a direct convolution puts them. For inputs that are not all finite.

    Keeps a view of ``weight`` (the engine never changes the arrays it passes, see ``Backend.prepare``).
    """
    groups, (oh, ow) = problem.groups, (problem.out_height, problem.out_width)
    top, bottom, left, right = problem.padding
    w = weight.reshape(groups, problem.out_channels // groups, problem.in_channels // groups, 3, 3)
    b = None if bias is None else np.array(bias, copy=True).reshape(1, -1, 1, 1)

    def execute(x: np.ndarray, residual: Optional[np.ndarray] = None) -> np.ndarray:
        n = x.shape[0]
        xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        xg = xp.reshape(n, groups, problem.in_channels // groups, *xp.shape[2:])
        y = np.zeros((n, *w.shape[:2], oh, ow), x.dtype)
        for p in range(3):
            for q in range(3):
                y += np.einsum("ngchw,goc->ngohw", xg[..., p:p + oh, q:q + ow], w[..., p, q], optimize=True)
        y = y.reshape(problem.output_shape)
        if b is not None:
            y += b
        if residual is not None:
            y += residual
        return np.maximum(y, 0, out=y) if relu else y  # maximum keeps NaN, as torch's relu does

    return execute


def build_executor(problem, weight: np.ndarray, bias: Optional[np.ndarray],
                   max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES, *, relu: bool = False,
                   variant: Variant = F2) -> Callable[..., np.ndarray]:
    """``execute(x, residual=None) -> y``; the output transform adds ``residual`` and applies ``relu``.

    Inputs that are not all finite go through :func:`direct_executor`; so does every input when the
    weights are not all finite.
    """
    exact = direct_executor(problem, weight, bias, relu=relu)
    if not all_finite(weight):
        return exact
    dtype = np.dtype(problem.dtype)
    groups = problem.groups
    c_in_g = problem.in_channels // groups
    c_out_g = problem.out_channels // groups
    tiles_h, tiles_w = kernels.tile_counts(problem.out_height, problem.out_width, variant.m_tile)
    top, _, left, _ = problem.padding
    u = kernels.transform_weights(weight, groups, variant.g_matrix)  # (G, positions, C_out_g, C_in_g)
    b = np.zeros(problem.out_channels, dtype) if bias is None else np.array(bias, dtype=dtype, copy=True)
    target = min(max_buffer_bytes, max(CHUNK_TARGET_BYTES, 4 * u.nbytes))
    images_per_chunk = max(1, target // max(buffer_bytes_per_image(problem, variant), 1))
    output_shape = problem.output_shape
    per_image_tiles = tiles_h * tiles_w

    def execute(x: np.ndarray, residual: Optional[np.ndarray] = None) -> np.ndarray:
        x = np.ascontiguousarray(x)
        if not all_finite(x):
            return exact(x, residual)
        n_images = x.shape[0]
        y = np.empty(output_shape, dtype)
        for n0 in range(0, n_images, images_per_chunk):
            n1 = min(n0 + images_per_chunk, n_images)
            t = (n1 - n0) * per_image_tiles
            t_pad = kernels.padded_tiles(t, dtype.itemsize)
            v = scratch("winograd.input", (groups, c_in_g, variant.positions, t_pad), dtype)
            m = scratch("winograd.product", (groups, c_out_g, variant.positions, t_pad), dtype)
            numba_threads()
            variant.input_transform(x[n0:n1], v, top, left, tiles_h, tiles_w, c_in_g)
            v_k = v.transpose(0, 2, 1, 3)[..., :t]  # (G, 16, C_in_g, T) views, unit column stride
            m_k = m.transpose(0, 2, 1, 3)[..., :t]  # (G, 16, C_out_g, T)
            if c_in_g == 1:  # depthwise-like: each product is an outer product, no reduction
                np.multiply(u, v_k, out=m_k)
            else:
                apply_blas_threads()
                np.matmul(u, v_k, out=m_k)  # one BLAS GEMM per (group, position)
            numba_threads()
            y_chunk = y[n0:n1]
            res_chunk = y_chunk if residual is None else residual[n0:n1]
            variant.output_transform(m, b, y_chunk, tiles_h, tiles_w, c_out_g, res_chunk, residual is not None, relu)
        return y

    return execute
