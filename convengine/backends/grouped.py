"""``grouped``: depthwise and grouped convolutions on register tiles, epilogue fused.

Why it exists: a grouped convolution is many small convolutions side by side. im2col runs
one BLAS product per group per image (32 products of 4x36 by 36x3136 for ResNeXt's first
stage: the calls cost more than the arithmetic), and a depthwise layer (MobileNet,
EfficientNet: one input channel per group) is nine multiply-adds per output, a memory-bound
pass that a column matrix nine times the input's size only slows down. ``direct`` runs
``groups == 1`` only. Here each job copies one group's band of input rows into a
per-thread buffer (zero-padded, strided inputs split into phase planes so that every tap
reads contiguously) and a register tile of up to 8 output channels x 8 vectors of 16 pixels
accumulates the group's whole reduction before the band's rows are written once, in NCHW,
with bias, residual and activation (:mod:`convengine.core.epilogue`, every one of them)
applied. See :mod:`._grouped_kernels` for the layout.

float32, ``groups > 1`` only, any stride, padding, dilation and channel multiplier. It sums
the products of the direct formula in float32 (at most :data:`MAX_CHUNK_PRODUCTS` in
registers before the running total), so it is exact in the engine's sense.
"""

from __future__ import annotations

import numpy as np

from ..core.contract import EXACT
from ..core.epilogue import NONE, Epilogue
from ..core.hookspecs import hookimpl
from ..core.layouts import NCHW, NCHW16C, kernel_view
from ..core.problem import ConvProblem
from ..runtime.threads import get_num_threads, numba_threads
from ..runtime.workspace import scratch
from ._grouped_tiles import CHANNEL_BLOCKS, MAX_CHUNK_PRODUCTS, MAX_VECTORS
from ._numba import NumbaBackend
from .direct._tiles import LANES, MAX_WIDTH, compiled_width

#: Floats of a job's input band that stay in the core's first-level cache with the tile's output.
BAND_FLOATS = 6144
#: Jobs per thread wanted, so that threads that start late or run slow even out.
JOBS_PER_THREAD = 4
#: Bytes of a depthwise job's blocked input rows (96 KiB: past the first-level cache, 32-48 KiB, so
#: read from the second-level one): each band copies its kernel's extra rows again, and 48 KiB bands
#: of 112-pixel rows (4 output rows from 6 input rows) copied half as much again. Two graphs in one
#: process, alternating, batch 1, against 48 KiB: the depthwise layers of MNASNet 0.955x and 0.970x,
#: MobileNetV2 0.975x, EfficientNet-B0 0.974x, MobileNetV3-Large 0.970x, ShuffleNetV2 unchanged
#: (whole models 0.986-0.990x; an A/A control 0.995-0.998x); batch 32, MobileNetV2 0.930x,
#: EfficientNet-B0 0.956x. 64 KiB: MobileNetV2 at batch 32 1.018x; 128 KiB no better at batch 1.
BLOCKED_BAND_BYTES = 96 * 1024
#: Vector-issue slots per 16 elements moved through a register transpose (into the blocked
#: layout and, in the store, out of it): 64 shuffles per 16 x 16 block, and the stores.
TRANSPOSE_SLOTS = 6
#: The grouped path's band copy and finishing pass, in vector-issue slots per element (fitted
#: by least squares on the grouped layers of benchmarks/grouped_layers.py at batch 1: about 3.5
#: and 0.2; their loops run a row of a plane at a time, a few dozen elements).
FILL_SLOTS_PER_INPUT = 3.5
FINISH_SLOTS_PER_OUTPUT = 0.2
#: Outputs a job should have at least: below, groups are taken several per job.
GROUP_JOB_OUTPUTS = 4096
#: Vector-issue slots of one reduction step of a tile of ``mb`` channels x ``nv`` vectors:
#: ``mb * nv`` FMAs (two per cycle) against ``nv`` unaligned input loads and ``mb`` weight
#: broadcasts, which split cache lines and so go at about one per cycle: two slots each.
LOAD_SLOTS = 2
#: Share of the machine's GEMM rate (per issue slot) the tiles' steps reach (loop and address
#: overhead, two threads sharing a 2-vCPU machine); fitted on the grouped layers of
#: benchmarks/grouped_layers.py at batch 1 (predictions within 0.6-1.7x of the best of 15 runs).
TILE_EFFICIENCY = 0.6


def channel_block(per_group: int) -> int:
    """Output channels per register tile for ``per_group`` output channels per group."""
    return next((mb for mb in CHANNEL_BLOCKS if mb >= per_group), CHANNEL_BLOCKS[-1])


