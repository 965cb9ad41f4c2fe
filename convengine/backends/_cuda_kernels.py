"""numba.cuda kernels of the ``cuda`` backend.

Only :mod:`convengine.backends.cuda` imports this module, and only when a problem is
prepared: importing numba costs a second, which ``import convengine`` must not pay.

Launch geometry, shared by both kernels: a 2-D thread block computes one tile of
``blockDim.y x blockDim.x`` outputs of a single ``(n, out_channel)`` plane, one output per
thread. The grid is 1-D and enumerates ``(n, out_channel, tile_row, tile_col)``, tile
column fastest: grid x allows 2**31 - 1 blocks, whereas y and z stop at 65535, which
``batch * out_channels`` alone can exceed.

Padding is never materialised: an input index outside the image reads as zero.
Accumulation starts from the bias (zeros when the problem has none) and stays in the
input dtype, as the backend's EXACT numerical class promises.
"""

import numba
from numba import cuda


@cuda.jit(device=True)
def _tile_origin(out_h, out_w, c_out):
    """``(n, o, row, col)`` of this block: its sample, output channel and first output."""
    tiles_w = (out_w + cuda.blockDim.x - 1) // cuda.blockDim.x
    tiles_h = (out_h + cuda.blockDim.y - 1) // cuda.blockDim.y
    block = cuda.blockIdx.x
    col = (block % tiles_w) * cuda.blockDim.x
    block //= tiles_w
    row = (block % tiles_h) * cuda.blockDim.y
    block //= tiles_h
    return block // c_out, block % c_out, row, col


@cuda.jit(device=True)
def _first_input_channel(o, x, w):
    """First input channel of output channel ``o``'s group (``groups = C_in / (C_in/groups)``)."""
    groups = x.shape[1] // w.shape[1]
    return (o // (w.shape[0] // groups)) * w.shape[1]


def _make_tiled_kernel(dtype):
    """The shared-memory kernel for one dtype.

    The shared array's dtype must be a compile-time constant, hence one kernel per dtype
    (a closure: numba freezes closure variables like globals). Its size is dynamic (shape
    0, bytes given as the 4th launch-configuration argument), so one compiled kernel
    serves every tile and patch size; both real numba.cuda and the simulator support it.
    """

    @cuda.jit
    def tiled(x, w, bias, y, sh, sw, dh, dw, top, left, patch_h, patch_w):
        """For each input channel of the group: stage the input patch the tile reads in
        shared memory (every thread loads a strided share of it, zero outside the image),
        then every thread accumulates its output from the patch.

        Neighbouring outputs reuse each input ``k_h * k_w / (s_h * s_w)`` times; staging
        turns those global reads into one coalesced load per patch element.
        """
        patch = cuda.shared.array(0, dtype)
        c_out, c_group, kh, kw = w.shape
        height, width = x.shape[2], x.shape[3]
        out_h, out_w = y.shape[2], y.shape[3]
        n, o, row0, col0 = _tile_origin(out_h, out_w, c_out)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        row, col = row0 + ty, col0 + tx
        inside = row < out_h and col < out_w
        first = _first_input_channel(o, x, w)
        iy0, ix0 = row0 * sh - top, col0 * sw - left
        thread = ty * cuda.blockDim.x + tx
        threads = cuda.blockDim.x * cuda.blockDim.y
        acc = bias[o]
        for c in range(c_group):
            for i in range(thread, patch_h * patch_w, threads):
                iy = iy0 + i // patch_w
                ix = ix0 + i % patch_w
                if 0 <= iy and iy < height and 0 <= ix and ix < width:
                    patch[i] = x[n, first + c, iy, ix]
                else:
                    patch[i] = 0
            cuda.syncthreads()
            # Threads past the output's edge still load and reach both barriers.
            if inside:
                for p in range(kh):
                    base = (ty * sh + p * dh) * patch_w + tx * sw
                    for q in range(kw):
                        acc += patch[base + q * dw] * w[o, c, p, q]
            cuda.syncthreads()
        if inside:
            y[n, o, row, col] = acc

    return tiled


#: The shared-memory kernel, by ``ConvProblem.dtype``.
TILED = {"float32": _make_tiled_kernel(numba.float32), "float64": _make_tiled_kernel(numba.float64)}


@cuda.jit
def direct(x, w, bias, y, sh, sw, dh, dw, top, left):
    """Every thread reads its inputs straight from global memory.

    The fallback for patches larger than the portable 48 KiB of shared memory per block
    (very large dilation or stride), where staging is impossible without an opt-in that
    not every GPU offers. numba specialises it per dtype on first launch.
    """
    c_out, c_group, kh, kw = w.shape
    height, width = x.shape[2], x.shape[3]
    out_h, out_w = y.shape[2], y.shape[3]
    n, o, row0, col0 = _tile_origin(out_h, out_w, c_out)
    row, col = row0 + cuda.threadIdx.y, col0 + cuda.threadIdx.x
    if row >= out_h or col >= out_w:
        return
    first = _first_input_channel(o, x, w)
    acc = bias[o]
    for c in range(c_group):
        for p in range(kh):
            iy = row * sh - top + p * dh
            if 0 <= iy and iy < height:
                for q in range(kw):
                    ix = col * sw - left + q * dw
                    if 0 <= ix and ix < width:
                        acc += x[n, first + c, iy, ix] * w[o, c, p, q]
    y[n, o, row, col] = acc
