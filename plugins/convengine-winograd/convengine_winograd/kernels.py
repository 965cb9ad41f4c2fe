"""Winograd F(2x2, 3x3) transforms: the weight transform (numpy) and the input/output
transforms (Numba, parallel over channel planes).

This module imports Numba at import time; the plugin imports it only inside
``prepare()``, so loading the plugin (which happens at every ``convengine`` start-up)
stays cheap.

Notation (Lavin & Gray, 2016), for one output tile of ``m x m = 2 x 2`` pixels computed
from an ``a x a = 4 x 4`` input tile ``d`` (consecutive tiles overlap by 2, i.e. stride 2)::

    U = G g G^T          (4x4, once per (out, in) channel pair, in prepare)
    V = B^T d B          (4x4, per input tile and channel)
    M[k] = sum_c U[k] V[k]   for each of the 16 positions k: a batched GEMM
    Y = A^T M A          (2x2, per output tile and channel)

Arrays are laid out for the 16 GEMMs: ``U`` is ``(groups, 16, C_out_g, C_in_g)``; the
transformed input is stored as ``(groups, C_in_g, 16, T_pad)`` and the GEMM output as
``(groups, C_out_g, 16, T_pad)``, where ``T = images * tiles_h * tiles_w`` tiles, position
``k = 4 * row + col``, and ``T_pad >= T`` is the padded row length of :func:`padded_tiles`.
``buffer.transpose(0, 2, 1, 3)[..., :T]`` is then the ``(groups, 16, C, T)`` operand of
``np.matmul``: every ``(C, T)`` matrix has unit column stride, so numpy hands each of the
16 products to BLAS. Keeping the 16 positions of a channel next to each other (rather than
16 planes ``C * T`` apart) matters: with power-of-two channel counts the plane distance is
a multiple of 4 KiB and the transform's 16 store streams would fall into the same cache
sets (measured 4-5x slower on ResNet layers).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

M_TILE = 2  # output pixels per tile side
ALPHA = 4  # input pixels per tile side (M_TILE + 3 - 1)
POSITIONS = ALPHA * ALPHA

#: Filter transform (4x3), input transform B^T (4x4) and output transform A^T (2x4).
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
BT = np.array([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0], [0.0, 1.0, 0.0, -1.0]])
AT = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]])


def transform_weights(weight: np.ndarray, groups: int, g_matrix: np.ndarray = G) -> np.ndarray:
    """``U = G g G^T`` for every (out, in) pair, computed in float64 and rounded once to the
    weight's dtype; returned C-contiguous as ``(groups, alpha**2, C_out_g, C_in_g)`` (16 here,
    36 with F(4x4, 3x3)'s ``G``)."""
    c_out, c_group = weight.shape[:2]
    u = np.einsum("ki,ocij,lj->kloc", g_matrix, weight.astype(np.float64), g_matrix, optimize=True)
    positions = g_matrix.shape[0] ** 2
    u = u.reshape(positions, groups, c_out // groups, c_group).transpose(1, 0, 2, 3)
    return np.ascontiguousarray(u, dtype=weight.dtype)


def padded_tiles(tiles: int, itemsize: int) -> int:
    """Row length for ``tiles`` columns: a whole number of 64-byte lines, and an *odd* number
    of them, so that the 16 position rows of one channel map to 16 different cache sets."""
    per_line = 64 // itemsize
    lines = -(-tiles // per_line)
    if lines % 2 == 0:
        lines += 1
    return lines * per_line


def tile_counts(out_h: int, out_w: int, m_tile: int = M_TILE) -> tuple[int, int]:
    """Tiles per column and per row: enough m x m tiles to cover the output (the last may overhang)."""
    return (out_h + m_tile - 1) // m_tile, (out_w + m_tile - 1) // m_tile


# -- Numba kernels ----------------------------------------------------------------------------


@numba.njit(inline="always")
def padded_plane(plane, hp, wp, top, left):
    """A zero-padded ``(hp, wp)`` copy of one input plane, ``plane`` placed at ``(top, left)``.

    Rows/columns beyond the padded extent cannot occur (``hp >= top + height``), but a
    bottom/right padding of the problem may be larger than the tiles need: clip.
    """
    buf = np.zeros((hp, wp), plane.dtype)
    rows = min(plane.shape[0], hp - top)
    cols = min(plane.shape[1], wp - left)
    buf[top:top + rows, left:left + cols] = plane[:rows, :cols]
    return buf


@numba.njit(parallel=True, cache=True, nogil=True)
def input_transform(x, v, top, left, tiles_h, tiles_w, c_group):
    """``V = B^T d B`` for every 4x4 tile of every (image, channel) plane of ``x``.

    ``x`` is the unpadded input ``(N, C, H, W)``; the zero padding (``top``/``left``, and
    whatever bottom/right the tiles need) is applied in a per-plane scratch buffer, so the
    input is never copied as a whole. ``v`` is ``(groups, C_in_g, 16, T_pad)`` with
``T_pad >= N * tiles_h * tiles_w``; the columns past the last tile are left untouched.
    """
    n_images, channels = x.shape[:2]
    hp = 2 * tiles_h + 2
    wp = 2 * tiles_w + 2
    tiles = tiles_h * tiles_w
    for job in prange(n_images * channels):
        n = job // channels
        c = job % channels
        g = c // c_group
        cl = c % c_group
        buf = padded_plane(x[n, c], hp, wp, top, left)
        out = v[g, cl]
        base = n * tiles
        for ty in range(tiles_h):
            r0 = buf[2 * ty]
            r1 = buf[2 * ty + 1]
            r2 = buf[2 * ty + 2]
            r3 = buf[2 * ty + 3]
            t0 = base + ty * tiles_w
            for tx in range(tiles_w):
                j = 2 * tx
                # rows: w0 = d0 - d2, w1 = d1 + d2, w2 = d2 - d1, w3 = d1 - d3
                w00 = r0[j] - r2[j]
                w01 = r0[j + 1] - r2[j + 1]
                w02 = r0[j + 2] - r2[j + 2]
                w03 = r0[j + 3] - r2[j + 3]
                w10 = r1[j] + r2[j]
                w11 = r1[j + 1] + r2[j + 1]
                w12 = r1[j + 2] + r2[j + 2]
                w13 = r1[j + 3] + r2[j + 3]
                w20 = r2[j] - r1[j]
                w21 = r2[j + 1] - r1[j + 1]
                w22 = r2[j + 2] - r1[j + 2]
                w23 = r2[j + 3] - r1[j + 3]
                w30 = r1[j] - r3[j]
                w31 = r1[j + 1] - r3[j + 1]
                w32 = r1[j + 2] - r3[j + 2]
                w33 = r1[j + 3] - r3[j + 3]
                t = t0 + tx
                # columns, same combination
                out[0, t] = w00 - w02
                out[1, t] = w01 + w02
                out[2, t] = w02 - w01
                out[3, t] = w01 - w03
                out[4, t] = w10 - w12
                out[5, t] = w11 + w12
                out[6, t] = w12 - w11
                out[7, t] = w11 - w13
                out[8, t] = w20 - w22
                out[9, t] = w21 + w22
                out[10, t] = w22 - w21
                out[11, t] = w21 - w23
                out[12, t] = w30 - w32
                out[13, t] = w31 + w32
                out[14, t] = w32 - w31
                out[15, t] = w31 - w33


@numba.njit(inline="always")
def finish_pixel(v, residual_plane, i, j, has_residual, relu):
    """The fused epilogue of one output pixel: + residual, then ReLU (NaN stays NaN)."""
    if has_residual:
        v += residual_plane[i, j]
    if relu and v < 0:
        v = v - v
    return v


@numba.njit(parallel=True, cache=True, nogil=True)
def output_transform(m, bias, y, tiles_h, tiles_w, out_per_group, residual, has_residual, relu):
    """``Y = A^T M A`` (+ bias, + residual, then ReLU) for every tile, cropped to ``y``'s ``(N, C_out, OH, OW)``.

    ``m`` is ``(groups, C_out_g, 16, T_pad)``; ``bias`` is ``(C_out,)``; ``residual`` has
    ``y``'s shape and is read only when ``has_residual`` (pass ``y`` otherwise). The
    epilogue is applied while the tile is in registers: no extra pass over ``y``.
    """
    n_images, c_out, out_h, out_w = y.shape
    tiles = tiles_h * tiles_w
    full_w = out_w // 2  # tiles whose two columns are both inside the output
    for job in prange(n_images * c_out):
        n = job // c_out
        o = job % c_out
        g = o // out_per_group
        src = m[g, o % out_per_group]
        b = bias[o]
        dst = y[n, o]
        res = residual[n, o]
        base = n * tiles
        for ty in range(tiles_h):
            i = 2 * ty
            second_row = i + 1 < out_h
            t0 = base + ty * tiles_w
            for tx in range(tiles_w):
                t = t0 + tx
                # rows: t0 = M0 + M1 + M2, t1 = M1 - M2 - M3 (M-rows of 4 positions)
                a0 = src[0, t] + src[4, t] + src[8, t]
                a1 = src[1, t] + src[5, t] + src[9, t]
                a2 = src[2, t] + src[6, t] + src[10, t]
                a3 = src[3, t] + src[7, t] + src[11, t]
                c0 = src[4, t] - src[8, t] - src[12, t]
                c1 = src[5, t] - src[9, t] - src[13, t]
                c2 = src[6, t] - src[10, t] - src[14, t]
                c3 = src[7, t] - src[11, t] - src[15, t]
                j = 2 * tx
                dst[i, j] = finish_pixel(a0 + a1 + a2 + b, res, i, j, has_residual, relu)
                if tx < full_w:
                    dst[i, j + 1] = finish_pixel(a1 - a2 - a3 + b, res, i, j + 1, has_residual, relu)
                if second_row:
                    dst[i + 1, j] = finish_pixel(c0 + c1 + c2 + b, res, i + 1, j, has_residual, relu)
                    if tx < full_w:
                        dst[i + 1, j + 1] = finish_pixel(c1 - c2 - c3 + b, res, i + 1, j + 1, has_residual, relu)


# -- the same transforms in vectorised numpy (reference for the Numba kernels, and timings) -----


def input_transform_numpy(x, v, padding, tiles_h, tiles_w, c_group):
    """Numpy version of :func:`input_transform` (``padding`` is ``(top, bottom, left, right)``)."""
    top, _, left, _ = padding
    n, c, h, w = x.shape
    hp, wp = 2 * tiles_h + 2, 2 * tiles_w + 2
    xp = np.zeros((n, c, hp, wp), x.dtype)
    rows, cols = min(h, hp - top), min(w, wp - left)
    xp[:, :, top:top + rows, left:left + cols] = x[:, :, :rows, :cols]
    groups = c // c_group
    t = n * tiles_h * tiles_w
    out = v[..., :t].reshape(groups, c_group, 4, 4, n, tiles_h, tiles_w)
    r = [xp[:, :, i:i + 2 * tiles_h:2, :] for i in range(4)]
    rows_t = (r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3])
    for k, wk in enumerate(rows_t):
        q = [wk[..., j:j + 2 * tiles_w:2] for j in range(4)]
        for l_, vk in enumerate((q[0] - q[2], q[1] + q[2], q[2] - q[1], q[1] - q[3])):
            out[:, :, k, l_] = vk.reshape(n, groups, c_group, tiles_h, tiles_w).transpose(1, 2, 0, 3, 4)


def output_transform_numpy(m, bias, y, tiles_h, tiles_w, out_per_group):
    """Numpy version of :func:`output_transform`."""
    n, c_out, out_h, out_w = y.shape
    groups = c_out // out_per_group
    t = n * tiles_h * tiles_w
    mm = m[..., :t].reshape(groups, out_per_group, 4, 4, n, tiles_h, tiles_w).transpose(0, 2, 3, 1, 4, 5, 6)
    rows = (mm[:, 0] + mm[:, 1] + mm[:, 2], mm[:, 1] - mm[:, 2] - mm[:, 3])  # (G, 4, Og, N, th, tw)
    full = np.empty((n, c_out, 2 * tiles_h, 2 * tiles_w), y.dtype)
    view = full.reshape(n, groups, out_per_group, tiles_h, 2, tiles_w, 2)
    for i, t in enumerate(rows):
        cols = (t[:, 0] + t[:, 1] + t[:, 2], t[:, 1] - t[:, 2] - t[:, 3])  # (G, Og, N, th, tw)
        for j, yij in enumerate(cols):
            view[:, :, :, :, i, :, j] = yij.transpose(2, 0, 1, 3, 4)
    np.add(full[:, :, :out_h, :out_w], bias.reshape(1, -1, 1, 1), out=y)
