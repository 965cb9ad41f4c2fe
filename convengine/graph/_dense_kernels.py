"""Numba kernel for a fully connected layer on one input row; imported when a Gemm node first needs it.

Why not BLAS: a 1-row product is a matrix-vector product, bound by reading the weights, and
Numba's threads do that as fast as OpenBLAS's (ResNet-50's 2048->1000 layer: 0.12 against
0.11 ms; AlexNet's 9216->4096: 4.8 against 5.0 ms). But OpenBLAS's threads, unless
``OPENBLAS_THREAD_TIMEOUT`` reached it (convengine imported before numpy), spin for ~0.1 s
after every call on the cores the next inference needs: with numpy imported first,
ResNet-50 took 80 ms a run instead of 44, all because of its last layer.
"""

import numba
from numba import prange


@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def matvec_rows(w, x, y):
    """``y[i] = sum_j w[i, j] * x[j]`` for C-contiguous ``w`` (N, K), summed in the arrays' dtype in any order, as BLAS does."""
    n, k = w.shape
    for i in prange(n):
        row = w[i]
        total = row[0] * x[0]  # the accumulator takes the arrays' dtype
        for j in range(1, k):
            total += row[j] * x[j]
        y[i] = total


def precompile_kernels(dtype: str) -> list:
    """The signature :func:`matvec_rows` is called with on ``dtype`` (see :mod:`convengine.precompile`)."""
    from numba import types

    from ..precompile import Kernel

    def array(ndim):
        return types.Array(getattr(types, dtype), ndim, "C")

    return [Kernel(__name__, "matvec_rows", (array(2), array(1), array(1)), cost=0.4)]
