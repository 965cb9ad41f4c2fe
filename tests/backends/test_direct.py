"""The ``direct`` backend's own edges: every tile width, channel padding, the dilated path, the epilogue.

The generic property and ONNX tests run it like every backend, and the conformance kit runs
on it here (:class:`TestDirectConformance`, as tests/core/test_conformance_kit.py runs it on
the other built-ins); the rest aims at what is specific to its register tiles (widths 1-14 and a row split into tiles, channel
counts that are not multiples of 16, the stem's small channel block, narrow tiles as on
AVX2) against the independent float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest

import convengine as ce
from convengine.backends.direct import (
    DirectBackend,
    channel_block,
    reduction_chunk,
    runs_pointwise_tiles,
    tile_efficiency,
    tile_vectors,
)
from convengine.core.epilogue import Epilogue
from convengine.core.problem import ConvProblem
from convengine.testing import BackendConformance
from convengine.testing.reference import conv2d_reference, relative_error

EXACT_F32 = 1e-6


class TestDirectConformance(BackendConformance):
    """The kit every backend must pass, on direct's own sub-space (float32, groups 1; it declines the rest)."""

    backend = DirectBackend()


def _run(backend, x, w, b=None, residual=None, activation=None, **params):
    problem = ConvProblem.from_shapes(x.shape, w.shape, bias=b is not None, dtype="float32", **params)
    assert backend.supports(problem) is None
    epilogue = Epilogue(residual=residual is not None, activation=activation)
    execute = backend.prepare(problem, w, b, epilogue=epilogue)
    y = execute(x, residual) if residual is not None else execute(x)
    assert y.shape == problem.output_shape and y.dtype == np.float32
    return y


def _reference(x, w, b=None, **params):
    """The float64 reference, with the parameters normalised as the engine does."""
    p = ConvProblem.from_shapes(x.shape, w.shape, **params)
    return conv2d_reference(x, w, b, stride=p.stride, padding=p.padding, dilation=p.dilation, groups=p.groups)


def _data(rng, x_shape, w_shape):
    return (rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(w_shape).astype(np.float32),
            rng.standard_normal(w_shape[0]).astype(np.float32))


@pytest.mark.parametrize("out_width", list(range(1, 31)))
def test_every_tile_width_and_split(out_width):
    rng = np.random.default_rng(out_width)
    x, w, b = _data(rng, (1, 5, 3, out_width + 2), (7, 5, 3, 3))
    y = _run(DirectBackend(), x, w, b)
    assert relative_error(y, _reference(x, w, b)) < EXACT_F32


