"""The Winograd F(m x m, 3 x 3) transforms in plain Python: the kernels' IR and the weight packing read them.

Why plain Python: the matrices are the algorithm, and the same numbers must reach the IR that
transforms inputs and outputs (``_simd``, which emits one multiply-add per non-zero
coefficient) and the float64 weight transform (``prepare``); the cost model reads the tile sizes
without importing Numba.

F(4x4, 3x3) uses the interpolation points 0, 1, -1, 2, -2 and infinity (Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks", 2016): each 4x4 block of outputs from a 6x6
block of inputs with 36 products per channel pair instead of 144. The matrices are keyed by
``m`` so that another tile size is one entry more.
"""

from __future__ import annotations

from fractions import Fraction as F

import numpy as np

#: Output pixels per tile side of the kernels: F(4x4, 3x3).
TILE = 4

#: ``m`` (output pixels per tile side) -> (B^T, G, A^T): ``V = B^T d B`` for an input tile ``d`` of
#: ``m + 2`` pixels a side, ``U = G g G^T`` for a 3x3 kernel ``g``, ``Y = A^T (U * V) A``.
MATRICES = {
    4: (
        [[4, 0, -5, 0, 1, 0],
         [0, -4, -4, 1, 1, 0],
         [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0],
         [0, 2, -1, -2, 1, 0],
         [0, 4, 0, -5, 0, 1]],
        [[F(1, 4), 0, 0],
         [F(-1, 6), F(-1, 6), F(-1, 6)],
         [F(-1, 6), F(1, 6), F(-1, 6)],
         [F(1, 24), F(1, 12), F(1, 6)],
         [F(1, 24), F(-1, 12), F(1, 6)],
         [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0],
         [0, 1, -1, 2, -2, 0],
         [0, 1, 1, 4, 4, 0],
         [0, 1, -1, 8, -8, 1]],
    ),
}


def input_matrix(m: int) -> list:
    """B^T as rows of floats (``m + 2`` square)."""
    return [[float(c) for c in row] for row in MATRICES[m][0]]


def output_matrix(m: int) -> list:
    """A^T as rows of floats (``m`` x ``m + 2``)."""
    return [[float(c) for c in row] for row in MATRICES[m][2]]


def transformed_weights(weight: np.ndarray, m: int) -> np.ndarray:
    """``U = G g G^T`` for every (output, input) channel pair of ``weight`` (O, C, 3, 3), as
    ``(O, C, m + 2, m + 2)`` float32: computed in float64 and rounded once."""
    g = np.array([[float(c) for c in row] for row in MATRICES[m][1]])
    return np.einsum("ai,ocij,bj->ocab", g, weight.astype(np.float64), g, optimize=True).astype(np.float32)
