"""The register tile's shape in plain Python: read by the backend's cost model and by the kernels.

Kept apart from :mod:`._simd` (which imports llvmlite and Numba) so that the backend's module,
imported by every ``import convengine`` that registers it, needs no Numba, and so that each
number and :func:`compiled_width` exist once: ``_kernels`` compiles this very function with
Numba, the cost model calls it as it is. The layouts' kernel codes live here for the same reason.
"""

from ...core.layouts import NCHW, NCHW16C, NHWC

#: How the kernels are told a layout (``_kernels``' ``x_layout`` and ``y_layout``).
LAYOUT_CODES = {NCHW: 0, NCHW16C: 1, NHWC: 2}

#: Output channels per vector: 16 floats, one AVX-512 register.
LANES = 16
#: Pixels per tile: 14 accumulators + weights + broadcasts fit AVX-512's 32 registers.
MAX_WIDTH = 14
#: Vectors of output channels per tile (where the layer's channels allow): 2 x 14 = 28
#: accumulators + 2 weight vectors + a broadcast fit AVX-512's 32 registers, and each
#: broadcast input value feeds 2 FMAs instead of 1.
MAX_VECTORS = 2
#: The tile widths compiled (each is a loop nest of its own; all 14 took 9 s to compile). A
#: narrower tile runs as the next compiled width, its extra pixels computed and not stored.
#: 14 and 7 cover ResNet's 112/56/28/14/7-pixel rows exactly; 13, AlexNet's 13x13 layers
#: (5-7% faster than as 14-wide tiles, for 0.5 s more compile time); 8, Inception-v3's 8x8
#: layers (16 accumulators where two 4-pixel tiles held 8 each: its 8x8 convolutions 5.0 ->
#: 4.0 ms inside the model, for 0.4 + 0.7 s more compile time); 12, the 12x12 layers of the
#: package's own AlexNet at 224 pixels (as 13-wide tiles they computed 8% extra: those three
#: layers 3.40 -> 2.94 ms, for 0.5 s more compile time; no fixed-step nests of its own, which
#: cost 3 s more and were no faster, see ``_simd.FIXED_WIDTHS``); 4, small images.
TILE_WIDTHS = (4, 7, 8, 12, 13, 14)


#: Output rows this wide run two to a tile (``_kernels.tiled_conv``; ``_simd.tile_conv``'s
#: ``x_jump`` applies from this pixel on): ResNet's 7x7 stage fills 14-pixel tiles, 28
#: accumulators where one row held 14 (its 3x3 layers 5-9% faster inside Wide ResNet-50).
#: The paired tiles run a loop nest of their own (a split given at run time, or a jump added
#: in the one 14-pixel nest, cost the other 3x3 layers 2-5%).
PAIRED_WIDTH = 7


def compiled_width(width):
    """The narrowest compiled tile width that covers ``width`` pixels (``width`` itself past the widest).

    Plain Python that Numba also compiles (``_kernels``): no generator, no annotations.
    """
    for w in TILE_WIDTHS:
        if w >= width:
            return w
    return width


#: Independent accumulators needed to hide the FMA latency; narrower tiles run proportionally slower.
LATENCY_CHAINS = 8
#: A tile's fixed cost (zeroing, the store, its loop's set-up), in pixels of computation.
TILE_OVERHEAD_PIXELS = 1.0


def tile_cost(width, vectors):
    """Time of one tile of ``width`` stored pixels, in pixels computed at the full rate: its compiled
    width, slowed where it holds fewer than LATENCY_CHAINS accumulators."""
    computed = compiled_width(width)
    return computed / min(1.0, computed * vectors / LATENCY_CHAINS)


def pairs_rows(out_width, out_height, max_width):
    """Whether a layer's output rows run two to a tile (see PAIRED_WIDTH; 14 pixels, a compiled width).

    Plain Python that Numba also compiles (``_kernels``), as :func:`compiled_width`."""
    return out_width == PAIRED_WIDTH and out_height > 1 and 2 * PAIRED_WIDTH <= max_width


def row_tiles(width, max_width, vectors=1):
    """The tiles ``(start, width)`` a row of ``width`` output pixels is computed in: the split into
    tiles of at most ``max_width`` pixels that costs least (:func:`tile_cost` plus
    TILE_OVERHEAD_PIXELS each), widest first. A 17-pixel row (Inception-v3) is 13 + 4 pixels,
    all of them stored, where equal halves would compute 13 + 13; an 8-pixel row one tile of 8."""
    best = [0.0] + [float("inf")] * width
    choice = [0] * (width + 1)
    for n in range(1, width + 1):
        for w in range(1, min(n, max_width) + 1):
            cost = best[n - w] + tile_cost(w, vectors) + TILE_OVERHEAD_PIXELS
            if cost < best[n] - 1e-9:
                best[n], choice[n] = cost, w
    widths = []
    n = width
    while n:
        widths.append(choice[n])
        n -= choice[n]
    widths.sort(reverse=True)
    starts = [sum(widths[:i]) for i in range(len(widths))]
    return tuple(zip(starts, widths))
