"""runtime.workspace: scratch buffers and aligned arrays start on a 64-byte boundary."""

import numpy as np
import pytest

from convengine.runtime.workspace import ALIGNMENT, aligned_empty, scratch


@pytest.mark.parametrize("shape, dtype", [((7,), np.float32), ((3, 5, 16), np.float32), ((2, 9), np.float64), ((0,), np.float32)])
def test_aligned_arrays_start_on_a_line_and_hold_their_shape(shape, dtype):
    arrays = [aligned_empty(shape, dtype) for _ in range(8)]  # numpy's own would start 16 bytes past a line
    for a in arrays:
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.size == 0 or a.ctypes.data % ALIGNMENT == 0  # an empty array has no memory to align
    arrays[0][...] = 1  # its own memory: writing one leaves the others alone
    if arrays[1].size:
        arrays[1][...] = 2
        assert (arrays[0] == 1).all()


def test_scratch_is_aligned_and_reused():
    a = scratch("test.workspace", (5, 16), np.float32)
    b = scratch("test.workspace", (3, 16), np.float32)
    assert a.ctypes.data % ALIGNMENT == 0 and b.ctypes.data == a.ctypes.data  # the same buffer, reused
