"""The ``grouped`` backend's register tile in plain Python: read by its cost model and by its kernels.

Apart from :mod:`._grouped_kernels` (which imports llvmlite and Numba) so that the backend's
module, imported by every ``import convengine`` that registers it, needs no Numba, and so
that each number exists once (as ``direct``'s :mod:`.direct._tiles`).
"""

#: Output channels per register tile of the grouped path, and the most pixel vectors each tile
#: width holds: ``MB * nv`` accumulators plus ``nv`` input vectors and a weight fit 32 vector
#: registers.
CHANNEL_BLOCKS = (1, 2, 4, 8)
MAX_VECTORS = {1: 8, 2: 6, 4: 4, 8: 3}
#: Input channels of one reduction summed in registers before the running total (kept in the
#: tile's buffer) is updated: float32 rounding of long reductions as in blocked products.
MAX_CHUNK_PRODUCTS = 256
