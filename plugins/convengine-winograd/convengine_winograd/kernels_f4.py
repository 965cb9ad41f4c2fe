"""Winograd F(4x4, 3x3): 6x6 input tiles, 4x4 output tiles, 36 positions.

Same layout and phases as :mod:`.kernels` (F(2x2, 3x3)); only the transforms differ. A
4x4 output tile costs 36 products per (in, out) channel pair instead of 4 x 9 = 144: the
GEMM phase does 2.25x fewer multiplications than F(2x2, 3x3) and 4x fewer than the direct
method, at the price of larger transform constants and a larger rounding error
(:data:`convengine_winograd.plugin.F4_ERROR_BOUNDS`). Matrices (Lavin & Gray, 2016, points
0, +-1, +-2)::

    B^T = [4  0 -5  0 1 0]    G = [ 1/4     0     0]    A^T = [1 1  1 1  1 0]
          [0 -4 -4  1 1 0]        [-1/6  -1/6  -1/6]          [0 1 -1 2 -2 0]
          [0  4 -4 -1 1 0]        [-1/6   1/6  -1/6]          [0 1  1 4  4 0]
          [0 -2 -1  2 1 0]        [1/24  1/12   1/6]          [0 1 -1 8 -8 1]
          [0  2 -1 -2 1 0]        [1/24 -1/12   1/6]
          [0  4  0 -5 0 1]        [   0     0     1]

Position ``k = 6 * row + col`` of the 6x6 transformed tile.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .kernels import finish_pixel, padded_plane  # the same padding and epilogue as F(2x2, 3x3)

M_TILE = 4
ALPHA = 6
POSITIONS = ALPHA * ALPHA

G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=float)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=float)


# float32 constants: exact, and they keep float32 data in float32 arithmetic (a float64
# literal would promote every operation); float64 data stays float64.
_2 = np.float32(2.0)
_4 = np.float32(4.0)
_5 = np.float32(5.0)
_8 = np.float32(8.0)


@numba.njit(inline="always")
def _bt(d0, d1, d2, d3, d4, d5):
    """``B^T d`` for one 6-vector."""
    return (_4 * d0 - _5 * d2 + d4,
            d3 + d4 - _4 * (d1 + d2),
            d4 - d3 + _4 * (d1 - d2),
            d4 - d2 + _2 * (d3 - d1),
            d4 - d2 + _2 * (d1 - d3),
            _4 * d1 - _5 * d3 + d5)


@numba.njit(inline="always")
def _at(m0, m1, m2, m3, m4, m5):
    """``A^T m`` for one 6-vector (4 results)."""
    s = m1 + m2
    d = m1 - m2
    return (m0 + s + m3 + m4, d + _2 * (m3 - m4), s + _4 * (m3 + m4), d + _8 * (m3 - m4) + m5)


@numba.njit(parallel=True, cache=True, nogil=True)
def input_transform(x, v, top, left, tiles_h, tiles_w, c_group):
    """``V = B^T d B`` for every 6x6 tile (stride 4) of every (image, channel) plane of ``x``.

    ``v`` is ``(groups, C_in_g, 36, T_pad)``; padding is applied in a per-plane scratch buffer.
    A row of tiles at a time, in two vectorisable passes: ``B^T`` down the six input rows
    (whole rows at once), then ``B`` along each tile's six columns, for all tiles of the row.
    """
    n_images, channels = x.shape[:2]
    hp = 4 * tiles_h + 2
    wp = 4 * tiles_w + 2
    tiles = tiles_h * tiles_w
    for job in prange(n_images * channels):
        n = job // channels
        c = job % channels
        buf = padded_plane(x[n, c], hp, wp, top, left)
        out = v[c // c_group, c % c_group]
        w = np.empty((6, wp), x.dtype)
        for ty in range(tiles_h):
            i = 4 * ty
            for q in range(wp):  # B^T down the columns of the six rows
                w0, w1, w2, w3, w4, w5 = _bt(buf[i, q], buf[i + 1, q], buf[i + 2, q], buf[i + 3, q], buf[i + 4, q],
                                             buf[i + 5, q])
                w[0, q] = w0
                w[1, q] = w1
                w[2, q] = w2
                w[3, q] = w3
                w[4, q] = w4
                w[5, q] = w5
            t0 = n * tiles + ty * tiles_w
            for k in range(6):  # B along each tile's row k
                row = w[k]
                o0 = out[6 * k, t0:t0 + tiles_w]
                o1 = out[6 * k + 1, t0:t0 + tiles_w]
                o2 = out[6 * k + 2, t0:t0 + tiles_w]
                o3 = out[6 * k + 3, t0:t0 + tiles_w]
                o4 = out[6 * k + 4, t0:t0 + tiles_w]
                o5 = out[6 * k + 5, t0:t0 + tiles_w]
                for tx in range(tiles_w):
                    j = 4 * tx
                    u0, u1, u2, u3, u4, u5 = _bt(row[j], row[j + 1], row[j + 2], row[j + 3], row[j + 4], row[j + 5])
                    o0[tx] = u0
                    o1[tx] = u1
                    o2[tx] = u2
                    o3[tx] = u3
                    o4[tx] = u4
                    o5[tx] = u5


@numba.njit(parallel=True, cache=True, nogil=True)
def output_transform(m, bias, y, tiles_h, tiles_w, out_per_group, residual, has_residual, relu):
    """``Y = A^T M A`` (+ bias, + residual, then ReLU) for every tile, cropped to ``y``'s shape.

    ``m`` is ``(groups, C_out_g, 36, T_pad)``. A row of tiles at a time: ``A^T`` down the
    columns of all its tiles (contiguous along the tiles), then ``A`` along each output row;
    the epilogue is applied as each pixel is written.
    """
    n_images, c_out, out_h, out_w = y.shape
    tiles = tiles_h * tiles_w
    for job in prange(n_images * c_out):
        n = job // c_out
        o = job % c_out
        src = m[o // out_per_group, o % out_per_group]
        b = bias[o]
        dst = y[n, o]
        res = residual[n, o]
        s = np.empty((4, 6, tiles_w), m.dtype)
        for ty in range(tiles_h):
            i0 = 4 * ty
            t0 = n * tiles + ty * tiles_w
            for q in range(6):  # A^T down column q of every tile of the row
                for tx in range(tiles_w):
                    t = t0 + tx
                    a0, a1, a2, a3 = _at(src[q, t], src[6 + q, t], src[12 + q, t], src[18 + q, t], src[24 + q, t],
                                         src[30 + q, t])
                    s[0, q, tx] = a0
                    s[1, q, tx] = a1
                    s[2, q, tx] = a2
                    s[3, q, tx] = a3
            for r in range(min(4, out_h - i0)):  # A along output row i0 + r
                i = i0 + r
                sr = s[r]
                for tx in range(tiles_w):
                    j0 = 4 * tx
                    y0, y1, y2, y3 = _at(sr[0, tx], sr[1, tx], sr[2, tx], sr[3, tx], sr[4, tx], sr[5, tx])
                    if j0 + 3 < out_w:
                        dst[i, j0] = finish_pixel(y0 + b, res, i, j0, has_residual, relu)
                        dst[i, j0 + 1] = finish_pixel(y1 + b, res, i, j0 + 1, has_residual, relu)
                        dst[i, j0 + 2] = finish_pixel(y2 + b, res, i, j0 + 2, has_residual, relu)
                        dst[i, j0 + 3] = finish_pixel(y3 + b, res, i, j0 + 3, has_residual, relu)
                    else:  # the last tile overhangs the output
                        dst[i, j0] = finish_pixel(y0 + b, res, i, j0, has_residual, relu)
                        if j0 + 1 < out_w:
                            dst[i, j0 + 1] = finish_pixel(y1 + b, res, i, j0 + 1, has_residual, relu)
                        if j0 + 2 < out_w:
                            dst[i, j0 + 2] = finish_pixel(y2 + b, res, i, j0 + 2, has_residual, relu)
