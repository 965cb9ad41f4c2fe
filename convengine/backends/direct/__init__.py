"""``direct``: the convolution sum itself, register-tiled, with no column matrix and no transform.

Why it exists: im2col writes and re-reads a column matrix kH*kW times the input's size, and
Winograd pays for its transforms; at batch 1 on a 2-core machine those memory passes cost as
much as the arithmetic. Here each output tile (up to 14 pixels x 32 channels on AVX-512, where
each broadcast input value feeds two FMAs; 16 channels where the layer's channels or the
registers allow no more) stays in vector registers while the reduction streams through it
(see ``_simd``), the way oneDNN and ONNX Runtime's NCHWc kernels work. Per call it copies the input once into a padded,
channel-blocked buffer; weights are packed once in ``prepare``; the output is written once,
in NCHW, with bias, residual and ReLU applied.

1x1 unpadded layers take a second kernel: a GEMM micro-kernel (6 output channels x 64 pixels
in registers) that reads the NCHW planes directly (at stride > 1, a subsampled copy), with
no transpose, the epilogue fused into its stores.

Layouts (``supports_layouts``): NCHW16c input, output or both on every path (a blocked input
is copied into the padded buffer row by row, no transpose; a blocked output is stored as the
tile holds it, one 16-channel vector per pixel); NHWC in and out on 1x1 stride-1 layers, where
the tiles read each pixel's channel row and store rows (ConvNeXt's Linear layers).

float32. Grouped convolutions run on the same tiles when each group has whole 16-channel
blocks of inputs and outputs (ResNeXt's later stages: 16 and 32 channels per group): an
output block's reduction then covers its own group's input blocks only; other groupings are
the ``grouped`` backend's. It accumulates the products of the direct formula in float32, so
it is exact in the engine's sense.
"""

from __future__ import annotations

import math

import numpy as np

from ...core.contract import EXACT
from ...core.epilogue import NONE, Epilogue
from ...core.hookspecs import hookimpl
from ...core.layouts import NCHW, NCHW16C, NHWC, kernel_view
from ...core.problem import ConvProblem
from ...runtime.hardware import l2_cache_bytes
from ...runtime.strides import aliases
from ...runtime.threads import get_num_threads, numba_threads
from ...runtime.workspace import aligned_empty, scratch
from .._numba import NumbaBackend
from ._tiles import LANES, LAYOUT_CODES, MAX_VECTORS, compiled_width, pairs_rows, row_tiles, tile_cost
from ._tiles import MAX_WIDTH as MAX_TILE_WIDTH

POINT_CHANNELS, POINT_PIXELS = 6, 64  # the 1x1 pixel-vector kernel's block (``_simd.POINT_*``; not imported: no numba at startup)
#: Fraction of the GEMM rate the 1x1 kernel reaches on full blocks (measured 0.88-0.98 on 56x56 layers).
POINT_EFFICIENCY = 0.95
#: Largest input panel (channels x 64 pixels) the 1x1 kernel re-reads from near caches for free.
#: Measured at 14x14 with threads claiming jobs at run time: 256 KiB to 1 MiB panels (1024-4096
#: channels) all ran at 79-82 GMAC/s, a 2 MiB panel at 68. (An earlier 128 KiB limit blamed
#: the cache for what was a thread left idle by a fixed split of 4 pixel blocks.) The profile
#: does not measure cache sizes, so this is a constant; near-cache bandwidth is taken as a
#: multiple of the measured memory bandwidth.
POINT_PANEL_CACHED_BYTES = 1024 * 1024
CACHE_BANDWIDTH_FACTOR = 4
#: Fraction of the machine's GEMM rate the kernel's inner loop reaches with full tiles.
DIRECT_EFFICIENCY = 0.95
#: Fixed cost of one kernel row's run (loop set-up, adding its sum to the tile's total), in
#: reduction steps: a 1x1 layer's runs are 16 steps long, a 3x3 layer's 48.
ROW_OVERHEAD_STEPS = 4
#: Fixed cost of one register tile (zeroing, the transposing store), in kernel rows of its
#: reduction: negligible for ResNet's 64+ channels x 3 rows, not for a 16-channel group's 3.
TILE_OVERHEAD_ROWS = 1
#: Per output element: the transpose out of the tile, the masked store with bias, residual and
#: ReLU, and the blocked input copy; measured on 1x1 layers, where it is most of the time.
EPILOGUE_FLOPS_PER_OUTPUT = 60
#: The same for a 1x1 layer on the register tiles, which has no input copy: 64 -> 256 channels
#: at 56x56 measured 0.57 ms against 0.55 for its multiply-adds alone at the inner loop's rate.
POINTWISE_EPILOGUE_FLOPS_PER_OUTPUT = 20


