"""Numba kernels of the ``direct`` backend: the blocked input copy and the register-tiled convolution.

Layouts (all float32, C-contiguous, flattened where the tile intrinsics read them):

- input, blocked and padded: ``(N, C_blocks, H + pads, W + pads, block)``; a block is 16
  channels (or all of them when there are fewer), so for a fixed input row the
  ``(kw, channel)`` pairs of one kernel row are one contiguous run;
- weights: ``(O_blocks, C_blocks, KH, KW, block, 16 * vectors)``, zero-padded, so one
  reduction step reads ``vectors`` adjacent vectors of 16 output channels (1 or 2: see
  :func:`tile_vectors`);
- output: plain NCHW, written once with bias, residual and ReLU applied; ``y`` may be a larger
  buffer ``(N, C_total, H, W)`` whose channels ``y_first``, ``y_first + y_step``, ... take the
  output (a concatenation's or a channel shuffle's place; the output's channel count is
  ``bias``'s length). A residual is read at the output's own indices: it comes with
  ``y_first == 0`` and ``y_step == 1`` only. A blocked ``y`` counts ``y_first`` in blocks of 16 (step 1).

Other layouts (the problem's, see ``convengine.core.layouts``): an NCHW16c array
``(N, C/16, H, W, 16)`` reaches the kernels as ``(N, C/16, H, W * 16)``, so that one
compiled signature serves every layout; ``x_layout`` and ``y_layout`` (``_tiles``'
``LAYOUT_CODES``) say which (NHWC ``(N, H, W, C)``: ``pointwise_tiles`` only). A blocked
input is copied into the padded buffer row by row; blocked and NHWC outputs are stored by
``tile_store_rows``, a pixel's 16 channels per vector.
"""

import numba
import numpy as np
from numba import prange

from ...core import layouts
from ._simd import (
    LINE_FLOATS,
    POINT_CHANNELS,
    POINT_PIXELS,
    TILE_FLOATS,
    copy_floats,
    pack_block,
    pointwise_block,
    tile_conv,
    tile_load,
    tile_save,
    tile_store_nchw,
    tile_store_rows,
    wide_tile_zero,
    zero_floats,
)
from ._tiles import LANES, LAYOUT_CODES, MAX_WIDTH, compiled_width, pairs_rows
from ._worksharing import job_claims, next_job, phase_counter, phase_done

# Numba's cache is keyed on this file's text, not on _simd's: after an edit to the intrinsics
# there or in ``.._activations``, change this line so that cached kernels are compiled again (GELU; tile_store_rows;
# tile_conv's weight prefetch and paired rows; its fixed-step nests, keyed by width too; rows first; width 8; strided weights;
# the RGB stem's step; store prefetch; 13 and 8 fixed; rows' prefetch per step; stride 4's RGB step; two prefetch streams;
# channel blocks in chunks over several tiles; strided weights far ahead; stores unswitched on the activation, common ones only;
# width 12).

#: Index type of flat loops whose indices are never negative: Numba wraps negative signed indices
#: around (a compare and a select per access), which kept copy and epilogue loops from
#: vectorising (3-4x slower; ``_grouped_kernels`` uses it too).
_U = np.uint64

#: The layouts' codes, module constants for the kernels (NCHW is 0).
NCHW16C, NHWC = LAYOUT_CODES[layouts.NCHW16C], LAYOUT_CODES[layouts.NHWC]

#: :func:`._tiles.compiled_width` and :func:`._tiles.pairs_rows`, the cost model's own functions, compiled into the kernels.
_compiled_width = numba.njit(inline="always")(compiled_width)
_pairs_rows = numba.njit(inline="always")(pairs_rows)


