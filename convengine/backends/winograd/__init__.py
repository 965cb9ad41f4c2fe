"""``tiled_winograd``: 3x3 stride-1 convolutions by Winograd's F(4x4, 3x3) on ``direct``'s register tiles.

Why it exists: a 3x3 layer at stride 1 is most of ResNet's, VGG's and DenseNet's arithmetic,
and ``direct`` already runs its multiply-adds near the FMA units' rate: the only way left to
be faster is fewer of them. F(4x4, 3x3) computes each 4x4 block of outputs from a 6x6 block
of inputs with 36 products per channel pair instead of 144 (4x fewer), at the cost of
transforming the input and the output (a few dozen additions per pixel and channel, on
16-channel vectors: :mod:`._simd`) and of a larger rounding error (lossy class:
``error_bound`` 5e-5 float32; measured 1.7e-6 to 3.3e-6 normwise on ResNet's layers against the
float64 reference, ``direct`` 2e-7). The products are
36 independent matrix products, one per position of the 6x6 block, and each runs on the same
register tile as ``direct``'s 1x1 layers (tiles of up to 14 Winograd tiles x 32 output
channels, each broadcast input feeding two FMAs): see :mod:`._kernels`.

The ``"auto"`` policy takes it only where it is predicted faster than every exact backend by
the engine's margin for lossy backends; an accuracy budget below its bound excludes it. The
transformed weights take 36 / 9 = 4 times a layer's 3x3 weights, cold inside a network: the
cost model adds reading them to the products' time, so at batch 1 ResNet's 14x14 and 7x7
stages stay on ``direct`` (256 channels at 14x14 ran 1.4 ms in ResNet-50 here, 0.8 on ``direct``).

float32; 3x3 kernels at stride 1, no dilation, one group; any
padding; NCHW and NCHW16c in and out; bias, residual and every fused activation.
"""

from __future__ import annotations

import numpy as np

from ...core.arrays import all_finite
from ...core.contract import LOSSY
from ...core.epilogue import NONE, Epilogue
from ...core.hookspecs import hookimpl
from ...core.layouts import NCHW16C, NHWC, kernel_view
from ...core.problem import ConvProblem
from ...runtime.hardware import l2_cache_bytes
from ...runtime.threads import get_num_threads, numba_threads
from ...runtime.workspace import aligned_empty, scratch
from .._numba import NumbaBackend
from ..direct import DIRECT_EFFICIENCY, DirectBackend, destination, tile_vectors
from ..direct._tiles import LANES, MAX_VECTORS, MAX_WIDTH, tile_cost
from ._transforms import TILE, transformed_weights

#: ``_kernels.winograd_conv``'s job orders (its ``order``; not imported from there: no Numba at startup).
RUN_BY_RUN, BLOCK_BY_BLOCK, FUSED = 0, 1, 2

#: The cost model's constants, fitted to in-model times (ResNet-50, DenseNet-121, GoogLeNet: each
#: layer's time with and without this backend, interleaved; 2-vCPU Xeon) so that its ratio to
#: ``direct``'s estimate falls within 15% of the measured one on ten layers (64 -> 64 at 56x56:
#: 0.64 against 0.68; 16 -> 32 at 28x28, which loses: 1.73 against 1.47). Fixed cost of one
#: position's matrix product on a run (zeroing the register tile, putting it aside), in
#: reduction steps ...
POSITION_OVERHEAD_STEPS = 32
#: ... vector operations per tile and 16-channel block of the input transform (with its loads
#: and stores) and of the output transform (with the epilogue's loop over the 16 pixels) ...
INPUT_TRANSFORM_OPS = 900
OUTPUT_TRANSFORM_OPS = 1200
#: ... at this many per FMA slot ...
TRANSFORM_OPS_PER_FMA = 1.0
#: ... and a call's cost beyond one kernel start: three phases and two barriers, the runs' loops
#: (small layers lose to ``direct`` on it: GoogLeNet's 16 -> 32 at 28x28 0.066 -> 0.097 ms).
CALL_OVERHEAD_S = 40e-6
#: Images a call transforms at a time at most: the transformed input of a batch is 4x its size.
MAX_IMAGES_BYTES = 64 * 1024 * 1024


