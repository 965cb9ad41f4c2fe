"""The Winograd kernel: pad, transform the input, multiply on the register tiles, transform the output.

One parallel region (``direct._worksharing``: jobs claimed at run time, a barrier between
phases instead of a kernel start each):

1. the input copied into a zero-padded NCHW16c buffer that covers every tile (``direct``'s row
   copy), so that the transform reads whole tiles with no bounds, and checked for NaN and Inf
   row by row as it is copied (if one is found, the kernel stops there and the caller takes an
   exact path);
2. the products, in runs of up to 14 tiles (of one image or several) x 32 (or 16) output
   channels: for each of the 36 positions, the run's products over every input channel on
   ``direct``'s register tile (a 1x1 convolution whose pixels are tiles), put aside in a
   per-thread buffer; then each tile's output transform with bias, residual and activation,
   stored in the output's layout. A job either transforms its run's input tiles itself, into a
   per-thread buffer that stays in the near caches (``FUSED``), or reads them from a phase of
   their own between 1 and 2 (where a block's weights and a run's input do not fit the
   second-level cache together).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ..direct._kernels import _compiled_width, _pack_row
from ..direct._simd import TILE_FLOATS, tile_conv, tile_save, wide_tile_zero
from ..direct._tiles import LANES, MAX_WIDTH
from ..direct._worksharing import job_claims, next_job, phase_counter, phase_done
from ._simd import any_nonfinite, input_transform, output_transform
from ._transforms import TILE

_input, _output = input_transform, output_transform

# Numba's cache is keyed on this file's text, not on _simd's nor direct's: after an edit to the
# intrinsics there or in ``.._activations``, change this line (factorised; lanes written; finiteness; stride-4 stems; 2 streams;
# direct's width 12).

#: ``winograd_conv``'s job orders (``order``).
RUN_BY_RUN, BLOCK_BY_BLOCK, FUSED = 0, 1, 2


def precompile_kernels() -> list:
    """The signature the backend calls :func:`winograd_conv` with (see :mod:`convengine.runtime.precompile`)."""
    from numba import types

    from ...runtime.precompile import Kernel

    def f32(ndim):
        return types.Array(types.float32, ndim, "C")

    i64, flag, f64 = types.int64, types.boolean, types.float64
    tiles = types.Array(types.int64, 2, "C")
    signature = ((f32(4), f32(5), i64, i64, f32(1), f32(1), f32(1), f32(4), flag, i64, f64, f64, f32(4))
                 + (i64,) * 9 + (tiles, types.Array(types.int64, 1, "C"), i64, f32(1), types.Array(types.int64, 1, "C")))
    return [Kernel(__name__, "winograd_conv", signature, 6.0)]


@numba.njit(parallel=True, cache=True, nogil=True)
def winograd_conv(x, padded, top, left, v, u, bias, residual, has_residual, act, act_a, act_b, y, y_first, y_step,
                  out_h, out_w, vectors, workers, x_layout, y_layout, t_width, runs, slots, order, mb, nonfinite):
    """``y = act(conv3x3(x) + bias (+ residual))`` by F(4x4, 3x3).

    ``padded``: the (N, Cb, Hp, Wp, 16) zero-padded blocked buffer (Hp, Wp = 4 * tiles + 2).
    The tiles of all N images, numbered image after image, are computed in ``runs`` (``(first
    tile, tiles)`` rows, at most ``t_width`` each: the backend's ``run_tiles``);
    ``slots[t]`` is tile ``t``'s place ``run * t_width + i`` in ``v``, the transformed input,
    flat ``(runs, 36, Cb, t_width, 16)``: a run's products read one contiguous stream (the
    prefetchers follow it; planes of all tiles made each position's read a cold start).
    ``u``: the transformed weights, flat ``(output blocks, 36, Cb, 16, 16 * vectors)``.
    ``order`` (:data:`RUN_BY_RUN`, :data:`BLOCK_BY_BLOCK`, :data:`FUSED`): the products' jobs run
    by run (each run's input stays cached while every block's weights stream past), output block by
    output block (each block's weights read once, the runs' inputs again per block), or one job a
    run that transforms the run's tiles itself, into a per-thread ``v`` (the input transform is
    no phase of its own and the transformed input never leaves the near caches; ``slots`` unused).
    ``nonfinite[0]`` is set to 1, and nothing is written, where the input holds a NaN or an Inf
    (found as it is copied): a transform would spread it over its tile, so the caller takes an
    exact path instead. ``mb``: per thread, 36 saved
    register tiles. ``x`` NCHW or NCHW16c (``x_layout`` 1), ``y`` likewise (``y_layout``; its
    channels from ``y_first``, ``y_step`` apart in NCHW, blocks in NCHW16c).
    """
    n_images, c_blocks, hp, wp, _ = padded.shape
    positions = (TILE + 2) * (TILE + 2)
    th, tw = (out_h + TILE - 1) // TILE, (out_w + TILE - 1) // TILE
    n_tiles = th * tw  # an image's
    out_channels = bias.shape[0]
    o_lanes = vectors * LANES
    o_blocks = (out_channels + o_lanes - 1) // o_lanes
    n_runs = runs.shape[0]
    xb = padded.reshape(-1)
    x_flat = x.reshape(-1)
    y_flat = y.reshape(-1)
    residual_flat = residual.reshape(-1)
    y_channels = y.shape[1]
    x_blocked = x_layout == 1
    y_blocked = y_layout == 1
    pos_step = c_blocks * t_width * LANES  # one position's share of a run
    pos_weights = c_blocks * LANES * o_lanes  # one position's weights for one output block: o_lanes lines a row
    run_floats = positions * pos_step
    row = wp * LANES
    n_rows = n_images * c_blocks * hp
    rows = job_claims(n_rows, workers)
    transforms = job_claims(n_images * c_blocks * th, workers)
    fused = order == FUSED
    claims = job_claims(n_runs if fused else o_blocks * n_runs, workers)
    packed, transformed = phase_counter(), phase_counter()
    for thread in prange(max(rows.shape[0], claims.shape[0])):
        me = np.int64(thread)
        done = 0
        while True:
            r = next_job(rows, me)
            if r < 0:
                break
            n, h, cb = r // (hp * c_blocks), r // c_blocks % hp, r % c_blocks
            at = (n * c_blocks + cb) * hp + h
            _pack_row(x, x_flat, padded, xb, at, top, left, x_blocked)
            if any_nonfinite(xb, at * row, row):
                nonfinite[0] = 1
            done += 1
        phase_done(packed, done, n_rows)  # (a barrier: every thread sees the flag after it)
        if nonfinite[0] != 0:
            continue
        done = 0
        while not fused:
            job = next_job(transforms, me)
            if job < 0:
                break
            n, tr, cb = job // (th * c_blocks), job // c_blocks % th, job % c_blocks
            for tc in range(tw):
                slot = slots[n * n_tiles + tr * tw + tc]
                to = (slot // t_width * positions * c_blocks + cb) * t_width * LANES + slot % t_width * LANES
                _input(xb, ((n * c_blocks + cb) * hp + TILE * tr) * row + TILE * tc * LANES, row, v, to, pos_step)
            done += 1
        if not fused:
            phase_done(transformed, done, n_images * c_blocks * th)
        saved = me * positions * TILE_FLOATS
        while True:
            job = next_job(claims, me)
            if job < 0:
                break
            if fused:
                run, ob0, ob1 = job, 0, o_blocks
                run_at = me * run_floats
                t0, width = runs[run, 0], runs[run, 1]
                for i in range(width):  # the run's tiles, transformed into this thread's buffer
                    n, t = (t0 + i) // n_tiles, (t0 + i) % n_tiles
                    tr, tc = t // tw, t % tw
                    for cb in range(c_blocks):
                        _input(xb, ((n * c_blocks + cb) * hp + TILE * tr) * row + TILE * tc * LANES, row, v,
                               run_at + (cb * t_width + i) * LANES, pos_step)
            else:
                run, ob0 = (job % n_runs, job // n_runs) if order == BLOCK_BY_BLOCK else (job // o_blocks, job % o_blocks)
                ob1 = ob0 + 1
                run_at = run * run_floats
                t0, width = runs[run, 0], runs[run, 1]
            computed = _compiled_width(width)
            for ob in range(ob0, ob1):
                for pos in range(positions):
                    # the channel blocks as reduction rows, not blocks: up to 16 of them (256 products) summed in
                    # registers before the total, where each block was a sum of its own (28 zeroings and adds per 16 steps)
                    # each reduction row also prefetches its share of the next position's weights into L2 (o_lanes / 2
                    # lines of each half, two lines a step): cold in a network, they were read at the rate memory gives
                    # them. ResNet-50 at batch 1, in-process A/B: half of them 0.981x, all 0.990-0.997x more; GoogLeNet
                    # 0.977x, 0.983x; DenseNet-121 0.990x, 1.00x
                    w_at = (ob * positions + pos) * pos_weights
                    w_next = w_at + pos_weights
                    acc = tile_conv(wide_tile_zero(), v, run_at + pos * pos_step, 0, t_width * LANES, 1, LANES,
                                    u, w_at, 0, 1, c_blocks, LANES, computed, vectors, None,
                                    (w_next, w_next + pos_weights // 2), o_lanes // 2 if w_next < u.size else 0, 0, None,
                                    None)
                    tile_save(acc, mb, saved + pos * TILE_FLOATS)
                _store_run(mb, saved, t0, width, n_tiles, tw, ob, o_lanes, out_channels, vectors, y_flat, y_blocked,
                           y_channels, y_first, y_step, out_h, out_w, bias, residual_flat, has_residual, act, act_a, act_b)


@numba.njit(cache=True, nogil=True)  # a call per run and output block
def _store_run(mb, saved, t0, width, n_tiles, tw, ob, o_lanes, out_channels, vectors, y_flat, y_blocked, y_channels, y_first,
               y_step, out_h, out_w, bias, residual_flat, has_residual, act, act_a, act_b):
    """The output transforms of a run's tiles for output block ``ob``, from the products saved at ``mb[saved]``."""
    plane = out_h * out_w
    for i in range(width):
        n, t = (t0 + i) // n_tiles, (t0 + i) % n_tiles
        tr, tc = t // tw, t % tw
        n_out_rows, n_out_cols = min(TILE, out_h - TILE * tr), min(TILE, out_w - TILE * tc)
        for vv in range(vectors):
            first = ob * o_lanes + vv * LANES
            channels = min(LANES, out_channels - first)
            if channels <= 0:
                continue
            if y_blocked:
                y_at = (((n * y_channels + y_first + ob * vectors + vv) * out_h + TILE * tr) * out_w + TILE * tc) * LANES
                row_step, pixel_step, lane_step, written = out_w * LANES, LANES, 1, LANES
            else:
                y_at = ((n * y_channels + y_first + first * y_step) * out_h + TILE * tr) * out_w + TILE * tc
                row_step, pixel_step, lane_step, written = out_w, 1, y_step * plane, channels
            _output(mb, saved + (vv * MAX_WIDTH + i) * LANES, TILE_FLOATS, y_flat, y_at, row_step, pixel_step,
                    lane_step, written, n_out_rows, n_out_cols, channels, bias, first, residual_flat, has_residual, act,
                    act_a, act_b)
