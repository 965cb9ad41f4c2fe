"""Layouts other than NCHW: channel-blocked (NCHW16c) and channels-last (NHWC) inputs and outputs.

The engine offers a problem with other layouts only to backends that take them
(``Backend.supports_layouts``); ``direct`` takes NCHW16c on every path and NHWC on 1x1
stride-1 layers. Results are checked against the float64 reference on the NCHW tensors,
converted with numpy transposes (:mod:`convengine.core.layouts`), over hypothesis-drawn
shapes, strides, paddings, dilations, groups and epilogues; and a blocked output's padding
channels must be 0 whatever the activation makes of 0.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import draw_window
from hypothesis import given, settings
from hypothesis import strategies as st

import convengine as ce
from convengine.core.contract import OutputSlice
from convengine.core.layouts import LAYOUTS, NCHW, NCHW16C, NHWC, array_shape, to_layout, to_nchw
from convengine.testing.reference import activation_reference, conv2d_reference, relative_error

pytestmark = pytest.mark.usefixtures("no_forced_backend")

ENGINE = ce.Engine()


def _reference(x, w, b, stride, padding, dilation, groups, residual, activation):
    y = conv2d_reference(x, w, b, stride=(stride, stride), padding=(padding,) * 4, dilation=(dilation, dilation),
                         groups=groups)
    if residual is not None:
        y = y + residual
    return activation_reference(y, activation)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 16, 2, 2), (1, 40, 3, 1)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_conversions_round_trip_and_pad_with_zeros(shape, layout):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = to_layout(x, layout)
    assert y.shape == array_shape(shape, layout) and y.flags.c_contiguous
    np.testing.assert_array_equal(to_nchw(y, layout, shape[1]), x)
    if layout == NCHW16C:
        n, c, h, w = shape
        assert y.shape == (n, -(-c // 16), h, w, 16)
        np.testing.assert_array_equal(y[:, c // 16, :, :, c % 16:], 0) if c % 16 else None
        np.testing.assert_array_equal(y[0, 0, 1, 0, :min(c, 16)], x[0, :16, 1, 0])  # pixel (1, 0)'s channels, contiguous


@st.composite
def blocked_problems(draw):
    groups = draw(st.sampled_from([1, 1, 1, 2]))
    per_group = 16 if groups > 1 else draw(st.integers(1, 40))
    c_in = per_group * groups
    c_out = draw(st.sampled_from([16, 32])) * groups if groups > 1 else draw(st.integers(1, 48))
    k = draw(st.sampled_from([1, 1, 3, 5]))
    window = draw_window(draw, k)
    return dict(shape=(draw(st.integers(1, 2)), c_in, window["height"], window["width"]), weight=(c_out, c_in // groups, k, k),
                stride=window["stride"], padding=window["padding"], dilation=window["dilation"], groups=groups)


@settings(max_examples=40, deadline=None)
@given(case=blocked_problems(), layouts=st.sampled_from([(NCHW, NCHW16C), (NCHW16C, NCHW), (NCHW16C, NCHW16C)]),
       activation=st.sampled_from([None, "relu", "sigmoid", "hardswish", "gelu"]), residual=st.booleans(),
       seed=st.integers(0, 2**16))
def test_direct_computes_blocked_layouts_as_the_reference(case, layouts, activation, residual, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case["shape"]).astype(np.float32)
    w = (rng.standard_normal(case["weight"]) / np.sqrt(np.prod(case["weight"][1:]))).astype(np.float32)
    b = rng.standard_normal(case["weight"][0]).astype(np.float32)
    params = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
    conv = ENGINE.prepare(w, b, input_shape=x.shape, residual=residual, activation=activation, backend="direct",
                          input_layout=layouts[0], output_layout=layouts[1], **params)
    ref_shape = conv.problem.output_shape
    r = rng.standard_normal(ref_shape).astype(np.float32) if residual else None
    x_in, r_in = to_layout(x, layouts[0]), None if r is None else to_layout(r, layouts[1])
    x_copy = x_in.copy()
    y = conv(x_in, r_in)
    np.testing.assert_array_equal(x_in, x_copy)  # the caller's arrays are left alone
    assert y.shape == array_shape(ref_shape, layouts[1])
    c_out = case["weight"][0]
    if layouts[1] == NCHW16C and c_out % 16:
        np.testing.assert_array_equal(y[:, -1, :, :, c_out % 16:], 0)  # padding channels stay 0 (sigmoid(0) is not)
    ref = _reference(x, w, b, residual=r, activation=activation, **params)
    assert relative_error(to_nchw(y, layouts[1], c_out), ref) < 1e-5


@pytest.mark.parametrize("channels", [(96, 384), (24, 40), (48, 16)])
@pytest.mark.parametrize("activation", [None, "gelu", "silu"])
def test_direct_runs_1x1_layers_on_channels_last_rows(channels, activation):
    """NHWC in and out: the matrix product over each pixel's channel row (ConvNeXt's Linear layers)."""
    c_in, c_out = channels
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, c_in, 5, 7)).astype(np.float32)
    w = (rng.standard_normal((c_out, c_in, 1, 1)) / np.sqrt(c_in)).astype(np.float32)
    b = rng.standard_normal(c_out).astype(np.float32)
    conv = ENGINE.prepare(w, b, input_shape=x.shape, activation=activation, input_layout=NHWC, output_layout=NHWC)
    assert conv.backend == "direct"
    y = conv(to_layout(x, NHWC))
    assert y.shape == (2, 5, 7, c_out)
    assert relative_error(to_nchw(y, NHWC, c_out), _reference(x, w, b, 1, 0, 1, 1, None, activation)) < 1e-5


def test_backends_that_take_nchw_only_are_not_offered_other_layouts():
    w = np.ones((16, 16, 3, 3), np.float32)
    decision = ENGINE.explain((1, 16, 8, 8), w, padding=1)
    assert "naive" in {c.name for c in decision.candidates if c.status != "excluded"}
    with pytest.raises(ce.BackendDeclinedError, match="NCHW only"):
        ENGINE.prepare(w, input_shape=(1, 16, 8, 8), padding=1, backend="naive", input_layout=NCHW16C)
    with pytest.raises(ce.BackendDeclinedError, match="NHWC only for 1x1"):  # a 3x3 layer on channels-last rows
        ENGINE.prepare(w, input_shape=(1, 16, 8, 8), padding=1, backend="direct", input_layout=NHWC, output_layout=NHWC)
    prepared = ENGINE.prepare(w, input_shape=(1, 16, 8, 8), padding=1, input_layout=NCHW16C)
    assert prepared.backend == "direct"  # the policy picks among the backends that take the layout


def test_bad_layouts_and_arrays_are_named():
    w = np.ones((16, 16, 1, 1), np.float32)
    with pytest.raises(ValueError, match="input_layout must be one of 'NCHW', 'NCHW16c', 'NHWC', got 'NCHW8c'"):
        ENGINE.prepare(w, input_shape=(1, 16, 8, 8), input_layout="NCHW8c")
    with pytest.raises(ValueError, match="output_layout must be one of"):
        ENGINE.prepare(w, input_shape=(1, 16, 8, 8), output_layout=None)
    blocked = ENGINE.prepare(w, input_shape=(1, 16, 8, 8), input_layout=NCHW16C, output_layout=NCHW16C, residual=True)
    with pytest.raises(ValueError, match=r"input must have shape \(N, 1, 8, 8, 16\) \(NCHW16c\)"):
        blocked(np.ones((1, 16, 8, 8), np.float32), np.ones((1, 1, 8, 8, 16), np.float32))
    with pytest.raises(ValueError, match=r"residual must have the output's shape \(1, 1, 8, 8, 16\) \(NCHW16c\)"):
        blocked(np.ones((1, 1, 8, 8, 16), np.float32), np.ones((1, 16, 8, 8), np.float32))
    x, residual = np.ones((1, 1, 8, 8, 16), np.float32), np.ones((1, 1, 8, 8, 16), np.float32)
    out = OutputSlice(np.empty((1, 32, 8, 8), np.float32), 0, 16)  # an NCHW slice for a blocked output
    with pytest.raises(ValueError, match="out.layout the problem's output_layout.*'NCHW16c', out.layout is 'NCHW'"):
        blocked(x, residual, out=out)
    with pytest.raises(ValueError, match=r"out.buffer must be an array of shape \(1, C_total / 16, 8, 8, 16\)"):
        blocked(x, residual, out=OutputSlice(np.empty((1, 32, 8, 8), np.float32), 0, 16, layout=NCHW16C))
    with pytest.raises(ValueError, match="whole blocks of 16 channels, step 1: got start 8"):
        blocked(x, residual, out=OutputSlice(np.empty((1, 3, 8, 8, 16), np.float32), 8, 16, layout=NCHW16C))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("residual", [False, True])
def test_a_blocked_output_goes_into_its_blocks_of_a_blocked_buffer(batch, kernel, residual):
    """A concatenation of blocked outputs held blocked: ``direct`` writes blocks 1-2 of a 4-block buffer, and
    nothing else of it (with a residual at batch 3 it declines the slice and the engine copies there)."""
    rng = np.random.default_rng(batch + kernel)
    w = rng.standard_normal((32, 16, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    x = to_layout(rng.standard_normal((batch, 16, 9, 7)).astype(np.float32), NCHW16C)
    args = (x, to_layout(rng.standard_normal((batch, 32, 9, 7)).astype(np.float32), NCHW16C)) if residual else (x,)
    conv = ENGINE.prepare(w, b, input_shape=(batch, 16, 9, 7), padding=kernel // 2, backend="direct", residual=residual,
                          input_layout=NCHW16C, output_layout=NCHW16C, activation="relu")
    buffer = np.full((batch, 4, 9, 7, 16), 7.0, np.float32)
    y = conv(*args, out=OutputSlice(buffer, 16, 32, layout=NCHW16C))
    assert np.shares_memory(y, buffer) and y.shape == (batch, 2, 9, 7, 16)
    np.testing.assert_array_equal(buffer[:, 1:3], conv(*args))
    assert (buffer[:, [0, 3]] == 7.0).all()
