"""Numba kernels of the ``direct`` backend: the blocked input copy and the register-tiled convolution.

Layouts (all float32, C-contiguous, flattened where the tile intrinsics read them):

- input, blocked and padded: ``(N, C_blocks, H + pads, W + pads, block)``; a block is 16
  channels (or all of them when there are fewer), so for a fixed input row the
  ``(kw, channel)`` pairs of one kernel row are one contiguous run;
- weights: ``(O_blocks, C_blocks, KH, KW, block, 16)``, zero-padded, so one reduction step
  reads one vector of 16 output channels;
- output: plain NCHW, written once with bias, residual and ReLU applied.
"""

import numpy as np
import numba
from numba import prange

from ._simd import LANES, MAX_WIDTH, tile_add_to, tile_fma_rows, tile_zero

#: Longest sum kept in registers before it is added to the tile's buffer (rounding error).
MAX_TERMS = 256


@numba.njit(parallel=True, cache=True, nogil=True)
def pack_input(x, xb, top, left):
    """Copy ``x`` (N, C, H, W) into the zero-padded blocked buffer ``xb`` (N, Cb, Hp, Wp, block)."""
    n_images, channels, height, width = x.shape
    _, c_blocks, hp, wp, block = xb.shape
    for job in prange(n_images * c_blocks * hp):
        n = job // (c_blocks * hp)
        cb = (job // hp) % c_blocks
        h = job % hp - top
        row = xb[n, cb, job % hp]
        if h < 0 or h >= height:
            row[:, :] = 0
            continue
        for j in range(block):
            c = cb * block + j
            for col in range(wp):
                w = col - left
                row[col, j] = x[n, c, h, w] if c < channels and 0 <= w < width else 0


@numba.njit(parallel=True, cache=True, nogil=True)
def direct_conv(xb, c_blocks, hp, wp, block, wb, kh_size, kw_size, sh, sw, dh, dw,
                bias, residual, has_residual, relu, y, tile_width):
    """``y = act(conv(x) + bias (+ residual))`` from the blocked input ``xb`` and packed ``wb`` (both flat).

    One job is one output row of one 16-channel block of one image; it sweeps the row in
    tiles of at most ``tile_width`` pixels, each accumulated in registers over the whole
    reduction of one channel block (kernel rows, each one contiguous (kw, channel) run), and
    these partial tiles of at most ``MAX_TERMS`` products are summed in a small buffer.
    """
    n_images, out_channels, out_h, out_w = y.shape
    o_blocks = (out_channels + LANES - 1) // LANES
    n_tiles = (out_w + tile_width - 1) // tile_width
    tile = (out_w + n_tiles - 1) // n_tiles  # balanced: no 1-pixel tail tile
    run = kw_size * block
    rows_per_sum = max(1, MAX_TERMS // run)
    for job in prange(n_images * o_blocks * out_h):
        n = job // (o_blocks * out_h)
        ob = (job // out_h) % o_blocks
        oh = job % out_h
        buf = np.empty(MAX_WIDTH * LANES, np.float32)
        for ow0 in range(0, out_w, tile):
            width = min(tile, out_w - ow0)
            first = True
            for cb in range(c_blocks):
                for kh0 in range(0, kh_size, rows_per_sum):
                    rows = min(rows_per_sum, kh_size - kh0)
                    x_row = (((n * c_blocks + cb) * hp + oh * sh + kh0 * dh) * wp + ow0 * sw) * block
                    w_row = ((ob * c_blocks + cb) * kh_size + kh0) * run * LANES
                    if dw == 1:  # a kernel row's (kw, channel) pairs are one contiguous run
                        acc = tile_fma_rows(tile_zero(), xb, x_row, dh * wp * block, sw * block,
                                            wb, w_row, rows, run, width)
                    else:
                        acc = tile_zero()
                        for kh in range(rows):
                            for kw in range(kw_size):
                                acc = tile_fma_rows(acc, xb, x_row + (kh * dh * wp + kw * dw) * block, 0, sw * block,
                                                    wb, w_row + (kh * kw_size + kw) * block * LANES, 1, block, width)
                    tile_add_to(acc, buf, first)
                    first = False
            for j in range(min(LANES, out_channels - ob * LANES)):
                o = ob * LANES + j
                b = bias[o]
                out_row = y[n, o, oh]
                res_row = residual[n, o, oh]
                for p in range(width):
                    v = buf[p * LANES + j] + b
                    if has_residual:
                        v += res_row[ow0 + p]
                    if relu and v < 0:  # NaN stays NaN, as with np.maximum
                        v = v - v
                    out_row[ow0 + p] = v