@numba.njit(inline="always")
def _prefetch_share(block_floats, tiles, tile_rows, row_steps):
    """``tile_conv``'s ``w_lines``: the lines of the next output block's weights (``block_floats``)
    each reduction row prefetches so that the current block's ``tiles`` tiles of ``tile_rows``
    rows cover them all, at most one a step (``row_steps`` a row)."""
    return min(row_steps, -(-block_floats // (LINE_FLOATS * tiles * tile_rows)))


def precompile_kernels(function: str) -> list:
    """The signature ``direct`` calls ``function`` with (see :mod:`convengine.runtime.precompile`); costs measured on Zen 4."""
    from numba import types

    from ...runtime.precompile import Kernel

    def f32(ndim):
        return types.Array(types.float32, ndim, "C")

    i64, flag, f64 = types.int64, types.boolean, types.float64
    epilogue = (flag, i64, f64, f64)  # has_residual, then the activation: Epilogue.kernel_activation()
    signatures = {
        # (11.4: Zen 4's 4.5 s scaled by the cold compile's growth on Intel, 5.6 -> 8.4 s with the two-vector tiles,
        # 8.8 -> 10.7 s with the paired-row nests, 8.1 -> 11.3 s with the fixed-step nests at 13 and 8 pixels;
        # pointwise_tiles 8.0 -> 6.3 s once its call sites stopped building fixed-step nests)
        "tiled_conv": ((f32(4), f32(5), i64, i64, f32(1)) + (i64,) * 7 + (f32(1), f32(4)) + epilogue + (f32(4), i64, i64,
                       types.Array(types.int64, 2, "C"), i64, i64, i64, i64, i64, i64, i64), 11.4),
        "pointwise_conv": ((f32(4), f32(4), i64, i64, f32(1), f32(1), f32(4)) + epilogue + (f32(4), i64, i64), 2.3),
        "pointwise_tiles": ((f32(4), f32(4), i64, i64, f32(1), i64, f32(1), f32(4)) + epilogue + (f32(4),) + (i64,) * 10,
                            2.2),
    }
    signature, cost = signatures[function]
    return [Kernel(__name__, function, signature, cost)]


def input_slack(stride_w: int, block: int) -> int:
    """Floats the flat blocked input needs past its end: a tile rounded up to a compiled width
    computes (and does not store) a few extra pixels (at most 6 with TILE_WIDTHS), reading past
    the last row; MAX_WIDTH pixels' worth is a safe bound."""
    return MAX_WIDTH * stride_w * block


@numba.njit(cache=True, nogil=True)  # a call per row: inlined into the kernel it cost a second of compile time
def _pack_row(x, x_flat, xb, xb_flat, row_index, top, left, x_blocked):
    """Row ``row_index`` of the zero-padded blocked buffer ``xb`` (N, Cb, Hp, Wp, block), from ``x`` (N, C, H, W),
    or from ``x`` already blocked (``x_blocked``: (N, Cb, H, W * 16), unpadded).

    ``x_flat`` and ``xb_flat`` are the same arrays flattened. Full 16-channel blocks move
    16 pixels at a time through a register transpose; a block of fewer than 16 channels
    (the RGB stem's 3, see ``channel_block``) is all the channels there are, element by element.
    """
    _, channels, height, width = x.shape
    _, c_blocks, hp, wp, block = xb.shape
    if x_blocked:
        width //= LANES
    n = row_index // (c_blocks * hp)
    cb = (row_index // hp) % c_blocks
    h = row_index % hp - top
    row_at = row_index * wp * block
    if h < 0 or h >= height:
        zero_floats(xb_flat, row_at, wp * block)
        return
    zero_floats(xb_flat, row_at, left * block)
    zero_floats(xb_flat, row_at + (left + width) * block, (wp - left - width) * block)
    if x_blocked:  # already (N, Cb, H, W * 16): the row is one contiguous run
        copy_floats(xb_flat, row_at + left * block, x_flat, ((n * channels + cb) * height + h) * width * LANES, width * LANES)
        return
    if block == LANES:
        x_at = ((n * channels + cb * LANES) * height + h) * width
        xb_at = (row_index * wp + left) * LANES
        for w0 in range(0, width, LANES):
            pack_block(x_flat, x_at + w0, height * width, channels - cb * LANES, min(LANES, width - w0),
                       xb_flat, xb_at + w0 * LANES)
        return
    if block == 3:  # the RGB stem: one interleaving pass (2.5x the generic loop's speed, 224x224 rows)
        # flat unsigned indices: no negative-index wraparound to compute per element (a 3x3 stem's copy 7 -> 3% of it)
        plane = height * width
        red = (n * channels * height + h) * width
        to = row_at + left * 3
        for w in range(width):
            xb_flat[_U(to + 3 * w)] = x_flat[_U(red + w)]
            xb_flat[_U(to + 3 * w + 1)] = x_flat[_U(red + plane + w)]
            xb_flat[_U(to + 3 * w + 2)] = x_flat[_U(red + 2 * plane + w)]
        return
    row = xb[n, cb, row_index % hp]
    for j in range(block):  # block == channels here: fewer than 16 channels, all present
        src = x[n, j, h]
        for w in range(width):
            row[left + w, j] = src[w]


#: Layers whose jobs run in bands (weights that do not stay cached: see ``band_rows``) sum their
#: channels in chunks of this many blocks over several tiles, the partial sums put aside between
#: chunks (:func:`._simd.tile_save`), as :data:`POINT_CHUNK_BLOCKS` does for 1x1 layers: a chunk's
#: weights (18 KiB for a 3x3 kernel and 32 output channels) are read once from the outer caches
#: for all of the job's tiles, where each tile read its block's weights whole (590 KiB on
#: ResNet-50's 512-channel 3x3 layers, which come from memory in a model). Sums are added in the
#: same order (a block's rows, then block after block): results are bit-identical. In-process
#: A/B, batch 1, each order: ResNet-50 0.976x and 0.990x (its 512-channel 3x3 layers 1.16 ->
#: 1.04 ms, the stride-2 ones 3-5% faster, the 256-channel ones at 14x14 unchanged), Wide
#: ResNet-50 0.94x, Inception-v3 0.995x, AlexNet, VGG-11, DenseNet-121 and ResNet-50 at batch 32
#: unchanged (within 0.3%); chunks of 2 blocks: no better.
CHUNK_BLOCKS = 1
#: Tiles of one job's chunked sums, at most (its row jobs' tiles): 8 partial tiles (14 KiB) stay
#: in the first-level cache beside the chunk's weights, and a 14x14 layer's 8 output blocks still
#: make 16 jobs for two threads to share (16 tiles: the same time within noise, half the jobs).
#:
#: Each chunk's tiles prefetch the next chunk's weights into the second-level cache (the block's
#: next chunk; after its last, the next block's first), a slice per tile's reduction row. Inside
#: a model a layer's weights come from memory: a chunk's first tile read them at the rate memory
#: gave them, the FMA units idle, and only a thread's blocks after its first were prefetched (the
#: next block's weights over the current block's rows, as before chunks). Warming every layer's
#: weights on both cores before it ran took 0.8-1.2 ms off ResNet-50's 28. In-process A/B, batch
#: 1, each order (this module's kernels swapped run by run in one compiled graph): ResNet-50
#: 0.976x and 0.977x (its 512-channel 3x3 layers 0.94-1.09 -> 0.81-0.90 ms, the 256-channel ones
#: 5% faster), Wide ResNet-50 0.929x, VGG-11 0.984x, Inception-v3 0.987x, GoogLeNet and AlexNet
#: 0.985x, ResNeXt-50, DenseNet-121 and RegNetY unchanged; ResNet-50 at batch 32 0.975x.
CHUNK_TILES = 8


@numba.njit(parallel=True, cache=True, nogil=True)
def tiled_conv(x, blocked, top, left, wb, kh_size, kw_size, sh, sw, dh, dw, group_blocks,
               bias, residual, has_residual, act, act_a, act_b, y, y_first, y_step, row_tiles, vectors, workers,
               x_layout, y_layout, tile_width, band_rows, job_tiles):
    """``y = act(conv(x) + bias (+ residual))``, ``x`` copied into ``blocked`` on the way, weights packed in ``wb`` (flat).

    ``blocked`` is the (N, Cb, Hp, Wp, block) view of a flat buffer with slack past its end.
    Two phases in one parallel region: the threads fill ``blocked`` row by row, wait for
    each other (one kernel start instead of two), then compute. One job of the second phase
    is one output row (or two) of one block of ``vectors`` x 16 output channels of one image; it sweeps
    the row in the tiles ``row_tiles`` lists (``(first pixel, pixels)``, see ``_tiles.row_tiles``; rows
    that ``_tiles.pairs_rows`` pairs for ``tile_width``-pixel tiles: two rows, one tile), each
    accumulated in registers over the whole reduction
    (channel blocks x kernel rows x one contiguous (kw, channel) run) and written out once,
    epilogue applied. Grouped (``group_blocks`` < all input blocks), an output block's
    reduction covers the ``group_blocks`` input blocks of its group (whole blocks: 16 and more
    channels per group, in and out). Layers in bands of more than one row sum their channel blocks in
    chunks of :data:`CHUNK_BLOCKS` over jobs of up to :data:`CHUNK_TILES` tiles (several row jobs of
    one output block), each tile's partial sums put aside between chunks, the next chunk's weights
    prefetched over each chunk's tiles.

    Each thread takes a contiguous range of jobs first. They are ordered in bands of
    ``band_rows`` output rows (jobs) of an image: each output block over the band's rows (its
    weights read by one thread, prefetched ahead), then the next band. One band of
    all rows: output block by output block. Bands of one row, row by row (all blocks of a row,
    then the next row): for layers whose weights all stay cached, so that a thread reads the
    input rows it copied itself (the copy goes row by row too) instead of half of the input
    from the other core's cache. Bands in between: for inputs that do not stay cached beside
    the weights, read once per band instead of once per output block.

    ``job_tiles`` > 0: the output plane is swept as one row of ``out_h * out_w`` pixels (the
    tiles ``row_tiles`` lists), ``job_tiles`` tiles a job. For kernels one column wide at stride
    1 with no column padding, whose pixels' inputs lie end to end across rows as their outputs
    do: Inception-v3's 7x1 layers at 17x17 then run 14-pixel tiles where each row was 13 + 4, its
    3x1 layers at 8x8 14-pixel tiles where each row was one of 8 (each weight read for 14 pixels).
    """
    _, c_blocks, hp, wp, block = blocked.shape
    xb = blocked.reshape(-1)  # (the flat buffer's start: the tiles read past the view's end, into the slack)
    x_flat = x.reshape(-1)
    n_images, y_channels, out_h, out_w = y.shape
    x_blocked, y_blocked = x_layout == NCHW16C, y_layout == NCHW16C
    if y_blocked:  # (N, Ob, OH, OW * 16)
        out_w //= LANES
    out_channels = bias.shape[0]  # (y may be a larger buffer: see the module docstring)
    o_lanes = vectors * LANES  # output channels per block
    o_blocks = (out_channels + o_lanes - 1) // o_lanes
    run = kw_size * block
    calls, tap_rows, count, row_step = (1, kh_size, run, dh * wp * block) if dw == 1 else (kh_size * kw_size, 1, block, 0)
    x_block = hp * wp * block  # one channel block of one image
    w_block = kh_size * run * o_lanes  # one channel block's weights for one output block
    out_per_group = out_channels * group_blocks // c_blocks
    y_flat = y.reshape(-1)
    residual_flat = residual.reshape(-1)
    n_rows = n_images * c_blocks * hp
    n_tiles = row_tiles.shape[0]
    tile_rows = calls * group_blocks * tap_rows  # reduction rows of one tile
    # Rows of PAIRED_WIDTH pixels go two to a tile, its second row's pixels reading the next input
    # rows (x_jump further); the output rows lie end to end (both layouts): stored as one run.
    flat = job_tiles > 0
    if flat:
        out_h, out_w = 1, out_h * out_w
    pair = not flat and _pairs_rows(out_w, out_h, tile_width)
    job_rows = 2 if pair else 1
    row_jobs = (n_tiles + job_tiles - 1) // job_tiles if flat else (out_h + job_rows - 1) // job_rows
    per_job = job_tiles if flat else n_tiles  # tiles (at most) a job sweeps
    x_jump = sh * wp * block - out_w * sw * block
    ob_weights = group_blocks * w_block  # one output block's weights
    band = max(1, min(band_rows, row_jobs))
    pf_share = _prefetch_share(ob_weights, band * per_job, tile_rows, count)
    # Summed in chunks of CHUNK_BLOCKS channel blocks over a job of several row jobs (see CHUNK_TILES), or whole
    # (a chunk of all blocks): one row job a job, as before there were chunks.
    chunked = band > 1 and not flat and calls == 1 and group_blocks > CHUNK_BLOCKS
    chunk = CHUNK_BLOCKS if chunked else group_blocks
    job_row_jobs = max(1, min(band, CHUNK_TILES // per_job)) if chunked else 1  # row jobs in one job
    band_jobs = (band + job_row_jobs - 1) // job_row_jobs  # jobs of one output block over a full band
    image_jobs = o_blocks * (row_jobs // band * band_jobs + (row_jobs % band + job_row_jobs - 1) // job_row_jobs)
    rows = job_claims(n_rows, workers)
    packed = phase_counter()
    claims = job_claims(n_images * image_jobs, workers)
    for thread in prange(max(rows.shape[0], claims.shape[0])):
        me = np.int64(thread)  # (typed uint64 inside the parallel body: a second next_job compile)
        partial = np.empty(job_row_jobs * per_job * TILE_FLOATS if chunked else 1, np.float32)  # tiles between chunks
        copied = 0
        while True:
            row = next_job(rows, me)
            if row < 0:
                break
            # rows in (image, row, channel block) order: a thread's range is whole rows, all blocks
            n, h, cb = row // (hp * c_blocks), row // c_blocks % hp, row % c_blocks
            _pack_row(x, x_flat, blocked, xb, (n * c_blocks + cb) * hp + h, top, left, x_blocked)
            copied += 1
        phase_done(packed, copied, n_rows)
        while True:
            job = next_job(claims, me)
            if job < 0:
                break
            n, j = job // image_jobs, job % image_jobs
            first = j // (band_jobs * o_blocks) * band  # the band's first row job
            within = j - first // band * band_jobs * o_blocks
            jobs_per_block = (min(band, row_jobs - first) + job_row_jobs - 1) // job_row_jobs  # (the last band: fewer)
            ob = within // jobs_per_block
            r0 = first + within % jobs_per_block * job_row_jobs  # the job's row jobs: a row (two paired), or tiles of the plane
            r1 = min(r0 + job_row_jobs, first + band, row_jobs)
            # tile_conv's w_prefetch, a slice per tile over its reduction rows: chunked, the next chunk's weights
            # (the block's next one, or the next block's first) over this chunk's tiles; else the next block's
            if chunked:
                pf_lines = _prefetch_share(chunk * w_block, (r1 - r0) * per_job, chunk * tap_rows, count)
            else:
                pf_lines = 0 if ob + 1 == o_blocks or band == 1 else pf_share
            cb0 = ob * o_lanes // out_per_group * group_blocks  # the group's first input block
            w_tile = ob * ob_weights
            for c0 in range(0, group_blocks, chunk):
                nb = min(chunk, group_blocks - c0)
                slot = 0  # the tile's partial sums in ``partial``
                for rj in range(r0, r1):
                    oh, t0 = (0, rj * job_tiles) if flat else (rj * job_rows, 0)
                    both = pair and oh + 1 < out_h  # two rows in one tile
                    tiles = min(job_tiles, n_tiles - t0) if flat else (1 if both else n_tiles)
                    for i in range(tiles):
                        t = t0 + i
                        ow0, width = (0, 2 * out_w) if both else (row_tiles[t, 0], row_tiles[t, 1])  # first pixel, pixels stored
                        computed = _compiled_width(width)  # pixels computed (the extra ones read the slack)
                        x_tile = (((n * c_blocks + cb0 + c0) * hp + oh * sh) * wp + ow0 * sw) * block
                        # Undilated, a kernel row's (kw, channel) pairs are one contiguous run: one call
                        # does all kh rows. Dilated, each tap is a run of its own: kh*kw calls of one row.
                        # (One call site: each tile_conv site compiles every tile width, seconds each.)
                        acc = wide_tile_zero() if c0 == 0 else tile_load(partial, slot * TILE_FLOATS)
                        for tap in range(calls):
                            kh, kw = tap // kw_size, tap % kw_size
                            if chunked:
                                pf_at = w_tile + (c0 + nb) * w_block + slot * nb * tap_rows * pf_lines * LINE_FLOATS
                            else:
                                pf_at = (w_tile + ob_weights
                                         + (((((rj - first) * per_job + i) * calls + tap) * group_blocks + c0) * tap_rows)
                                         * pf_lines * LINE_FLOATS)
                            acc = tile_conv(acc, xb, x_tile + (kh * dh * wp + kw * dw) * block, x_block, row_step, 1,
                                            sw * block, wb, w_tile + c0 * w_block + (kh * kw_size + kw) * block * o_lanes,
                                            w_block, nb, tap_rows, count, computed, vectors, None, pf_at, pf_lines,
                                            x_jump if both else 0, None, 1)
                        if c0 + nb < group_blocks:
                            tile_save(acc, partial, slot * TILE_FLOATS)
                        elif y_blocked:
                            tile_store_rows(acc, y_flat, (((n * y_channels + y_first + ob * vectors) * out_h + oh) * out_w
                                                          + ow0) * LANES, out_h * out_w * LANES, LANES,
                                            min(o_lanes, out_channels - ob * o_lanes), 0, width, bias, ob * o_lanes,
                                            residual_flat, has_residual, act, act_a, act_b, True)
                        else:
                            tile_store_nchw(acc, y_flat, ((n * y_channels + y_first + ob * o_lanes * y_step) * out_h + oh)
                                            * out_w + ow0, y_step * out_h * out_w, min(o_lanes, out_channels - ob * o_lanes),
                                            0, width, bias, ob * o_lanes, residual_flat, has_residual, act, act_a, act_b)
                        slot += 1


@numba.njit(parallel=True, cache=True, nogil=True)
def pointwise_conv(source, x, sh, sw, w_packed, bias, residual, has_residual, act, act_a, act_b, y, y_first, workers):
    """``y = act(W @ x + bias (+ residual))`` for a 1x1 unpadded convolution, on NCHW directly.

    ``x`` (N, C, OH, OW) is what the products read: ``source`` itself at stride 1, else a
    buffer that a first phase fills with every ``sh``-th row and ``sw``-th column of
    ``source`` (a quarter of it at stride 2: cheaper to read than the strided original),
    in the same parallel region. ``w_packed`` is ``(ceil(O / POINT_CHANNELS), C,
    POINT_CHANNELS)`` flattened. One job is one block of POINT_CHANNELS output channels x
    POINT_PIXELS pixels of one image; the output-channel blocks of a pixel block are adjacent
    jobs, so its inputs stay in cache.
    """
    n_images, channels, height, width = x.shape
    out_channels, y_channels = bias.shape[0], y.shape[1]
    plane = height * width
    o_blocks = (out_channels + POINT_CHANNELS - 1) // POINT_CHANNELS
    p_blocks = (plane + POINT_PIXELS - 1) // POINT_PIXELS
    x_flat = x.reshape(-1)
    y_flat = y.reshape(-1)
    residual_flat = residual.reshape(-1)
    n_planes = n_images * channels if (sh, sw) != (1, 1) else 0
    planes = job_claims(n_planes, workers)
    copied = phase_counter()
    claims = job_claims(n_images * p_blocks * o_blocks, workers)
    for thread in prange(max(planes.shape[0], claims.shape[0])):
        me = np.int64(thread)
        _subsample_phase(source, x, planes, me, sh, sw, copied, n_planes)
        while True:
            job = next_job(claims, me)
            if job < 0:
                break
            n = job // (p_blocks * o_blocks)
            p0 = (job // o_blocks) % p_blocks * POINT_PIXELS
            o0 = job % o_blocks * POINT_CHANNELS
            pointwise_block(x_flat, n * channels * plane + p0, plane, channels, w_packed, o0 * channels,
                            y_flat, (n * y_channels + y_first + o0) * plane + p0, min(POINT_CHANNELS, out_channels - o0),
                            min(POINT_PIXELS, plane - p0), bias, o0, residual_flat, has_residual, act, act_a, act_b)



@numba.njit(cache=True, nogil=True)
def _subsample_phase(source, x, planes, me, sh, sw, copied, n_planes, lanes=1):
    """Thread ``me``'s share of a 1x1 kernel's first phase: claim and fill subsampled planes of
    ``x`` (none at stride 1), then wait at the barrier until all ``n_planes`` are filled."""
    done = 0
    while True:
        job = next_job(planes, me)
        if job < 0:
            break
        _subsample_plane(source, x, job, sh, sw, lanes)
        done += 1
    phase_done(copied, done, n_planes)


@numba.njit(cache=True, nogil=True)
def _subsample_plane(source, x, job, sh, sw, lanes):
    """Plane ``job`` (image-major) of ``x``: every ``sh``-th row and ``sw``-th column of ``source``'s
    (columns of ``lanes`` values each: 16 in the blocked layout, whose planes are (H, W * 16))."""
    channels, height, width = x.shape[1], x.shape[2], x.shape[3] // lanes
    src = source[job // channels, job % channels]
    dst = x[job // channels, job % channels]
    for i in range(height):
        for j in range(width):
            for k in range(lanes):
                dst[i, j * lanes + k] = src[i * sh, j * sw * lanes + k]


#: Blocked 1x1 layers sum their channels in chunks of this many blocks (128 channels), each
#: chunk over a batch of :data:`POINT_BATCH_TILES` tiles, the partial sums put aside between
#: chunks (:func:`._simd.tile_save`), as ONNX Runtime's NCHWc kernels do: a chunk's weights
#: (16 KiB for 32 output channels) then stay in the first-level cache for the whole batch,
#: where each tile's full reduction streamed its block's weights (128 KiB on ResNet-50's
#: 1024 -> 256 layers) from the second-level cache once per tile. Hot, two threads, in-process
#: interleaved: ResNet-50's and Inception-v3's wide 1x1 layers 0.94-0.97x (chunks of 4 or 16
#: blocks: 1.00-1.03x; batches of 4 or 8 tiles: 0.96-0.99x); whole ResNet-50 0.982x, Inception-v3
#: 0.997x, DenseNet-121 0.998x.
POINT_CHUNK_BLOCKS = 8
#: Tiles a chunk of weights serves before the next chunk (their partial sums: 16 x 1.75 KiB).
#: A group's first batch of tiles prefetches each next chunk's weights over a chunk's tiles, as
#: :data:`CHUNK_TILES`' jobs do (it had prefetched the next block's, so a thread's first block
#: came from memory as it was read): in-process A/B, batch 1, each order, ResNet-50 0.992x and
#: 0.985x (its 2048 -> 512 layers 0.44 -> 0.40 ms), Wide ResNet-50 0.987x, ResNeXt-50 0.977x,
#: DenseNet-121 0.989x; Inception-v3, GoogLeNet, MobileNetV2, EfficientNet-B0 and ResNet-50 at
#: batch 32 within noise (+-1%, +-2% at batch 32).
POINT_BATCH_TILES = 16


@numba.njit(inline="always")
def _store_pointwise(acc, y_flat, y_layout, n, y_channels, y_first, y_step, o0, o_lanes, out_channels, plane, start, p0,
                     stored, bias, residual_flat, has_residual, act, act_a, act_b):
    """:func:`pointwise_tiles`' store of one tile (pixels ``p0 .. p0 + stored``, computed from ``start``) in ``y``'s layout."""
    if y_layout == NCHW16C:
        tile_store_rows(acc, y_flat, ((n * y_channels + y_first + o0 // LANES) * plane + start) * LANES,
                        plane * LANES, LANES, min(o_lanes, out_channels - o0), p0 - start, p0 - start + stored,
                        bias, o0, residual_flat, has_residual, act, act_a, act_b, True)
    elif y_layout == NHWC:
        tile_store_rows(acc, y_flat, (n * plane + start) * y_channels + o0, LANES, y_channels,
                        min(o_lanes, out_channels - o0), p0 - start, p0 - start + stored,
                        bias, o0, residual_flat, has_residual, act, act_a, act_b, False)
    else:
        tile_store_nchw(acc, y_flat, (n * y_channels + y_first + o0 * y_step) * plane + start, y_step * plane,
                        min(o_lanes, out_channels - o0), p0 - start, p0 - start + stored,
                        bias, o0, residual_flat, has_residual, act, act_a, act_b)


@numba.njit(parallel=True, cache=True, nogil=True)
def pointwise_tiles(source, x, sh, sw, wb, chunk, bias, residual, has_residual, act, act_a, act_b, y, y_first, y_step,
                    tile_width, group, vectors, workers, prefetch, x_layout, y_layout, w_rows):
    """``y = act(W @ x + bias (+ residual))`` for a 1x1 unpadded convolution, output channels in the vector lanes.

    The register tiles of :func:`tiled_conv` (up to ``tile_width`` pixels x ``vectors`` x 16
    output channels) over NCHW planes read in place: one reduction step reads a block's output
    channels' weights (``wb``: ``(ceil(O / (16 * vectors)), C, 16 * vectors)`` flattened) and
    broadcasts one input channel's value for each pixel of the tile, which is contiguous in NCHW. The plane is swept
    flattened, so a 7x7 plane is tiles of 14, 14, 14 and 7 pixels, all lanes busy, where
    :func:`pointwise_conv`'s 16-pixel vectors leave 15 of 64 lanes idle. A tail tile that is
    not a compiled width is computed as the next one, starting early (it reads inside the
    plane, never past it), and stores only its own pixels. Products are summed ``chunk`` channels at a time in registers (a
    divisor of C, at most 256), as :data:`POINT_CHUNK` does; a blocked input's, :data:`POINT_CHUNK_BLOCKS` blocks at a
    time over a batch of tiles, partial sums put aside in between. ``x`` is ``source`` at stride 1,
    else its subsampled copy, filled in a first phase as in :func:`pointwise_conv`. One job is
    one output-channel block of one image over one ``group`` of pixels (the whole plane unless
    the input is too large to stay cached; the blocks of a group are adjacent jobs). Needs a
    plane of at least MAX_WIDTH pixels. ``w_rows`` 0: ``wb`` packed as above; else, with NHWC
    input only, ``wb`` is the channels-last ``(C, O)`` matrix itself (rows ``w_rows`` = O floats
    apart, O a multiple of the block's channels), read in place: no packed copy of the weights.
    """
    if x_layout == NHWC:
        n_images, height, width, channels = x.shape
    else:
        n_images, channels, height, width = x.shape
    lanes = LANES if x_layout == NCHW16C else 1  # blocked: (N, Cb, H, W * 16), ``channels`` counts blocks
    width //= lanes
    out_channels, y_channels = bias.shape[0], (y.shape[3] if y_layout == NHWC else y.shape[1])
    plane = height * width
    o_lanes = vectors * LANES
    o_blocks = (out_channels + o_lanes - 1) // o_lanes
    n_groups = (plane + group - 1) // group
    w_channels = channels * lanes  # a block's weights: w_channels x o_lanes
    tile_rows = channels if x_layout == NCHW16C else channels // chunk  # reduction rows of one tile
    group_tiles = (min(group, plane) + tile_width - 1) // tile_width
    pf_share = _prefetch_share(w_channels * o_lanes, group_tiles, tile_rows, LANES if x_layout == NCHW16C else chunk)
    x_flat = x.reshape(-1)
    y_flat = y.reshape(-1)
    residual_flat = residual.reshape(-1)
    n_planes = n_images * channels if (sh, sw) != (1, 1) else 0
    planes = job_claims(n_planes, workers)
    copied = phase_counter()
    claims = job_claims(n_images * n_groups * o_blocks, workers)
    batch_pixels = POINT_BATCH_TILES * tile_width
    for thread in prange(max(planes.shape[0], claims.shape[0])):
        me = np.int64(thread)
        partial = np.empty(POINT_BATCH_TILES * TILE_FLOATS, np.float32)  # a batch's tiles between chunks
        _subsample_phase(source, x, planes, me, sh, sw, copied, n_planes, lanes)
        while True:
            job = next_job(claims, me)
            if job < 0:
                break
            n = job // (n_groups * o_blocks)
            g0 = (job // o_blocks) % n_groups * group
            g1 = min(plane, g0 + group)
            o0 = job % o_blocks * o_lanes
            # the next output block's weights (tile_conv's w_prefetch), a slice per tile over its reduction rows
            pf_lines = 0 if o0 + o_lanes >= out_channels else pf_share
            pf_at = (o0 + o_lanes) * w_channels
            if x_layout == NCHW16C:  # the reduction in chunks of channel blocks, each over a batch of tiles
                for b0 in range(g0, g1, batch_pixels):
                    b1 = min(g1, b0 + batch_pixels)
                    for c0 in range(0, channels, POINT_CHUNK_BLOCKS):
                        nb = min(POINT_CHUNK_BLOCKS, channels - c0)
                        batch_tiles = (b1 - b0 + tile_width - 1) // tile_width
                        # the next chunk's weights (the block's next one, or the next block's first), a slice per
                        # tile; in the group's first batch only (the later ones find them cached)
                        chunk_lines = _prefetch_share(nb * LANES * o_lanes, batch_tiles, nb, LANES) if b0 == g0 else 0
                        for i in range(batch_tiles):
                            p0 = b0 + i * tile_width
                            stored = min(tile_width, b1 - p0)
                            computed = _compiled_width(stored)
                            start = min(p0, plane - computed)
                            acc = wide_tile_zero() if c0 == 0 else tile_load(partial, i * TILE_FLOATS)
                            acc = tile_conv(acc, x_flat, ((n * channels + c0) * plane + start) * LANES, 0, plane * LANES, 1,
                                            LANES, wb, (o0 * channels + c0 * o_lanes) * LANES, 0, 1, nb, LANES, computed,
                                            vectors, prefetch, o0 * w_channels + (c0 + nb) * LANES * o_lanes
                                            + i * nb * chunk_lines * LINE_FLOATS, chunk_lines, 0, None, None)
                            if c0 + nb < channels:
                                tile_save(acc, partial, i * TILE_FLOATS)
                            else:
                                _store_pointwise(acc, y_flat, y_layout, n, y_channels, y_first, y_step, o0, o_lanes,
                                                 out_channels, plane, start, p0, stored, bias, residual_flat, has_residual,
                                                 act, act_a, act_b)
                continue
            for p0 in range(g0, g1, tile_width):  # full tiles, then a tail (49 pixels: 14, 14, 14, 7)
                stored = min(tile_width, g1 - p0)
                computed = _compiled_width(stored)
                start = min(p0, plane - computed)
                pf_at_tile = pf_at + (p0 - g0) // tile_width * tile_rows * pf_lines * LINE_FLOATS
                if x_layout == NHWC:  # a pixel's channels are one contiguous row (no weight prefetch: it
                    # slowed these tiles, 14 pixels' channel rows read at once, by 10-47%)
                    w_step = o_lanes if w_rows == 0 else w_rows  # packed, or the (C, O) matrix's rows
                    acc = tile_conv(wide_tile_zero(), x_flat, (n * plane + start) * channels, chunk, 0, 1, channels,
                                    wb, o0 * channels if w_rows == 0 else o0, chunk * w_step, channels // chunk, 1, chunk,
                                    computed, vectors, prefetch, None, 0, 0, w_step, None)
                else:
                    acc = tile_conv(wide_tile_zero(), x_flat, n * channels * plane + start, chunk * plane, 0, plane, 1,
                                    wb, o0 * channels, chunk * o_lanes, channels // chunk, 1, chunk, computed, vectors,
                                    prefetch, pf_at_tile, pf_lines, 0, None, None)
                _store_pointwise(acc, y_flat, y_layout, n, y_channels, y_first, y_step, o0, o_lanes, out_channels, plane,
                                 start, p0, stored, bias, residual_flat, has_residual, act, act_a, act_b)