@pytest.mark.parametrize("out_width", [1, 4, 6, 7, 8, 12, 13, 14, 15, 29])
@pytest.mark.parametrize("c_in,c_out,groups,vectors", [
    (20, 32, 1, 2), (16, 96, 1, 2), (16, 48, 1, 1),  # 48: three single-vector blocks, not two of 32 (64 computed)
    (16, 24, 1, 2), (16, 80, 1, 2), (16, 40, 1, 1), (8, 1000, 1, 2),  # one group: wide tiles where little is padded
    (32, 64, 2, 2), (64, 64, 4, 1),  # 32 outputs per group: two vectors; 16: one, a tile never spans two groups
])
def test_two_vector_tiles_at_every_width_and_grouping(out_width, c_in, c_out, groups, vectors):
    """Tiles of two 16-channel vectors (AVX-512) where each group's outputs are a multiple of 32, or, with one group,
    where rounding them up to 32 adds at most a quarter to rounding up to 16; one vector elsewhere."""
    rng = np.random.default_rng(out_width * 1000 + c_out + groups)
    x, w, b = _data(rng, (2, c_in, 4, out_width + 2), (c_out, c_in // groups, 3, 3))
    problem = ConvProblem.from_shapes(x.shape, w.shape, groups=groups)
    assert tile_vectors(problem) == vectors and tile_vectors(problem, max_vectors=1) == 1
    y = _run(DirectBackend(), x, w, b, groups=groups)
    assert relative_error(y, _reference(x, w, b, groups=groups)) < EXACT_F32


@pytest.mark.parametrize("params,out_height", [
    (dict(padding=1), 7), (dict(padding=(1, 1, 1, 1)), 8), (dict(stride=2, padding=1), 5),
    (dict(dilation=2, padding=(2, 2, 2, 2)), 6), (dict(stride=(1, 2), padding=(0, 0, 1, 1)), 1),
])
@pytest.mark.parametrize("batch,c_out,residual", [(1, 64, True), (2, 40, False), (3, 32, True)])
def test_seven_pixel_rows_two_to_a_tile(params, out_height, batch, c_out, residual):
    """7-pixel output rows run two to a 14-pixel tile (the second reading the next input rows),
    an odd last row on its own, every image and output block, residual and ReLU at each pixel."""
    rng = np.random.default_rng(out_height * 100 + batch + c_out)
    sh, sw = (params.get("stride", 1),) * 2 if not isinstance(params.get("stride"), tuple) else params["stride"]
    dilation = params.get("dilation", 1)
    padding = params["padding"] if isinstance(params["padding"], tuple) else (params["padding"],) * 4
    height = (out_height - 1) * sh + 2 * dilation + 1 - padding[0] - padding[1]
    width = (7 - 1) * sw + 2 * dilation + 1 - padding[2] - padding[3]
    x, w, b = _data(rng, (batch, 32, height, width), (c_out, 32, 3, 3))
    problem = ConvProblem.from_shapes(x.shape, w.shape, **params)
    assert problem.output_shape[2:] == (out_height, 7)
    r = rng.standard_normal(problem.output_shape).astype(np.float32) if residual else None
    expected = np.maximum(_reference(x, w, b, **params) + (r if residual else 0), 0)
    for backend in (DirectBackend(), DirectBackend(tile_width=7)):  # 7-pixel tiles: one row each
        y = _run(backend, x, w, b, residual=r, activation="relu", **params)
        assert relative_error(y, expected) < EXACT_F32


@pytest.mark.parametrize("stride", [1, 2, 3, 4])
@pytest.mark.parametrize("c_in", [3, 32])
@pytest.mark.parametrize("out_width", [7, 8, 12, 13, 14, 17, 28])
def test_pixel_steps_compiled_in_or_not(stride, c_in, out_width):
    """The 14-, 13- and 8-pixel tiles at strides 1 and 2 on 16-channel blocks, and at strides 2
    and 4 on the stem's 3-channel block (ResNet's, AlexNet's), run nests with the pixel step compiled in
    (``_simd.FIXED_STEPS``, ``FIXED_WIDTHS``); strides 3 and 4 on blocks, the stem at stride 1 or 3,
    and the other widths (12: the package's AlexNet) run the nests that take it at run time: all agree with the reference."""
    from convengine.backends.direct._simd import FIXED_STEPS, FIXED_WIDTHS

    assert {16, 32, 6, 12} <= set(FIXED_STEPS) and not {48, 64, 3, 9} & set(FIXED_STEPS)
    assert set(FIXED_WIDTHS) == {14, 13, 8}
    rng = np.random.default_rng(stride * 100 + c_in + out_width)
    size = (out_width - 1) * stride + 1
    x, w, b = _data(rng, (2, c_in, size, size), (48, c_in, 3, 3))
    y = _run(DirectBackend(), x, w, b, stride=stride, padding=1, activation="relu")
    assert relative_error(y, np.maximum(_reference(x, w, b, stride=stride, padding=1), 0)) < EXACT_F32


@pytest.mark.parametrize("order", ["rows", "blocks", "bands"])
@pytest.mark.parametrize("out_size,stride", [(7, 1), (9, 2), (16, 1)])
@pytest.mark.parametrize("c_in,groups", [(32, 1), (16, 1), (64, 2)])
def test_jobs_row_by_row_block_by_block_or_in_bands(monkeypatch, order, out_size, stride, c_in, groups):
    """Jobs ordered row by row (weights that stay cached), output block by block (input and
    weights cached together) or in bands of rows (the rest; here of 3 rows, 2 with paired rows,
    and the last band shorter): every image, row and block computed once, whichever order. In
    bands of more than one row, two or more input blocks (per group) are summed in chunks of one
    (``_kernels.CHUNK_BLOCKS``) over jobs of several rows (``CHUNK_TILES`` tiles: 16 pixels a row
    is two tiles, the last job of a band shorter); one block is summed whole."""
    import convengine.backends.direct as direct
    from convengine.backends.direct._kernels import CHUNK_BLOCKS, CHUNK_TILES

    assert CHUNK_BLOCKS == 1 and 2 * 3 < CHUNK_TILES < 2 * 16  # what the shapes here are chosen for
    l2 = direct.l2_cache_bytes()
    monkeypatch.setattr(direct, "ROWS_FIRST_L2_SHARE", 1 if order == "rows" else 1 << 40)
    blocks = c_in // 16
    band_row_bytes = stride * blocks * ((out_size - 1) * stride + 3) * 16 * 4  # input rows per output row, padded
    monkeypatch.setattr(direct, "BAND_L2_SHARE", 1 if order == "blocks" else l2 // (band_row_bytes * 7 // 2))
    size = (out_size - 1) * stride + 1
    problem = ConvProblem.from_shapes((3, c_in, size, size), (80 * groups, c_in // groups, 3, 3), stride=stride,
                                      padding=1, groups=groups)
    rng = np.random.default_rng(out_size * 10 + stride + len(order) + c_in)
    x, w, b = _data(rng, (3, c_in, size, size), (80 * groups, c_in // groups, 3, 3))  # per group 3 output blocks: 32, 32, 16
    assert direct.band_rows(problem, w.nbytes, 16, l2) == {"rows": 1, "blocks": out_size, "bands": 3}[order]
    r = rng.standard_normal((3, 80 * groups, out_size, out_size)).astype(np.float32)
    y = _run(DirectBackend(), x, w, b, residual=r, activation="relu", stride=stride, padding=1, groups=groups)
    expected = np.maximum(_reference(x, w, b, stride=stride, padding=1, groups=groups) + r, 0)
    assert relative_error(y, expected) < EXACT_F32


def test_rows_pair_only_where_the_tiles_hold_two():
    from convengine.backends.direct._tiles import pairs_rows

    assert pairs_rows(7, 7, 14) and pairs_rows(7, 2, 14)
    assert not pairs_rows(7, 1, 14) and not pairs_rows(7, 7, 13) and not pairs_rows(6, 7, 14) and not pairs_rows(8, 8, 14)
    # the cost model counts 14-pixel tiles (an odd last row on its own): more accumulators, a higher rate
    assert tile_efficiency(7, 14, 1, 7) > tile_efficiency(7, 14, 1, 1) == tile_efficiency(7, 7, 1, 7)
    assert tile_efficiency(7, 14, 1, 2) == tile_efficiency(14, 14, 1)


@pytest.mark.parametrize("tile_width", [1, 6, 14])
@pytest.mark.parametrize("c_in,c_out", [(1, 1), (3, 64), (16, 16), (17, 15), (33, 40)])
def test_channel_padding_and_narrow_tiles(tile_width, c_in, c_out):
    rng = np.random.default_rng(c_in * 100 + c_out)
    x, w, b = _data(rng, (2, c_in, 9, 11), (c_out, c_in, 3, 3))
    y = _run(DirectBackend(tile_width=tile_width), x, w, b, padding=1)
    assert relative_error(y, _reference(x, w, b, padding=1)) < EXACT_F32


@pytest.mark.parametrize("params", [
    dict(stride=2, padding=3),
    dict(stride=(3, 2), padding=(1, 0, 2, 1)),
    dict(dilation=(2, 3), padding=2),  # per-kw runs: the (kw, channel) pairs are not contiguous
    dict(stride=2, dilation=2, padding="valid"),
])
def test_stride_dilation_padding(params):
    rng = np.random.default_rng(1)
    x, w, b = _data(rng, (1, 20, 15, 17), (18, 20, 5, 3))
    y = _run(DirectBackend(), x, w, b, **params)
    assert relative_error(y, _reference(x, w, b, **params)) < EXACT_F32


@pytest.mark.parametrize("c_in", [16, 20, 33])
@pytest.mark.parametrize("width", [5, 16, 17, 35])
def test_the_blocked_copy_of_partial_channel_blocks_and_pixel_runs(c_in, width):
    """The input copy moves 16 pixels x 16 channels per register transpose: rows that are not
    a multiple of 16 pixels, channel blocks that are partly filled, and asymmetric zero borders."""
    rng = np.random.default_rng(c_in * 100 + width)
    x, w, b = _data(rng, (2, c_in, 6, width), (5, c_in, 3, 3))
    padding = (2, 0, 1, 3)
    y = _run(DirectBackend(), x, w, b, padding=padding)
    assert relative_error(y, _reference(x, w, b, padding=padding)) < EXACT_F32


def test_a_non_contiguous_input_is_read_correctly():
    rng = np.random.default_rng(7)
    x, w, b = _data(rng, (1, 18, 9, 20), (4, 16, 3, 3))
    view = x[:, 1:17, :, ::2]  # channel- and column-strided
    y = _run(DirectBackend(), view, w, b, padding=1)
    assert relative_error(y, _reference(np.ascontiguousarray(view), w, b, padding=1)) < EXACT_F32


def test_long_reductions_stay_within_the_exact_bound():
    """512 channels x 3x3 is 4608 products per output: partial tiles keep float32 rounding small."""
    rng = np.random.default_rng(2)
    x, w, _ = _data(rng, (1, 512, 7, 7), (32, 512, 3, 3))
    y = _run(DirectBackend(), x, w, padding=1)
    assert relative_error(y, _reference(x, w, padding=1)) < EXACT_F32


def test_fused_residual_and_relu_keep_nan_and_leave_inputs_alone():
    rng = np.random.default_rng(3)
    x, w, b = _data(rng, (2, 16, 6, 6), (20, 16, 3, 3))
    residual = rng.standard_normal((2, 20, 6, 6)).astype(np.float32)
    x[0, 3, 2, 2] = np.nan
    before = (x.copy(), w.copy(), b.copy(), residual.copy())
    y = _run(DirectBackend(), x, w, b, residual=residual, activation="relu", padding=1)
    expected = np.maximum(_reference(x, w, b, padding=1) + residual, 0)
    assert np.array_equal(np.isnan(y), np.isnan(expected)) and np.isnan(y).any()
    finite = ~np.isnan(expected)
    assert np.abs(y[finite] - expected[finite]).max() / np.abs(expected[finite]).max() < EXACT_F32
    for a, a0 in zip((x, w, b, residual), before):
        assert np.array_equal(a, a0, equal_nan=True)


def test_engine_dispatch_by_name():
    rng = np.random.default_rng(4)
    x, w, b = _data(rng, (1, 8, 10, 10), (16, 8, 3, 3))
    y = ce.conv2d(x, w, b, padding=1, backend="direct")
    assert relative_error(y, _reference(x, w, b, padding=1)) < EXACT_F32


@pytest.mark.parametrize("n,c_in,plane,c_out,tiles", [
    (1, 1, (1, 1), 1, False),
    (2, 5, (3, 7), 13, False),  # pixel tail (21 of 64) and channel tail (13 = 2x6 + 1); 5 channels: 1 chunk of 5
    (1, 64, (3, 3), 6, False),  # a plane narrower than the widest tile
    (1, 64, (8, 8), 6, True),  # register tiles: 4 x 14 pixels and a tail of 8 (a compiled width); 6 of 16 lanes
    (1, 70, (9, 15), 12, True),  # 135 pixels; 70 channels in one chunk
    (1, 600, (7, 7), 7, True),  # 600 products: three chunks of 200
    (1, 600, (7, 7), 40, True),  # 16 + 16 + 8 output channels
    (2, 48, (5, 9), 64, True),  # two-vector tiles (AVX-512): 2 blocks of 32 channels, 45 pixels
    (1, 600, (7, 7), 96, True),  # three 32-channel blocks, three chunks of 200
    (1, 96, (56, 56), 24, False),  # a large plane, a long reduction, output channels not a multiple of 16: pixels
    (1, 96, (56, 56), 32, True),
    (1, 48, (56, 56), 24, True),
])
def test_pointwise_blocks_tails_and_chunks(n, c_in, plane, c_out, tiles):
    problem = ConvProblem.from_shapes((n, c_in, *plane), (c_out, c_in, 1, 1))
    assert runs_pointwise_tiles(problem, 14) is tiles  # both 1x1 kernels stay covered
    rng = np.random.default_rng(c_in)
    x, w, b = _data(rng, (n, c_in, *plane), (c_out, c_in, 1, 1))
    residual = rng.standard_normal((n, c_out, *plane)).astype(np.float32)
    y = _run(DirectBackend(), x, w, b)
    assert relative_error(y, _reference(x, w, b)) < EXACT_F32
    fused = _run(DirectBackend(), x, w, b, residual=residual, activation="relu")
    assert relative_error(fused, np.maximum(_reference(x, w, b) + residual, 0)) < EXACT_F32


@pytest.mark.parametrize("kh,pad,dil,size", [(7, 3, 1, 17), (3, 1, 1, 8), (3, 2, 2, 9), (5, 0, 1, 11)])
@pytest.mark.parametrize("output_layout", ["NCHW16c", "NCHW"])
def test_one_column_kernels_sweep_the_plane_as_one_row(kh, pad, dil, size, output_layout):
    """Kernels one column wide at stride 1 without column padding run the flattened plane in
    14-pixel tiles across rows (``flat_plane``, ``plane_tiles``), in jobs of several tiles: 2
    images, 48 output channels (two blocks, so that each block's tiles split into jobs), bias,
    residual given up and ReLU, against float64; the rows' tiling is not taken."""
    from convengine.backends import direct
    from convengine.core.layouts import to_layout

    problem = ConvProblem.from_shapes((2, 32, size, size), (48, 32, kh, 1), bias=True, padding=(pad, 0),
                                      dilation=(dil, 1), input_layout="NCHW16c", output_layout=output_layout)
    assert direct.flat_plane(problem)
    assert not direct.flat_plane(ConvProblem.from_shapes((1, 32, size, size), (48, 32, kh, 1), padding=(pad, 1)))
    assert not direct.flat_plane(ConvProblem.from_shapes((1, 32, size, size), (48, 32, kh, 1), stride=2, padding=(pad, 0)))
    out_h = problem.out_height
    tiles = direct.plane_tiles(out_h * size, 14)
    assert sum(width for _, width in tiles) == out_h * size and all(width == 14 for _, width in tiles[:-1])
    rng = np.random.default_rng(kh * 10 + size)
    x, w, b = _data(rng, (2, 32, size, size), (48, 32, kh, 1))
    residual = rng.standard_normal((2, 48, out_h, size)).astype(np.float32)
    execute = DirectBackend().prepare(problem, w, b, epilogue=Epilogue(residual=True, activation="relu"))
    given = to_layout(residual, output_layout)
    y = execute(to_layout(x, "NCHW16c"), given, in_place=True)
    expected = np.maximum(_reference(x, w, b, padding=(pad, 0), dilation=(dil, 1)) + residual, 0).astype(np.float32)
    assert y is given and relative_error(y, to_layout(expected, output_layout)) < EXACT_F32


@pytest.mark.parametrize("c_in", [16, 130, 320])  # one chunk; 8 + 1 blocks (the last partly padding); 8 + 8 + 4
@pytest.mark.parametrize("output_layout", ["NCHW16c", "NCHW"])
def test_blocked_pointwise_sums_channel_chunks_over_tile_batches(c_in, output_layout):
    """A blocked input's 1x1 layer sums ``POINT_CHUNK_BLOCKS`` channel blocks at a time over
    batches of ``POINT_BATCH_TILES`` tiles (partial sums put aside in between): a 23x23 plane is
    37 tiles of 14 and a tail of 11 (batches of 16, 16, 6); bias, residual given up and ReLU
    applied once, at the last chunk."""
    from convengine.backends.direct._kernels import POINT_BATCH_TILES, POINT_CHUNK_BLOCKS
    from convengine.core.layouts import to_layout

    assert (POINT_CHUNK_BLOCKS, POINT_BATCH_TILES) == (8, 16)
    rng = np.random.default_rng(c_in)
    x, w, b = _data(rng, (2, c_in, 23, 23), (40, c_in, 1, 1))
    residual = rng.standard_normal((2, 40, 23, 23)).astype(np.float32)
    problem = ConvProblem.from_shapes(x.shape, w.shape, bias=True, input_layout="NCHW16c", output_layout=output_layout)
    execute = DirectBackend().prepare(problem, w, b, epilogue=Epilogue(residual=True, activation="relu"))
    given = to_layout(residual, output_layout)
    y = execute(to_layout(x, "NCHW16c"), given, in_place=True)
    expected = to_layout(np.maximum(_reference(x, w, b) + residual, 0).astype(np.float32), output_layout)
    assert y is given and relative_error(y, expected) < EXACT_F32


@pytest.mark.parametrize("stride", [2, (2, 3), 4])
def test_strided_pointwise_reads_a_subsampled_copy(stride):
    rng = np.random.default_rng(6)
    x, w, b = _data(rng, (2, 20, 9, 13), (10, 20, 1, 1))
    before = x.copy()
    y = _run(DirectBackend(), x, w, b, stride=stride)
    assert relative_error(y, _reference(x, w, b, stride=stride)) < EXACT_F32
    assert np.array_equal(x, before)


@pytest.mark.parametrize("c_out", [20, 32])  # one vector per tile; two (AVX-512)
@pytest.mark.parametrize("plane", list(range(14, 61)))
def test_pointwise_tiles_split_every_plane_and_write_over_a_consumed_residual(plane, c_out):
    """The flattened plane's balanced tiles, the last one starting early when narrower than
    every compiled width, with the residual given up (the output written over it) and not."""
    rng = np.random.default_rng(plane)
    x, w, b = _data(rng, (2, 32, 1, plane), (c_out, 32, 1, 1))
    residual = rng.standard_normal((2, c_out, 1, plane)).astype(np.float32)
    problem = ConvProblem.from_shapes(x.shape, w.shape, bias=True)
    assert runs_pointwise_tiles(problem, 14)
    expected = np.maximum(_reference(x, w, b) + residual, 0)
    execute = DirectBackend().prepare(problem, w, b, epilogue=Epilogue(residual=True, activation="relu"))
    kept = residual.copy()
    assert relative_error(execute(x, kept), expected) < EXACT_F32 and np.array_equal(kept, residual)
    out = execute(x, kept, in_place=True)
    assert out is kept and relative_error(out, expected) < EXACT_F32


def test_pointwise_tiles_keep_nan_and_narrow_tiles_agree():
    rng = np.random.default_rng(8)
    x, w, b = _data(rng, (1, 48, 7, 7), (33, 48, 1, 1))
    x[0, 5, 3, 3] = np.nan
    expected = _reference(x, w, b)
    for tile_width in (14, 7, 4, 1):  # narrow tiles, as on AVX2 machines
        y = _run(DirectBackend(tile_width=tile_width), x, w, b)
        assert np.array_equal(np.isnan(y), np.isnan(expected)) and np.isnan(y).sum() == 33
        finite = ~np.isnan(expected)
        assert np.abs(y[finite] - expected[finite]).max() / np.abs(expected[finite]).max() < EXACT_F32


def test_reduction_chunks_divide_the_channels():
    assert [reduction_chunk(c) for c in (1, 5, 64, 256, 600, 2048, 257)] == [1, 5, 64, 256, 200, 256, 1]


def test_large_pointwise_inputs_are_swept_in_pixel_groups():
    """An input too large to stay cached is split into groups of pixels (each group's panel
    read by every output-channel block); the groups' edges and tails are exact."""
    from convengine.backends import direct

    problem = ConvProblem.from_shapes((1, 1024, 56, 56), (64, 1024, 1, 1))
    assert direct.pixel_group(problem, 14) == 126  # 512 KiB of 1024-channel pixels, in whole tiles
    cached = ConvProblem.from_shapes((1, 256, 56, 56), (64, 256, 1, 1))
    assert direct.pixel_group(cached, 14) == 1568  # 4 blocks of 16 channels x 2 groups: 8 jobs
    assert direct.pixel_group(cached, 14, vectors=2) == 784  # 2 blocks of 32 x 4 groups
    assert direct.pixel_group(ConvProblem.from_shapes((8, 256, 56, 56), (64, 256, 1, 1)), 14, 2) == 3136
    # fewer images than threads: the pixels shared out where the input outweighs the weights
    wide = ConvProblem.from_shapes((1, 64, 56, 56), (256, 64, 1, 1))
    assert direct.pixel_group(wide, 14, 2, threads=1) == 3136  # 8 blocks of 32: 8 jobs, each the whole plane
    assert direct.pixel_group(wide, 14, 2, threads=2) == 1568  # a half-plane each, all 256 channels
    assert direct.pixel_group(wide, 14, 2, threads=3) == 1050  # (thirds, in whole tiles)
    deep = ConvProblem.from_shapes((1, 256, 14, 14), (1024, 256, 1, 1))  # 196 pixels, 1 MiB of weights
    assert direct.pixel_group(deep, 14, 2, threads=2) == 196
    reducing = ConvProblem.from_shapes((1, 1024, 14, 14), (256, 1024, 1, 1))  # input 0.8 MiB, weights 1 MiB
    assert direct.pixel_group(reducing, 14, 2, threads=2) == 98
    assert direct.pixel_group(ConvProblem.from_shapes((2, 64, 56, 56), (256, 64, 1, 1)), 14, 2, threads=2) == 3136
    # 25 pixels: a 14-pixel tile and 11 computed as the next compiled width, 12; 62 at 7: 8 tiles of 7 and 6 as 7
    assert direct.computed_pixels(49, 14) == 49 and direct.computed_pixels(25, 14) == 26 and direct.computed_pixels(62, 7) == 63
    rng = np.random.default_rng(9)
    x, w, b = _data(rng, (2, 40, 9, 23), (24, 40, 1, 1))
    residual = rng.standard_normal((2, 24, 9, 23)).astype(np.float32)
    expected = np.maximum(_reference(x, w, b) + residual, 0)
    original = direct.GROUP_PANEL_BYTES, direct.WHOLE_PLANE_BYTES
    try:
        direct.WHOLE_PLANE_BYTES, direct.GROUP_PANEL_BYTES = 0, 40 * 4 * 30  # groups of 28 pixels: 7 and a 11-pixel tail
        problem = ConvProblem.from_shapes(x.shape, w.shape, bias=True)
        assert direct.pixel_group(problem, 14) == 28
        execute = DirectBackend().prepare(problem, w, b, epilogue=Epilogue(residual=True, activation="relu"))
    finally:
        direct.GROUP_PANEL_BYTES, direct.WHOLE_PLANE_BYTES = original
    assert relative_error(execute(x, residual), expected) < EXACT_F32
    out = execute(x, residual, in_place=True)  # written over the residual, two images, group by group
    assert out is residual and relative_error(out, expected) < EXACT_F32


def test_pointwise_long_reduction_stays_within_the_exact_bound():
    rng = np.random.default_rng(5)
    x, w, _ = _data(rng, (1, 2048, 7, 7), (20, 2048, 1, 1))
    assert relative_error(_run(DirectBackend(), x, w), _reference(x, w)) < EXACT_F32



@pytest.mark.parametrize("out_channels, given, in_place", [
    (128, "spread", True),  # the transpose of a (C, O) matrix laid out by runtime.strides: read in place
    (24, "spread", False),  # O not whole 16-channel blocks: packed (with zero padding)
    (128, "view", False),  # rows 512 bytes apart crowd the cache sets: packed
    (120, "view", False),  # rows 480 bytes apart, but 120 channels are not whole blocks of 16: packed
    (160, "view", True),  # rows 640 bytes apart (not a multiple of 512), whole blocks: read in place
    (128, "contiguous", False),  # an (O, C, 1, 1) array as any other layer's: packed
])
def test_nhwc_pointwise_reads_a_channels_last_matrix_in_place(out_channels, given, in_place):
    """ConvNeXt's Linear layers (``weight_views``): the (C, O) matrix is held once, by its caller."""
    import tracemalloc

    from convengine.core.layouts import NHWC
    from convengine.runtime.strides import spread_rows

    rng = np.random.default_rng(11)
    n, c, h, w = 2, 256, 3, 7  # 21 pixels: a 14-pixel tile and a tail
    matrices = {"w": rng.standard_normal((c, out_channels)).astype(np.float32)}
    matrix = matrices["w"].copy()
    if given == "spread":
        spread_rows(matrices, ["w"])
    weight = np.ascontiguousarray(matrix.T)[:, :, None, None] if given == "contiguous" else matrices["w"].T[:, :, None, None]
    bias = rng.standard_normal(out_channels).astype(np.float32)
    problem = ConvProblem.from_shapes((n, c, h, w), weight.shape, bias=True, input_layout=NHWC, output_layout=NHWC)
    backend = DirectBackend()
    assert backend.supports_layouts(problem) is None
    backend.prepare(problem, weight.copy(), bias, epilogue=Epilogue(activation="gelu"))  # its modules imported, then freed
    tracemalloc.start()
    try:
        execute = backend.prepare(problem, weight, bias, epilogue=Epilogue(activation="gelu"))
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert (held < matrix.nbytes // 8) if in_place else (held >= matrix.nbytes)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)  # NHWC
    expected = _reference(x.transpose(0, 3, 1, 2), matrix.T[:, :, None, None].copy(), bias).transpose(0, 2, 3, 1)
    from scipy.special import erf

    expected = 0.5 * expected * (1 + erf(expected / np.sqrt(2)))
    assert relative_error(execute(x), expected) < EXACT_F32
    np.testing.assert_array_equal(weight[:, :, 0, 0].T, matrix)  # read, never written


@pytest.mark.parametrize("kwargs,reason", [
    (dict(dtype="float64"), "float32 only"),
    (dict(groups=2), "groups"),
])
def test_declines_what_it_cannot_run(kwargs, reason):
    groups = kwargs.get("groups", 1)
    problem = ConvProblem.from_shapes((1, 8, 5, 5), (8, 8 // groups, 3, 3), **kwargs)
    assert reason in DirectBackend().supports(problem)


@pytest.mark.parametrize("bad", [0, 15, -1, 2.0, True, "14"])
def test_a_tile_width_outside_the_compiled_range_is_refused(bad):
    with pytest.raises(ValueError, match="tile_width must be an int from 1 to 14"):
        DirectBackend(tile_width=bad)


def test_the_backend_s_copies_of_the_kernel_constants_match_the_kernels():
    from convengine.backends import direct
    from convengine.backends.direct import _simd, _tiles

    # the 1x1 pixel kernel's block is copied (the backend's module imports no Numba); the tile's shape is shared
    assert (direct.POINT_CHANNELS, direct.POINT_PIXELS) == (_simd.POINT_CHANNELS, _simd.POINT_PIXELS)
    assert (direct.LANES, direct.MAX_TILE_WIDTH) == (_simd.LANES, _simd.MAX_WIDTH) == (16, 14)
    assert _tiles.MAX_WIDTH in _tiles.TILE_WIDTHS and _simd.preferred_width() in _tiles.TILE_WIDTHS


@pytest.mark.parametrize("width, compiled", [(1, 4), (4, 4), (5, 7), (7, 7), (8, 8), (9, 12), (12, 12), (13, 13), (14, 14)])
def test_a_run_of_pixels_is_computed_as_the_next_compiled_tile_width(width, compiled):
    """One compiled_width, read by the cost model as Python and inlined into the kernels by Numba."""
    from convengine.backends.direct import _kernels, _tiles, computed_pixels

    assert _tiles.compiled_width(width) == _kernels._compiled_width(width) == compiled
    assert computed_pixels(width, 14) == compiled
    assert computed_pixels(30, 14) == 14 + 14 + 4  # two full tiles and a 2-pixel tail run 4 wide


def test_estimate_counts_channel_padding_and_narrow_tiles():
    from convengine.core.costmodel import MachineProfile

    machine = MachineProfile(gemm_flops_float32=1e11, gemm_flops_float64=5e10, bandwidth=1e10)
    backend = DirectBackend(tile_width=14)
    full = ConvProblem.from_shapes((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    padded = ConvProblem.from_shapes((1, 65, 56, 56), (64, 65, 3, 3), padding=1)  # 65 channels cost like 80
    assert backend.estimate_seconds(padded, machine) > 1.15 * backend.estimate_seconds(full, machine)
    assert channel_block(3) == 3 and channel_block(64) == 16
    assert tile_efficiency(56, 14) == 1.0 and tile_efficiency(2, 14) == 0.25
    assert tile_efficiency(7, 14) == 0.875 and tile_efficiency(7, 14, vectors=2) == 1.0


@pytest.mark.parametrize("width", list(range(1, 160)))
@pytest.mark.parametrize("max_width, vectors", [(14, 1), (14, 2), (7, 1)])
def test_row_tiles_cover_each_pixel_once(width, max_width, vectors):
    from convengine.backends.direct._tiles import row_tiles

    tiles = row_tiles(width, max_width, vectors)
    assert [start for start, _ in tiles] == [sum(w for _, w in tiles[:i]) for i in range(len(tiles))]
    assert sum(w for _, w in tiles) == width and all(1 <= w <= max_width for _, w in tiles)


def test_row_tiles_compute_fewer_pixels_than_equal_halves():
    """Inception-v3's 17- and 8-pixel rows: 13 + 4 and one 8-pixel tile (all stored), not 13 + 13 and 13."""
    from convengine.backends.direct._tiles import compiled_width, row_tiles

    assert [w for _, w in row_tiles(17, 14, 2)] == [13, 4]
    assert [w for _, w in row_tiles(8, 14, 2)] == [8]
    assert [w for _, w in row_tiles(56, 14, 2)] == [14] * 4
    assert sum(compiled_width(w) for _, w in row_tiles(35, 14, 2)) == 35