#: Jobs per thread below which a layer's runs are made equal and a multiple of the threads.
BALANCED_JOBS = 8


def padded_channels(problem: ConvProblem) -> tuple:
    """``(input, output)`` channels as the transformed weights hold them: whole blocks of 16 inputs,
    and of the outputs a register tile takes (16 or 32, :func:`..direct.tile_vectors`)."""
    o_lanes = tile_vectors(problem, MAX_VECTORS) * LANES
    return -(-problem.in_channels // LANES) * LANES, -(-problem.out_channels // o_lanes) * o_lanes


def run_tiles(total: int, width: int, workers: int) -> list:
    """The runs ``(first tile, tiles)`` that ``total`` tiles are computed in, at most ``width`` each:
    as few as that allows, but where there are few, as many as make them equal and a multiple of
    ``workers`` (ResNet's 28x28 stage: 49 tiles as 13 + 12 + 12 + 12, where 14 + 14 + 14 + 7 kept
    one of two threads busy 28 tiles' time to the other's 21)."""
    count = -(-total // width)
    if count < BALANCED_JOBS * workers and count % workers:
        count = min(total, count + workers - count % workers)
    base, extra = divmod(total, count)
    sizes = [base + 1] * extra + [base] * (count - extra)
    return [(sum(sizes[:i]), size) for i, size in enumerate(sizes)]


def job_order(block_weight_bytes: int, run_bytes: int, n_runs: int) -> int:
    """``_kernels.winograd_conv``'s ``order``: one job a run, transforming its own tiles (``FUSED``),
    where one output block's transformed weights and one run's transformed input fit in the
    second-level cache together: the run's input stays there while every block's weights stream
    past it, and is never written to memory. Else the input is transformed in a phase of its
    own, and the products run output block by output block (each block's weights read once):
    hot, two threads (2-vCPU Xeon), ResNet's 512 channels at 7x7, batch 8 (2.4 MB of weights a
    block, 1.0 MB of input a run) 0.75x the time of running them run by run."""
    if block_weight_bytes + run_bytes <= l2_cache_bytes():
        return FUSED
    return BLOCK_BY_BLOCK if n_runs > 1 else RUN_BY_RUN


def tiles(problem: ConvProblem) -> tuple:
    """Tiles down and across the output plane."""
    return -(-problem.out_height // TILE), -(-problem.out_width // TILE)


class WinogradBackend(NumbaBackend):
    name = "tiled_winograd"
    numerical_class = LOSSY
    version = "1"
    residual_in_place = True  # each output element is written after its residual element was read
    bounds = {"float32": 5e-5, "float64": 1e-12}

    def error_bound(self, dtype: str) -> float:
        return self.bounds[dtype]

    def supports(self, problem: ConvProblem):
        if problem.dtype != "float32":
            return "float32 only (the register tiles are 16 float32 lanes)"
        if (problem.kernel_h, problem.kernel_w) != (3, 3):
            return f"3x3 kernels only (got {problem.kernel_h}x{problem.kernel_w})"
        if problem.stride != (1, 1):
            return f"stride 1 only (got stride {problem.stride[0]}x{problem.stride[1]})"
        if problem.dilation != (1, 1):
            return f"dilation 1 only (got dilation {problem.dilation[0]}x{problem.dilation[1]})"
        if problem.groups != 1:
            return "one group only (the grouped backend runs grouped layers)"
        return None

    def supports_layouts(self, problem: ConvProblem):
        if NHWC in problem.layouts:
            return "NCHW and NCHW16c only"
        return None

    def supports_epilogue(self, problem: ConvProblem, epilogue: Epilogue):
        return None  # applied in the output transform

    def supports_output_slice(self, problem: ConvProblem, epilogue: Epilogue, step: int):
        if epilogue.residual and (problem.batch != 1 or step != 1):
            return "a fused residual only with a slice that is one contiguous block (one image, step 1)"
        return None

    def kernels(self, problem: ConvProblem, epilogue: Epilogue = NONE):
        from ._kernels import precompile_kernels

        return precompile_kernels()

    def extra_weight_bytes(self, problem: ConvProblem) -> int:
        """Its transformed weights: 36 values per channel pair, the channels padded to whole blocks (4x a
        3x3 layer's weights, which it keeps too, for ``exact``)."""
        c_padded, o_padded = padded_channels(problem)
        return (TILE + 2) ** 2 * c_padded * o_padded * np.dtype(problem.dtype).itemsize

    def estimate_seconds(self, problem: ConvProblem, machine) -> float:
        th, tw = tiles(problem)
        n_tiles = th * tw
        positions = (TILE + 2) ** 2
        vectors = tile_vectors(problem, MAX_VECTORS)
        c_padded, o_padded = padded_channels(problem)
        itemsize = np.dtype(problem.dtype).itemsize
        runs = run_tiles(problem.batch * n_tiles, MAX_WIDTH, get_num_threads())
        computed = sum(tile_cost(width, vectors) for _, width in runs)
        flops = machine.gemm_flops(problem.dtype)
        work = 2.0 * positions * c_padded * o_padded * computed
        rate = flops * DIRECT_EFFICIENCY * c_padded / (c_padded + POSITION_OVERHEAD_STEPS)
        vector_op = 2.0 * LANES / flops / TRANSFORM_OPS_PER_FMA  # seconds per vector operation (an FMA's share)
        transforms = problem.batch * n_tiles * vector_op * (INPUT_TRANSFORM_OPS * c_padded // LANES
                                                            + OUTPUT_TRANSFORM_OPS * o_padded // LANES)
        weights = positions * c_padded * o_padded * itemsize / machine.bandwidth
        padded = problem.batch * c_padded * (TILE * th + 2) * (TILE * tw + 2) * itemsize
        order = job_order(positions * c_padded * vectors * LANES * itemsize, positions * c_padded * MAX_WIDTH * itemsize,
                          len(runs))
        # fused, a run's transformed input stays in the near caches; else it is written and read back
        transformed = 0 if order == FUSED else problem.batch * positions * c_padded * n_tiles * itemsize
        output = int(np.prod(problem.output_shape)) * itemsize
        copies = (2 * padded + 2 * transformed + output) / machine.bandwidth
        # added, not overlapped: inside a network the transformed weights (4x a 3x3 layer's) are cold, and
        # at batch 1 the 14x14 and 7x7 stages' products wait on them (256 channels at 14x14: 1.4 ms in
        # ResNet-50 against 0.6 hot)
        return work / rate + weights + transforms + copies + machine.parallel_launch_s + CALL_OVERHEAD_S

    def prepare(self, problem: ConvProblem, weight, bias, epilogue: Epilogue = NONE):
        from ..direct._simd import TILE_FLOATS, preferred_width
        from ._kernels import winograd_conv

        x_layout = 1 if problem.input_layout == NCHW16C else 0
        y_layout = 1 if problem.output_layout == NCHW16C else 0
        positions = (TILE + 2) ** 2
        vectors = tile_vectors(problem, MAX_VECTORS)
        o_lanes = vectors * LANES
        c_padded, o_padded = padded_channels(problem)  # (as extra_weight_bytes counts them)
        c_blocks, o_blocks = c_padded // LANES, o_padded // o_lanes
        transformed = transformed_weights(weight, TILE)  # (O, C, 6, 6)
        padded_u = np.zeros((o_padded, c_padded, positions), np.float32)
        padded_u[:problem.out_channels, :problem.in_channels] = transformed.reshape(problem.out_channels, problem.in_channels, -1)
        del transformed
        # (ob, o, cb, c, pos) -> (ob, pos, cb, c, o): a block's products read its weights as one stream
        u = aligned_empty((o_blocks, positions, c_blocks, LANES, o_lanes), np.float32)
        u[...] = padded_u.reshape(o_blocks, o_lanes, c_blocks, LANES, positions).transpose(0, 4, 2, 3, 1)
        u = u.reshape(-1)
        del padded_u
        b = np.zeros(problem.out_channels, np.float32) if bias is None else bias
        top, _, left, _ = problem.padding
        th, tw = tiles(problem)
        hp, wp = TILE * th + 2, TILE * tw + 2
        act = epilogue.kernel_activation()
        t_width = min(MAX_WIDTH, preferred_width())
        n_tiles = th * tw
        chunk = max(1, min(problem.batch, MAX_IMAGES_BYTES // (4 * positions * c_blocks * LANES * (n_tiles + t_width))))
        plans = {}
        finite_weights = all_finite(weight)
        fallback = []

        def exact():
            """``direct``'s executor for the same problem (prepared on first use): NaN and Inf then reach exactly
            the outputs whose window holds them, as in a direct convolution. On the original weights: ones
            read back from ``u`` are within a rounding of them, but not exactly 0 where they are (Inf times
            0 is NaN), nor of their sign where a tap is tiny (the sign of an Inf)."""
            if not fallback:
                fallback.append(DirectBackend().prepare(problem, weight, bias, epilogue=epilogue))
            return fallback[0]

        def plan(images: int, workers: int):
            """The runs of tiles of ``images`` images, each tile's slot, the products' job order, and ``v``'s runs."""
            if (images, workers) not in plans:
                runs = np.array(run_tiles(images * n_tiles, t_width, workers), np.int64)
                slots = np.empty(images * n_tiles, np.int64)
                for r, (first, width) in enumerate(runs):
                    slots[first:first + width] = r * t_width + np.arange(width)
                order = job_order(u.nbytes // o_blocks, runs_bytes(1), len(runs))
                plans[images, workers] = runs, slots, order, workers if order == FUSED else len(runs)
            return plans[images, workers]

        def runs_bytes(n_runs: int) -> int:
            return n_runs * positions * c_blocks * t_width * LANES * 4

        def execute(x: np.ndarray, residual=None, in_place: bool = False, out=None) -> np.ndarray:
            # (a batch in several calls: one may have written its outputs, and over its residual, before a
            # later one meets a NaN; so such a batch is checked whole, first)
            if not finite_weights or (chunk < problem.batch and not all_finite(x)):
                return exact()(x, residual, in_place, out)
            workers = numba_threads()
            y, first, step = destination(problem, out, residual if in_place else None)
            res = y if residual is None else residual
            x_k, y_k, res_k = (kernel_view(x, problem.input_layout), kernel_view(y, problem.output_layout),
                               kernel_view(res, problem.output_layout))
            mb = scratch("winograd.products", (workers * positions * TILE_FLOATS,), np.float32)
            nonfinite = np.zeros(1, np.int64)
            for n0 in range(0, problem.batch, chunk):
                images = min(chunk, problem.batch - n0)
                runs, slots, order, held = plan(images, workers)
                shape = (images, c_blocks, hp, wp, LANES)
                padded = scratch("winograd.padded", shape, np.float32)
                v = scratch("winograd.transformed", (runs_bytes(held) // 4,), np.float32)
                if images < problem.batch:
                    x_n, res_n, y_n = x_k[n0:n0 + images], res_k[n0:n0 + images], y_k[n0:n0 + images]
                else:  # one chunk: the arrays themselves, no views to make
                    x_n, res_n, y_n = x_k, res_k, y_k
                winograd_conv(x_n, padded, top, left, v, u, b, res_n, residual is not None, *act, y_n, first, step,
                              problem.out_height, problem.out_width, vectors, workers, x_layout, y_layout, t_width,
                              runs, slots, order, mb, nonfinite)
                if nonfinite[0]:  # nothing written: the exact path, for the whole call
                    return exact()(x, residual, in_place, out)
            return y if out is None else out.view

        return execute


@hookimpl
def convengine_register_backends(register):
    register(WinogradBackend())
