"""The register tile's shape in plain Python: read by the backend's cost model and by the kernels.

Kept apart from :mod:`._simd` (which imports llvmlite and Numba) so that the backend's module,
imported by every ``import convengine`` that registers it, needs no Numba, and so that each
number and :func:`compiled_width` exist once: ``_kernels`` compiles this very function with
Numba, the cost model calls it as it is.
"""

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
#: (5-7% faster than as 14-wide tiles, for 0.5 s more compile time); 4, small images.
TILE_WIDTHS = (4, 7, 13, 14)


def compiled_width(width):
    """The narrowest compiled tile width that covers ``width`` pixels (``width`` itself past the widest).

    Plain Python that Numba also compiles (``_kernels``): no generator, no annotations.
    """
    for w in TILE_WIDTHS:
        if w >= width:
            return w
    return width
