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

#: Rows of weights one thread reads side by side: eight streams per core draw more of the memory
#: bandwidth a 1-row product is bound by than four. In-process A/B inside AlexNet at batch 1
#: (fc6-fc8 cold, as in the model): 7.40 -> 7.15 ms over its three layers (whole model 0.976x);
#: sixteen rows were slower than eight (1.03x). The kernel's body names its eight rows and sums one
#: by one: this is their count, for the callers and tests, not a setting (change both together).
ROWS = 8


@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def matvec_rows(w, x, y):
    """``y[i] = sum_j w[i, j] * x[j]`` for C-contiguous ``w`` (N, K), summed in the arrays' dtype in any order, as BLAS does.

    :data:`ROWS` rows at a time: as many weight streams in flight per core (the layer is
    bound by reading the weights: AlexNet's 4096x9216 layer, 151 MB), and each ``x`` element
    loaded once for all of them.
    """
    n, k = w.shape
    for group in prange((n + ROWS - 1) // ROWS):
        i = group * ROWS
        if i + ROWS <= n:
            r0, r1, r2, r3, r4, r5, r6, r7 = w[i], w[i + 1], w[i + 2], w[i + 3], w[i + 4], w[i + 5], w[i + 6], w[i + 7]
            x0 = x[0]
            t0, t1, t2, t3 = r0[0] * x0, r1[0] * x0, r2[0] * x0, r3[0] * x0  # (the arrays' dtype)
            t4, t5, t6, t7 = r4[0] * x0, r5[0] * x0, r6[0] * x0, r7[0] * x0
            for j in range(1, k):
                xj = x[j]
                t0 += r0[j] * xj
                t1 += r1[j] * xj
                t2 += r2[j] * xj
                t3 += r3[j] * xj
                t4 += r4[j] * xj
                t5 += r5[j] * xj
                t6 += r6[j] * xj
                t7 += r7[j] * xj
            y[i], y[i + 1], y[i + 2], y[i + 3] = t0, t1, t2, t3
            y[i + 4], y[i + 5], y[i + 6], y[i + 7] = t4, t5, t6, t7
        else:
            for r in range(i, n):
                row = w[r]
                total = row[0] * x[0]
                for j in range(1, k):
                    total += row[j] * x[j]
                y[r] = total


def precompile_kernels(dtype: str, weights_writable: bool = True) -> list:
    """The signature :func:`matvec_rows` is called with on ``dtype`` (see :mod:`convengine.runtime.precompile`)."""
    from numba import types

    from ..runtime.precompile import Kernel

    def array(ndim, writable=True):
        return types.Array(getattr(types, dtype), ndim, "C", readonly=not writable)

    return [Kernel(__name__, "matvec_rows", (array(2, weights_writable), array(1), array(1)), cost=0.4)]
