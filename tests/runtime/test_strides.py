"""runtime.strides: matrices re-laid out to be read down their columns, values unchanged."""

import numpy as np
import pytest

from convengine.runtime.strides import ALIASING_BYTES, LINE_BYTES, aliases, spread_rows


def test_aliasing_strides_are_multiples_of_512_bytes():
    assert [aliases(b) for b in (512, 1024, 12288, 1536, 384, 576, 3088 * 4)] == [True] * 4 + [False] * 3


def test_matrices_keep_their_values_in_one_buffer_with_rows_off_the_aliasing_strides():
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((7, 128)).astype(np.float32),  # 512-byte rows: padded by a line
              "b": rng.standard_normal((5, 96)).astype(np.float32),  # 384-byte rows: kept as they are
              "c": rng.standard_normal((3, 64)),  # float64, 512-byte rows: padded
              "v": rng.standard_normal(16).astype(np.float32),  # not a matrix: left alone
              "i": np.arange(12).reshape(3, 4)}  # not floating: left alone
    before = {k: v.copy() for k, v in arrays.items()}
    untouched = arrays["v"], arrays["i"]
    spread_rows(arrays, ["a", "b", "c", "v", "i", "a"])  # a name twice is re-laid once
    for name, value in before.items():
        np.testing.assert_array_equal(arrays[name], value)
        assert arrays[name].dtype == value.dtype
    assert arrays["v"] is untouched[0] and arrays["i"] is untouched[1]
    assert arrays["a"].strides == (128 * 4 + LINE_BYTES, 4) and arrays["b"].strides == (96 * 4, 4)
    assert arrays["c"].strides == (64 * 8 + LINE_BYTES, 8)
    assert not any(aliases(arrays[n].strides[0]) for n in "abc")
    assert all(arrays[n].ctypes.data % LINE_BYTES == 0 for n in "abc")
    assert arrays["a"].base is arrays["b"].base is arrays["c"].base is not None  # one buffer
    assert all(arrays[n].flags.writeable for n in "abc")  # read in place by Numba kernels: no read-only type


def test_nothing_to_lay_out_allocates_nothing():
    arrays = {"v": np.ones(4, np.float32)}
    spread_rows(arrays, ["v"])
    spread_rows(arrays, [])
    assert arrays["v"].base is None


@pytest.mark.parametrize("columns", [ALIASING_BYTES // 4, 2 * ALIASING_BYTES // 4])
def test_padding_is_zero_and_outside_the_view(columns):
    arrays = {"m": np.ones((3, columns), np.float32)}
    spread_rows(arrays, ["m"])
    m = arrays["m"]
    full = np.lib.stride_tricks.as_strided(m, shape=(3, m.strides[0] // 4), strides=m.strides)
    np.testing.assert_array_equal(full[:, columns:], 0)