def reduction_chunk(in_per_group: int, taps: int) -> int:
    """Input channels summed in registers at a time: even chunks of at most MAX_CHUNK_PRODUCTS products."""
    most = max(1, MAX_CHUNK_PRODUCTS // taps)
    chunks = -(-in_per_group // most)
    return -(-in_per_group // chunks)


def _step_slots(mb: int, nv: int) -> int:
    return max(mb * nv, LOAD_SLOTS * (mb + nv))


class Geometry:
    """The sizes a problem's jobs work with (see :mod:`._grouped_kernels`)."""

    def __init__(self, problem: ConvProblem, workers: int):
        p = problem
        (sh, sw), (dh, dw) = p.stride, p.dilation
        self.in_per_group = p.in_channels // p.groups
        self.out_per_group = p.out_channels // p.groups
        self.mb = channel_block(self.out_per_group)
        self.vectors = MAX_VECTORS[self.mb]
        self.taps = p.kernel_h * p.kernel_w
        self.chunk = reduction_chunk(self.in_per_group, self.taps)
        self.wq = -(-p.padded_width // sw)  # the phase planes' width (the output run's row pitch)
        self.hq_extra = (p.kernel_h - 1) * dh // sh  # phase-plane rows past a band's output rows
        self.max_qc = (p.kernel_w - 1) * dw // sw
        per_row = self.in_per_group * sh * sw * self.wq
        rows = max(1, min(p.out_height, BAND_FLOATS // per_row - self.hq_extra))
        wanted_bands = -(-JOBS_PER_THREAD * workers // (p.batch * p.groups))
        if -(-p.out_height // rows) < wanted_bands:  # too few jobs for the threads: thinner bands
            rows = max(1, -(-p.out_height // wanted_bands))
        self.band_rows = rows
        # small planes: several groups per job, so that a job's fixed costs (its call, claiming it)
        # are paid per GROUP_JOB_OUTPUTS outputs or so, as long as every thread gets JOBS_PER_THREAD jobs
        per_group = self.out_per_group * rows * p.out_width
        most = max(1, p.batch * p.groups * -(-p.out_height // rows) // (JOBS_PER_THREAD * workers))
        self.group_block = max(1, min(most, GROUP_JOB_OUTPUTS // per_group))
        self.slack = self.max_qc + 4 * LANES
        self.in_floats = self.in_per_group * sh * sw * self.plane + self.slack
        self.o_step = -(-(rows * self.wq + LANES) // LANES) * LANES
        self.out_floats = self.mb * self.o_step

    def band_sizes(self, out_height: int) -> list[int]:
        """Output rows of each band of one (image, group)."""
        return [min(self.band_rows, out_height - r0) for r0 in range(0, out_height, self.band_rows)]

    @property
    def plane(self) -> int:
        """Floats per phase plane: a band's rows and the rows below it that its taps reach."""
        return (self.band_rows + self.hq_extra) * self.wq

    def tap_offsets(self, problem: ConvProblem) -> np.ndarray:
        """Each kernel tap's offset from an output's index into its channel's phase planes (p-major, as the weights)."""
        (sh, sw), (dh, dw) = problem.stride, problem.dilation
        return np.array([((p * dh % sh) * sw + q * dw % sw) * self.plane + (p * dh // sh) * self.wq + q * dw // sw
                         for p in range(problem.kernel_h) for q in range(problem.kernel_w)], np.int64)


def is_depthwise(problem: ConvProblem) -> bool:
    """One input and one output channel per group: the channels-in-lanes path."""
    return problem.groups == problem.in_channels == problem.out_channels


class DepthwiseGeometry:
    """The sizes of the channels-in-lanes depthwise path's jobs (see ``_grouped_kernels.depthwise_conv``)."""

    def __init__(self, problem: ConvProblem, workers: int, tile_width: int):
        p = problem
        (sh, sw), (dh, _) = p.stride, p.dilation
        self.wp = p.padded_width
        self.tile_width = tile_width
        halo = (p.kernel_h - 1) * dh + 1  # input rows of one output row
        most_rows_in = max(halo, BLOCKED_BAND_BYTES // (self.wp * LANES * 4))
        rows = max(1, min(p.out_height, (most_rows_in - halo) // sh + 1))
        c_blocks = -(-p.in_channels // LANES)
        wanted_bands = -(-JOBS_PER_THREAD * workers // (p.batch * c_blocks))
        if -(-p.out_height // rows) < wanted_bands:  # too few jobs for the threads: thinner bands
            rows = max(1, -(-p.out_height // wanted_bands))
        self.band_rows = rows
        self.rows_in = (rows - 1) * sh + halo
        # a tile rounded up to a compiled width reads up to MAX_WIDTH pixels past its row's end
        # a multiple of 16: each thread's row starts on a cache line, as the scratch array does
        self.floats = self.rows_in * self.wp * LANES + MAX_WIDTH * sw * LANES


class GroupedBackend(NumbaBackend):
    name = "grouped"
    numerical_class = EXACT
    version = "2"  # 2: depthwise layers on NCHW16c (tuned choices are measured again)
    residual_in_place = True  # each output element is written after its residual element was read

    def __init__(self):
        self._tile_width = None

    @property
    def tile_width(self) -> int:
        """Pixels per depthwise register tile: 14 with AVX-512's 32 vector registers, 7 elsewhere (as ``direct``)."""
        if self._tile_width is None:
            from .direct._simd import preferred_width

            self._tile_width = preferred_width()
        return self._tile_width

    def supports(self, problem: ConvProblem):
        if problem.dtype != "float32":
            return "float32 only (its register tiles are 16 float32 lanes)"
        if problem.groups == 1:
            return "groups == 1: not a grouped convolution (use direct or im2col)"
        return None

    def estimate_seconds(self, problem: ConvProblem, machine) -> float:
        p = problem
        itemsize = np.dtype(p.dtype).itemsize
        inputs, outputs = int(np.prod(p.input_shape)), int(np.prod(p.output_shape))
        if is_depthwise(p):
            # per output row of a 16-channel block: each tile's taps load a weight vector and one
            # aligned input vector per pixel computed (two loads a cycle, as the FMAs); the
            # register transposes into and out of the blocked layout cost per element
            tiles = -(-p.out_width // self.tile_width)
            width = -(-p.out_width // tiles)
            computed = (tiles - 1) * compiled_width(width) + compiled_width(p.out_width - (tiles - 1) * width)
            transposed = inputs * (p.input_layout == NCHW) + outputs * (p.output_layout == NCHW)  # blocked: row copies
            slots = (p.batch * -(-p.in_channels // LANES) * p.out_height * p.kernel_h * p.kernel_w * (computed + tiles)
                     + TRANSPOSE_SLOTS * transposed / LANES)
        else:
            geo = Geometry(p, get_num_threads())
            slots = 0
            for rows in geo.band_sizes(p.out_height):
                run = rows * geo.wq
                full, tail = divmod(-(-run // LANES), geo.vectors)
                slots += (full * _step_slots(geo.mb, geo.vectors) + (_step_slots(geo.mb, tail) if tail else 0))
            m_blocks = -(-geo.out_per_group // geo.mb)
            slots *= p.batch * p.groups * m_blocks * geo.in_per_group * geo.taps
            # the band copies' and the finishing pass's short loops, per element
            slots += (FILL_SLOTS_PER_INPUT * inputs + FINISH_SLOTS_PER_OUTPUT * outputs) * TILE_EFFICIENCY
        # a slot is one 16-lane FMA issue: 32 float32 flops of the GEMM rate
        compute = slots * 2 * LANES / (machine.gemm_flops(p.dtype) * TILE_EFFICIENCY)
        # the input is read once (band halos aside) and the output written once; the band
        # buffers (and the grouped tile's output) stay in the core's caches
        traffic = (inputs + outputs) * itemsize / machine.bandwidth
        return compute + traffic + machine.parallel_launch_s

    def supports_epilogue(self, problem: ConvProblem, epilogue: Epilogue):
        return None  # every activation, with bias and residual, as the output is written

    def supports_layouts(self, problem: ConvProblem):
        if not is_depthwise(problem):
            return "NCHW only, but for depthwise layers (channels in the vector lanes: NCHW16c in, out or both)"
        if {problem.input_layout, problem.output_layout} - {NCHW, NCHW16C}:
            return "NCHW and NCHW16c only"
        return None

    def kernels(self, problem: ConvProblem, epilogue: Epilogue = NONE):
        from ._grouped_kernels import precompile_kernels

        return [k for k in precompile_kernels() if (k.function == "depthwise_conv") == is_depthwise(problem)]

    def prepare(self, problem: ConvProblem, weight, bias, epilogue: Epilogue = NONE):
        b = np.zeros(problem.out_channels, np.float32) if bias is None else bias
        if is_depthwise(problem):
            return self._prepare_depthwise(problem, weight, b, epilogue)
        from ._grouped_kernels import grouped_conv

        p = problem
        workers = numba_threads()
        geo = Geometry(p, workers)
        g, mb = p.groups, geo.mb
        m_blocks = -(-geo.out_per_group // mb)
        packed = np.zeros((g, m_blocks * mb, geo.in_per_group, geo.taps), np.float32)
        packed[:, :geo.out_per_group] = weight.reshape(g, geo.out_per_group, geo.in_per_group, geo.taps)
        # (g, blk, m, c, t) -> (g, blk, c, t, m): one reduction step reads the tile's mb weights together
        w_packed = np.ascontiguousarray(packed.reshape(g, m_blocks, mb, geo.in_per_group, geo.taps)
                                        .transpose(0, 1, 3, 4, 2)).reshape(-1)
        act, p0, p1 = epilogue.kernel_activation()
        top, left = p.padding[0], p.padding[2]
        (sh, sw) = p.stride
        by_workers = {workers: (geo, geo.tap_offsets(p))}  # the bands depend on the thread count

        def execute(x: np.ndarray, residual=None, in_place: bool = False) -> np.ndarray:
            n_workers = numba_threads()
            if n_workers not in by_workers:
                other = Geometry(p, n_workers)
                by_workers[n_workers] = (other, other.tap_offsets(p))
            jobs, taps = by_workers[n_workers]
            out = residual if in_place else np.empty(p.output_shape, np.float32)
            res = out if residual is None else residual
            in_scratch = scratch("grouped.input", (n_workers, jobs.in_floats), np.float32)
            out_scratch = scratch("grouped.output", (n_workers, jobs.out_floats), np.float32)
            grouped_conv(np.ascontiguousarray(x), out, w_packed, taps, b, res, residual is not None, act, p0, p1,
                         g, geo.in_per_group, geo.out_per_group, mb, top, left, sh, sw, jobs.wq, jobs.plane,
                         jobs.band_rows, jobs.hq_extra, geo.chunk, jobs.o_step, geo.vectors, jobs.group_block, n_workers,
                         in_scratch, out_scratch)
            return out

        return execute

    def _prepare_depthwise(self, problem: ConvProblem, weight, b, epilogue: Epilogue):
        """Multiplier 1: 16 channels in the vector lanes (``_grouped_kernels.depthwise_conv``)."""
        from ._grouped_kernels import depthwise_conv

        p = problem
        c_blocks = -(-p.in_channels // LANES)
        packed = np.zeros((c_blocks * LANES, p.kernel_h, p.kernel_w), np.float32)
        packed[:p.in_channels] = weight.reshape(p.in_channels, p.kernel_h, p.kernel_w)
        # (cb, lane, kh, kw) -> (cb, kh, kw, lane): one tap's weights of 16 channels are one vector
        w_packed = np.ascontiguousarray(packed.reshape(c_blocks, LANES, p.kernel_h, p.kernel_w).transpose(0, 2, 3, 1))
        w_packed = w_packed.reshape(-1)
        act, p0, p1 = epilogue.kernel_activation()
        (sh, sw), (dh, dw) = p.stride, p.dilation
        top, left = p.padding[0], p.padding[2]
        tile_width = self.tile_width
        by_workers: dict[int, DepthwiseGeometry] = {}

        x_blocked, y_blocked = p.input_layout == NCHW16C, p.output_layout == NCHW16C

        out_shape = p.output_array_shape
        taps = (p.kernel_h, p.kernel_w, sh, sw, dh, dw, top, left)

        def execute(x: np.ndarray, residual=None, in_place: bool = False) -> np.ndarray:
            n_workers = numba_threads()
            geo = by_workers.get(n_workers)
            if geo is None:
                geo = by_workers[n_workers] = DepthwiseGeometry(p, n_workers, tile_width)
            out = residual if in_place else np.empty(out_shape, np.float32)
            res = out if residual is None else residual
            rows = scratch("grouped.blocked", (n_workers, geo.floats), np.float32)  # rows start on cache lines
            depthwise_conv(kernel_view(x, p.input_layout), kernel_view(out, p.output_layout), w_packed, b,
                           kernel_view(res, p.output_layout), residual is not None, act, p0, p1, *taps, geo.wp,
                           geo.band_rows, tile_width, n_workers, rows, p.in_channels, x_blocked, y_blocked)
            return out

        return execute


@hookimpl
def convengine_register_backends(register):
    register(GroupedBackend())