def channel_block(channels: int) -> int:
    """Channels per input block: 16, or all of them when fewer (the RGB stem is not padded to 16)."""
    return min(channels, LANES)


def tile_vectors(problem: ConvProblem, max_vectors: int = MAX_VECTORS) -> int:
    """Vectors of 16 output channels per register tile: ``max_vectors`` where each group's
    output channels are a multiple of that many vectors, else 1 (a tile neither straddles two
    groups nor computes padding channels it would throw away). With one group, ``max_vectors``
    also where the padding that adds is small (:data:`WIDE_TILE_PADDING`): SqueezeNet's 1000
    classifier channels as 32 blocks of 32 (1024 computed) instead of 63 of 16 (1008), each
    broadcast input feeding two FMAs instead of one."""
    per_group = problem.out_channels // problem.groups
    if per_group % (max_vectors * LANES) == 0:
        return max_vectors
    if problem.groups == 1:
        narrow = -(-per_group // LANES) * LANES
        wide = -(-per_group // (max_vectors * LANES)) * max_vectors * LANES
        if wide <= narrow * (1 + WIDE_TILE_PADDING):
            return max_vectors
    return 1


#: A layer whose packed weights fit in this fraction of one core's second-level cache runs its jobs
#: row by row (``_kernels.tiled_conv``'s ``band_rows`` 1): each thread then reads the input rows
#: it copied. Hot, 2 threads, 5 alternating fresh-process pairs: 32->64 at 147x147 -11.5%,
#: 64->128 at 112 -11%, 64->64 at 56 -6%. Row by row, the layers past the threshold ran slower
#: (128->128 at 28 +4-10%, 256->256 at 14 +11%: their weights no longer read by one thread per block).
ROWS_FIRST_L2_SHARE = 4
#: The others run output block by output block (``band_rows`` all rows) where the padded input
#: and the weights fit in this fraction of the second-level cache together; else in bands of
#: as many output rows as read this fraction of it of input (see :func:`band_rows`).
BAND_L2_SHARE = 4


#: A flattened plane (:func:`flat_plane`) is split into at least this many jobs per image and
#: thread pair (an output block's tiles in two or more runs where there are few blocks: 5 blocks
#: of 32 channels on two threads would leave one idle a fifth of the time).
MIN_FLAT_JOBS = 8


def flat_plane(problem: ConvProblem) -> bool:
    """Whether the layer's output plane is swept as one row (``_kernels.tiled_conv``'s ``job_tiles``):
    a kernel one column wide at stride 1 with no column padding reads, for consecutive pixels
    of the flattened plane, inputs that lie end to end across rows too."""
    _, _, left, right = problem.padding
    return problem.kernel_w == 1 and problem.stride == (1, 1) and left == right == 0 and problem.out_width > 1


def plane_tiles(pixels: int, max_width: int) -> tuple:
    """The tiles ``(start, width)`` of a flattened plane: full ones, and the rest in one (computed
    as the next compiled width: its extra pixels read the padding rows and the buffer's slack)."""
    full, rest = divmod(pixels, max_width)
    return tuple((i * max_width, max_width) for i in range(full)) + (((full * max_width, rest),) if rest else ())


def band_rows(problem: ConvProblem, weight_bytes: int, block: int, l2_bytes: int) -> int:
    """Output rows of a band (``_kernels.tiled_conv``'s ``band_rows``): 1 where the weights stay
    cached (:data:`ROWS_FIRST_L2_SHARE`), every row where the input stays cached beside them, else
    as many rows as read ``l2_bytes // BAND_L2_SHARE`` of input: the input is then read once per
    band, not once per output block (ResNet-50's and Inception-v3's stride-2 layers, whose
    input is four times their output)."""
    if weight_bytes <= l2_bytes // ROWS_FIRST_L2_SHARE:
        return 1
    channel_blocks = -(-problem.in_channels // block)
    row_bytes = channel_blocks * problem.padded_width * block * np.dtype(problem.dtype).itemsize
    if weight_bytes + problem.batch * problem.padded_height * row_bytes <= l2_bytes // BAND_L2_SHARE * 2:
        return problem.out_height
    return max(1, l2_bytes // BAND_L2_SHARE // (problem.stride[0] * row_bytes))
#: Share of extra output channels (over 16-channel blocks) that wide tiles may compute and throw away.
WIDE_TILE_PADDING = 0.25


def is_subsampled_pointwise(problem: ConvProblem) -> bool:
    """1x1, unpadded, one group, at any stride: a matrix product over every stride-th pixel (ResNet's downsamples)."""
    return (problem.kernel_h, problem.kernel_w, problem.padding, problem.groups) == (1, 1, (0, 0, 0, 0), 1)


def reduction_chunk(channels: int) -> int:
    """Input channels summed in registers before the running total: the largest divisor of
    ``channels`` up to 256 (``_simd.POINT_CHUNK``; a divisor, so that every chunk is full)."""
    return max(d for d in range(1, min(channels, 256) + 1) if channels % d == 0)


def runs_pointwise_tiles(problem: ConvProblem, tile_width: int) -> bool:
    """Whether a 1x1 layer runs on the register tiles (output channels in lanes), not the pixel-vector kernel.

    The tiles measured 0.79-0.95x the pixel kernel's time on ResNet-50's 1x1 layers (2-vCPU
    Zen 4; 1.0x on 64->64 at 56x56); they need a plane no narrower than the widest tile (a
    tile starts early rather than read past its plane) and chunks of at least 8 channels.
    On planes of :data:`PIXEL_KERNEL_PLANE` pixels and more, a long reduction into output
    channels that are not a multiple of 16 goes to the pixel kernel (6-channel blocks, none
    padded): MobileNetV2's and EfficientNet's 96/144 -> 24 projections at 56x56 ran there in
    0.69-0.95x the tiles' time, alone and inside the models (2-vCPU Intel,
    ``benchmarks/pointwise_kernels.py``); shorter reductions (24 -> 72, 48 -> 24) measured
    either way inside the models, and at 14x14 and 7x7 the tiles stay ahead.
    """
    plane = problem.out_height * problem.out_width
    if plane >= PIXEL_KERNEL_PLANE and problem.out_channels % LANES and problem.in_channels >= PIXEL_KERNEL_MIN_REDUCTION:
        return False
    return plane >= MAX_TILE_WIDTH and reduction_chunk(problem.in_channels) >= 8


#: Output pixels from which a 1x1 layer whose output channels are not a multiple of 16 may run on
#: the pixel kernel (56x56; at 28x28 the two measured within noise of each other, 0.8-1.5x) ...
PIXEL_KERNEL_PLANE = 56 * 56
#: ... when it sums at least this many input channels (see :func:`runs_pointwise_tiles`).
PIXEL_KERNEL_MIN_REDUCTION = 96


#: Input bytes per image up to which a 1x1 job on the register tiles sweeps the whole plane:
#: the input then stays in the caches while every output-channel block reads it (3.2 MB inputs
#: ran at 98-105 GMAC/s that way, 2-vCPU Zen 4).
WHOLE_PLANE_BYTES = 4 * 1024 * 1024
#: Above that, the plane is swept in groups of pixels whose input panel takes this much, every
#: output-channel block of a group before the next (weights re-read per group instead):
#: 1024 -> 64 channels at 56x56 (12.8 MB input) ran at 80 GMAC/s grouped, 57 not.
GROUP_PANEL_BYTES = 512 * 1024


#: Jobs a 1x1 layer on the register tiles is split into at least (whole tiles of pixels
#: permitting), so that the threads can balance: with 32-channel blocks, ResNet-50's 256 -> 64
#: layer at 56x56 was 2 whole-plane jobs, and a thread slowed by another process held up the
#: call (1.2-1.5x the time of its 4 jobs of 16 channels on the shared 2-vCPU machine).
MIN_POINTWISE_JOBS = 8


#: Floats ahead of each reduction step's input that a 1x1 tile prefetches: the same input
#: channel, about three 14-pixel tiles on. The tile reads one short run of each of C planes
#: (C streams, more than the hardware prefetcher follows), so inside a model, where the
#: input comes from the cache levels below, each run was waited for. Inside ResNet-50 the
#: 1x1 steps ran ~7-10% faster with it (24, 48 and 96 floats measured alike).
POINTWISE_PREFETCH = 48


def pixel_group(problem: ConvProblem, tile_width: int, vectors: int = 1, threads: int = 1) -> int:
    """Pixels per group of a 1x1 layer on the register tiles of ``vectors`` x 16 channels for ``threads``
    (see :data:`GROUP_PANEL_BYTES`, :data:`MIN_POINTWISE_JOBS` and :func:`splits_plane`)."""
    plane = problem.out_height * problem.out_width
    per_pixel = problem.in_channels * np.dtype(problem.dtype).itemsize
    group = plane
    if plane * per_pixel > WHOLE_PLANE_BYTES:
        group = min(plane, max(tile_width, GROUP_PANEL_BYTES // per_pixel // tile_width * tile_width))
    blocks = problem.batch * -(-problem.out_channels // (vectors * LANES))
    groups = -(-MIN_POINTWISE_JOBS // blocks)
    if splits_plane(problem, threads):
        groups = max(groups, -(-threads // problem.batch))
    return min(group, max(tile_width, -(-plane // groups // tile_width) * tile_width))


def splits_plane(problem: ConvProblem, threads: int) -> bool:
    """Whether a 1x1 layer's threads share out its pixels (each all output channels of its own) rather than its
    output channels (each the whole plane), where there are fewer images than threads.

    A thread then reads its share of the input and all weights, instead of all the input and its
    share of the weights; and it reads the pixels that the layer before wrote on the same core,
    and writes those that the next reads there. ResNet-50's 1x1 layers had run a thread's half of
    the output channels over the whole plane each, and read half their input from the other
    core's cache. Where the input is at least half the weights' size (twice the pixels as output
    channels): input read from the other core cost more than weights read from the shared cache.
    ResNet-50 at batch 1, in-process interleaved (2-vCPU Xeon): 0.970-0.972x for the layers with
    more pixels than output channels; its 1024 -> 256 layers at 14x14 too, 0.976-0.994x more.
    """
    return problem.batch < threads and 2 * problem.out_height * problem.out_width > problem.out_channels


def computed_pixels(pixels: int, tile_width: int) -> int:
    """Pixels the register tiles compute for a run of ``pixels``: full tiles and a tail, each
    rounded up to a compiled width (:data:`._tiles.TILE_WIDTHS`)."""
    full, tail = divmod(pixels, tile_width)
    return full * compiled_width(tile_width) + (compiled_width(tail) if tail else 0)


def tile_efficiency(out_width: int, max_width: int, vectors: int = 1, out_height: int = 1) -> float:
    """Share of the FMA rate a row of ``out_width`` pixels x ``vectors`` gets on its tiles (:func:`._tiles.row_tiles`):
    what pixels computed and not stored, and tiles of too few accumulators, cost. Rows that run two to a
    tile (:func:`._tiles.pairs_rows`) count as such, an odd last row on its own."""
    row = sum(tile_cost(width, vectors) for _, width in row_tiles(out_width, max_width, vectors))
    if not pairs_rows(out_width, out_height, max_width):
        return out_width / row
    pairs, odd = divmod(out_height, 2)
    return out_width * out_height / (pairs * tile_cost(2 * out_width, vectors) + odd * row)


class DirectBackend(NumbaBackend):
    name = "direct"
    numerical_class = EXACT
    # 2: 1x1 layers on the register tiles; 3: two channel vectors per tile; 4: the 1x1 tiles'
    # input prefetch; 5: NCHW16c and NHWC layouts, GELU (a new version: tuned choices are measured again)
    version = "5"
    residual_in_place = True  # each output element is written after its residual element was read
    weight_views = True  # prepare() copies what it packs; an NHWC 1x1 layer's (C, O) matrix it reads in place

    def __init__(self, tile_width: int | None = None):
        if tile_width is not None:
            if isinstance(tile_width, bool) or not isinstance(tile_width, int) or not 1 <= tile_width <= MAX_TILE_WIDTH:
                raise ValueError(f"tile_width must be an int from 1 to {MAX_TILE_WIDTH} (pixels per register tile), "
                                 f"got {tile_width!r}")
        self._tile_width = tile_width
        self._max_vectors = None

    @property
    def tile_width(self) -> int:
        if self._tile_width is None:
            from ._simd import preferred_width

            self._tile_width = preferred_width()
        return self._tile_width

    @property
    def max_vectors(self) -> int:
        """Output-channel vectors a register tile may hold on this machine (see :func:`tile_vectors`)."""
        if self._max_vectors is None:
            from ._simd import preferred_vectors

            self._max_vectors = preferred_vectors()
        return self._max_vectors

    def supports(self, problem: ConvProblem):
        if problem.dtype != "float32":
            return "float32 only (its register tiles are 16 float32 lanes)"
        if problem.groups != 1 and (problem.in_channels // problem.groups % LANES
                                     or problem.out_channels // problem.groups % LANES):
            return "groups > 1 only with multiples of 16 input and output channels per group (the grouped backend runs the rest)"
        return None

    def estimate_seconds(self, problem: ConvProblem, machine) -> float:
        if is_subsampled_pointwise(problem):
            return self._estimate_pointwise(problem, machine)
        block = channel_block(problem.in_channels)
        padded_in = -(-problem.in_channels // block) * block
        padded_out = -(-problem.out_channels // LANES) * LANES
        work = problem.flops * (padded_in / problem.in_channels) * (padded_out / problem.out_channels)
        run = problem.kernel_w * block if problem.dilation[1] == 1 else block
        # a group's reduction is shorter: each tile's fixed costs are spread over fewer rows of it
        reduction_rows = padded_in // block // problem.groups * problem.kernel_h
        chains = tile_efficiency(problem.out_width, self.tile_width, tile_vectors(problem, self.max_vectors),
                                 problem.out_height)
        rate = (machine.gemm_flops(problem.dtype) * DIRECT_EFFICIENCY * chains
                * run / (run + ROW_OVERHEAD_STEPS) * reduction_rows / (reduction_rows + TILE_OVERHEAD_ROWS))
        itemsize = np.dtype(problem.dtype).itemsize
        # the weights stream while the tiles compute: whichever is longer bounds the kernel
        weights = (padded_in * padded_out // problem.groups * problem.kernel_h * problem.kernel_w * itemsize
                   / machine.bandwidth)
        epilogue = int(np.prod(problem.output_shape)) * EPILOGUE_FLOPS_PER_OUTPUT / machine.gemm_flops(problem.dtype)
        copies = (2 * problem.batch * padded_in * problem.padded_height * problem.padded_width  # blocked input
                  + int(np.prod(problem.output_shape))) * itemsize  # output, written once
        # one parallel kernel: the input copy and the convolution share it
        return max(work / rate, weights) + epilogue + copies / machine.bandwidth + machine.parallel_launch_s

    def _estimate_pointwise(self, problem: ConvProblem, machine) -> float:
        if runs_pointwise_tiles(problem, self.tile_width):
            return self._estimate_pointwise_tiles(problem, machine)
        plane = problem.out_height * problem.out_width
        # a tail block computes only the vectors that hold pixels
        used = (plane / (-(-plane // LANES) * LANES)
                * problem.out_channels / (-(-problem.out_channels // POINT_CHANNELS) * POINT_CHANNELS))
        compute = problem.flops / (machine.gemm_flops(problem.dtype) * POINT_EFFICIENCY * used)
        itemsize = np.dtype(problem.dtype).itemsize
        weights = problem.in_channels * problem.out_channels * itemsize / machine.bandwidth
        # each output-channel block re-reads its pixel block's whole input panel; past the
        # near caches that is what the FMAs wait on (8192 -> 128 channels at 14x14: 68
        # instead of 80 GMAC/s)
        panel = problem.in_channels * POINT_PIXELS * itemsize
        o_blocks = -(-problem.out_channels // POINT_CHANNELS)
        restream = 0.0
        if panel > POINT_PANEL_CACHED_BYTES:
            restream = (o_blocks * problem.batch * problem.in_channels * plane * itemsize
                        / (CACHE_BANDWIDTH_FACTOR * machine.bandwidth))
        subsample = (0.0 if problem.is_pointwise
                     else 2 * problem.batch * problem.in_channels * plane * itemsize / machine.bandwidth)
        # one parallel kernel; the output is written once, by the FMA loop's stores
        return max(compute, weights) + restream + subsample + machine.parallel_launch_s

    def _estimate_pointwise_tiles(self, problem: ConvProblem, machine) -> float:
        plane = problem.out_height * problem.out_width
        group = pixel_group(problem, self.tile_width, tile_vectors(problem, self.max_vectors), get_num_threads())
        n_groups = -(-plane // group)
        last = plane - (n_groups - 1) * group
        computed = (n_groups - 1) * computed_pixels(group, self.tile_width) + computed_pixels(last, self.tile_width)
        padded_out = -(-problem.out_channels // LANES) * LANES
        chunk = reduction_chunk(problem.in_channels)
        work = problem.flops * (padded_out / problem.out_channels) * (computed / plane)
        rate = (machine.gemm_flops(problem.dtype) * DIRECT_EFFICIENCY * chunk / (chunk + ROW_OVERHEAD_STEPS)
                * tile_efficiency(self.tile_width, self.tile_width, tile_vectors(problem, self.max_vectors)))
        itemsize = np.dtype(problem.dtype).itemsize
        weight_bytes = problem.in_channels * padded_out * itemsize
        # read from memory once, then again from the caches by every further group and image
        weights = weight_bytes * (1 + (problem.batch * n_groups - 1) / CACHE_BANDWIDTH_FACTOR) / machine.bandwidth
        epilogue = (int(np.prod(problem.output_shape)) * POINTWISE_EPILOGUE_FLOPS_PER_OUTPUT
                    / machine.gemm_flops(problem.dtype))
        subsample = (0.0 if problem.is_pointwise
                     else 2 * problem.batch * problem.in_channels * plane * itemsize / machine.bandwidth)
        return max(work / rate, weights) + epilogue + subsample + machine.parallel_launch_s

    def supports_epilogue(self, problem: ConvProblem, epilogue: Epilogue):
        return None  # applied where the output tile leaves the registers

    def supports_output_slice(self, problem: ConvProblem, epilogue: Epilogue, step: int):
        # The kernels index the output by image, first channel and channel step; a fused residual
        # is read at the output's own indices, so it needs the slice to be one contiguous block.
        if epilogue.residual and (problem.batch != 1 or step != 1):
            return "a fused residual only with a slice that is one contiguous block (one image, step 1)"
        if step != 1 and is_subsampled_pointwise(problem) and not runs_pointwise_tiles(problem, self.tile_width):
            return "the pixel-vector 1x1 kernel writes output channels one plane apart only (step 1)"
        return None

    def kernels(self, problem: ConvProblem, epilogue: Epilogue = NONE):
        from ._kernels import precompile_kernels

        if not is_subsampled_pointwise(problem):
            return precompile_kernels("tiled_conv")
        return precompile_kernels("pointwise_tiles" if runs_pointwise_tiles(problem, self.tile_width) else "pointwise_conv")

    def supports_layouts(self, problem: ConvProblem):
        if problem.layouts == (NHWC, NHWC):
            if not problem.is_pointwise or problem.out_height * problem.out_width < MAX_TILE_WIDTH:
                return (f"NHWC only for 1x1 stride-1 unpadded layers of at least {MAX_TILE_WIDTH} pixels "
                        f"(a matrix product over channels-last rows)")
            return None
        if NHWC in problem.layouts:
            return "NHWC only in and out together"
        return None  # NCHW16c in, out or both: every path

    def prepare(self, problem: ConvProblem, weight, bias, epilogue: Epilogue = NONE):
        if is_subsampled_pointwise(problem):
            return self._prepare_pointwise(problem, weight, bias, epilogue)
        from ._kernels import input_slack, tiled_conv

        x_layout, y_layout = (LAYOUT_CODES[layout] for layout in problem.layouts)
        block = LANES if problem.input_layout == NCHW16C else channel_block(problem.in_channels)
        c_blocks = -(-problem.in_channels // block)
        vectors = tile_vectors(problem, self.max_vectors)
        o_lanes = vectors * LANES  # output channels per block
        o_blocks = -(-problem.out_channels // o_lanes)
        group_blocks = c_blocks // problem.groups  # input blocks an output block's reduction covers
        kh, kw = problem.kernel_h, problem.kernel_w
        packed = np.zeros((o_blocks * o_lanes, group_blocks * block, kh, kw), np.float32)
        packed[:problem.out_channels, :problem.in_channels // problem.groups] = weight
        # (ob, o, cb, c, kh, kw) -> (ob, cb, kh, kw, c, o): one reduction step reads a block's output channels
        wb = aligned_empty((o_blocks, group_blocks, kh, kw, block, o_lanes), np.float32)
        wb[...] = packed.reshape(o_blocks, o_lanes, group_blocks, block, kh, kw).transpose(0, 2, 4, 5, 3, 1)
        wb = wb.reshape(-1)
        del packed
        b = np.zeros(problem.out_channels, np.float32) if bias is None else bias
        top, _, left, _ = problem.padding
        hp, wp = problem.padded_height, problem.padded_width
        (sh, sw), (dh, dw) = problem.stride, problem.dilation
        act = epilogue.kernel_activation()
        job_tiles = 0
        if flat_plane(problem):  # the plane as one row, swept in tiles across its rows
            tiles = np.array(plane_tiles(problem.out_height * problem.out_width, self.tile_width), np.int64)
            job_tiles = -(-len(tiles) // max(1, -(-MIN_FLAT_JOBS // (problem.batch * o_blocks))))
        else:
            tiles = np.array(row_tiles(problem.out_width, self.tile_width, vectors), np.int64)
        slack = input_slack(sw, block)
        band = band_rows(problem, wb.nbytes, block, l2_cache_bytes())
        shape = (problem.batch, c_blocks, hp, wp, block)  # the padded blocked copy's
        floats = math.prod(shape)
        weights = (top, left, wb, kh, kw, sh, sw, dh, dw, group_blocks, b)
        sweep = (tiles, vectors)
        layout = (x_layout, y_layout, self.tile_width, band, job_tiles)

        def execute(x: np.ndarray, residual=None, in_place: bool = False, out=None) -> np.ndarray:
            workers = numba_threads()
            blocked = scratch("direct.input", (floats + slack,), np.float32)[:floats].reshape(shape)
            y, first, step = destination(problem, out, residual if in_place else None)
            res = y if residual is None else residual
            tiled_conv(kernel_view(x, problem.input_layout), blocked, *weights, kernel_view(res, problem.output_layout),
                       residual is not None, *act, kernel_view(y, problem.output_layout), first, step, *sweep, workers,
                       *layout)
            return y if out is None else out.view

        return execute

    def _prepare_pointwise(self, problem: ConvProblem, weight, bias, epilogue: Epilogue):
        """1x1, no padding: a matrix product over NCHW planes (strided: over a subsampled copy made in the same kernel).

        On the register tiles where :func:`runs_pointwise_tiles`, else on the pixel-vector kernel.
        """
        from ._kernels import pointwise_conv, pointwise_tiles

        x_layout, y_layout = (LAYOUT_CODES[layout] for layout in problem.layouts)
        input_blocked = problem.input_layout == NCHW16C
        tiles = problem.layouts != (NCHW, NCHW) or runs_pointwise_tiles(problem, self.tile_width)
        vectors = tile_vectors(problem, self.max_vectors)
        rows = vectors * LANES if tiles else POINT_CHANNELS  # output channels per block
        o_blocks = -(-problem.out_channels // rows)
        # a blocked input sums over its padding channels too (zeros, as their weights are)
        in_channels = -(-problem.in_channels // LANES) * LANES if input_blocked else problem.in_channels
        columns = _channels_last_matrix(weight, rows) if problem.layouts == (NHWC, NHWC) else None
        if columns is not None:  # the caller's (C, O) matrix itself: the weights are held once (ConvNeXt's Linear layers)
            w_packed, w_rows = columns
        else:
            w_packed, w_rows = _packed_pointwise(weight.reshape(problem.out_channels, problem.in_channels), o_blocks, rows,
                                                 in_channels), 0
        b = np.zeros(problem.out_channels, np.float32) if bias is None else bias
        act = epilogue.kernel_activation()
        sh, sw = problem.stride
        subsampled = ((problem.batch, in_channels // LANES, problem.out_height, problem.out_width * LANES) if input_blocked
                      else (problem.batch, problem.in_channels, problem.out_height, problem.out_width))
        chunk, tile_width = reduction_chunk(problem.in_channels), self.tile_width
        group = pixel_group(problem, tile_width, vectors, get_num_threads())

        strided = (sh, sw) != (1, 1)

        def execute(x: np.ndarray, residual=None, in_place: bool = False, out=None) -> np.ndarray:
            workers = numba_threads()
            x = kernel_view(x, problem.input_layout)
            products_read = scratch("direct.subsampled", subsampled, np.float32) if strided else x
            y, first, step = destination(problem, out, residual if in_place else None)
            res = y if residual is None else residual
            if tiles:
                pointwise_tiles(x, products_read, sh, sw, w_packed, chunk, b, kernel_view(res, problem.output_layout),
                                residual is not None, *act, kernel_view(y, problem.output_layout), first, step, tile_width,
                                group, vectors, workers, POINTWISE_PREFETCH, x_layout, y_layout, w_rows)
            else:
                pointwise_conv(x, products_read, sh, sw, w_packed, b, res, residual is not None, *act, y, first, workers)
            return y if out is None else out.view

        return execute


def _packed_pointwise(matrix: np.ndarray, o_blocks: int, rows: int, in_channels: int) -> np.ndarray:
    """A 1x1 layer's ``(O, C)`` weights as the kernels read them, flat: blocks of ``rows`` output
    channels, in each the ``rows`` weights of one input channel after another (zero rows and
    columns pad them to whole blocks and to ``in_channels``)."""
    if (o_blocks * rows, in_channels) != matrix.shape:  # zero rows and columns to whole blocks (a copy)
        padded = np.zeros((o_blocks * rows, in_channels), np.float32)
        padded[:matrix.shape[0], :matrix.shape[1]] = matrix
        matrix = padded
    # (ob, r, c) -> (ob, c, r): one step reads the block's weights of one input channel. One copy, no
    # padded temporary where none is needed: the largest layers' temporaries set a model's peak while preparing
    packed = aligned_empty((o_blocks, matrix.shape[1], rows), np.float32)
    packed[...] = matrix.reshape(o_blocks, rows, -1).transpose(0, 2, 1)
    return packed.reshape(-1)


def _channels_last_matrix(weight: np.ndarray, rows: int):
    """``(flat, row stride)`` of the ``(C, O)`` matrix whose transpose ``weight`` (O, C, 1, 1) is, where
    the NHWC tiles can read it in place (``Backend.weight_views``): unit column stride, rows whose
    stride does not crowd the cache sets (:mod:`convengine.runtime.strides`), writable (a read-only
    array is another type to Numba, a second compile), ``O`` whole blocks of ``rows`` channels;
    else ``None`` (packed instead). ``flat`` spans the rows, padding included."""
    out_channels, in_channels = weight.shape[:2]
    matrix = weight.reshape(out_channels, in_channels).T
    row_bytes, column_bytes = matrix.strides
    if (out_channels % rows or column_bytes != matrix.itemsize or row_bytes < out_channels * matrix.itemsize
            or row_bytes % matrix.itemsize or aliases(row_bytes) or not matrix.flags.writeable):
        return None
    row_stride = row_bytes // matrix.itemsize
    span = (in_channels - 1) * row_stride + out_channels
    return np.lib.stride_tricks.as_strided(matrix, shape=(span,), strides=(matrix.itemsize,)), row_stride


def destination(problem: ConvProblem, out, over):
    """``(array, first channel, channel step)`` the kernels write to: a new array, the residual given up
    (``over``), or ``out``'s buffer (a slice that is one contiguous block passes as itself: a residual
    then shares its indices; a blocked buffer's first channel counts blocks)."""
    if out is None:
        return (np.empty(problem.output_array_shape, np.float32) if over is None else over), 0, 1
    view = out.view
    if view.flags.c_contiguous:
        return view, 0, 1
    # (a blocked buffer's first block: the kernels' y_first counts what y's axis 1 counts)
    return (out.buffer, out.start // LANES, 1) if problem.output_layout == NCHW16C else (out.buffer, out.start, out.step)


@hookimpl
def convengine_register_backends(register):
    register(DirectBackend())
