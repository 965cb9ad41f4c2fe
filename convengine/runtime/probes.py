"""The cost of starting a Numba parallel region on this machine: a cost-model input.

Every parallel kernel call wakes the worker threads and waits for them at its end. With
idle workers asleep (``OMP_WAIT_POLICY=PASSIVE``, see ``threads``) that costs a few
microseconds on bare metal and about 40 us on the 2-vCPU virtual machine this was
developed on, where a network of ~100 kernel calls then spends 4 ms just starting them.
Backends that need more parallel launches per convolution are charged for them.
"""

import numba
from numba import prange


@numba.njit(parallel=True, cache=True, nogil=True)
def _touch(a):
    for i in prange(a.shape[0]):
        a[i] += 1.0


def near_empty_kernel_call():
    """A call that starts (and joins) one Numba parallel kernel with the configured threads
    and does almost nothing else: what ``costmodel`` times."""
    import numpy as np

    from .threads import numba_threads

    numba_threads()
    a = np.zeros(2 * numba.get_num_threads())
    return lambda: _touch(a)
