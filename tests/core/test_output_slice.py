"""PreparedConv(x, out=OutputSlice): the output lands in channels of a larger buffer, whoever writes it.

The engine passes ``out`` to backends whose ``supports_output_slice`` accepts, and copies the
output there itself otherwise; a backend that claims it and returns another array is excluded
like any misbehaving one. Reference: the float64 direct formula.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_plugin

from convengine import Backend, BackendFailedError, Engine, PluginWarning
from convengine.core.contract import OutputSlice
from convengine.core.registry import Registry
from convengine.testing.reference import conv2d_reference

pytestmark = pytest.mark.usefixtures("isolated_env")


class Slicing(Backend):
    """Writes into slices (of any step) with the reference; ``liar`` returns a new array instead."""

    def __init__(self, name, liar=False):
        self.name, self.liar, self.calls = name, liar, []

    def supports_output_slice(self, problem, epilogue, step):
        return None

    def prepare(self, problem, weight, bias):
        def execute(x, out=None):
            self.calls.append(out)
            y = conv2d_reference(x, weight, bias, problem.stride, problem.padding, problem.dilation,
                                 problem.groups).astype(problem.dtype)
            if out is None or self.liar:
                return y
            out.view[...] = y
            return out.view

        return execute


def _engine(*backends, policy):
    registry = Registry.load(extra_plugins=[make_plugin("slices", *backends)], load_entry_points=False)
    return Engine(policy=policy, registry=registry, tuning_cache=False)


def _case(batch=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 4, 7, 7)).astype(np.float32)
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    ref = conv2d_reference(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    return x, w, b, ref


@pytest.mark.parametrize("step", [1, 2])
@pytest.mark.parametrize("policy", ["slicing", "naive"])
def test_the_output_lands_in_the_slice_and_nothing_else_changes(policy, step):
    """``slicing`` writes the slice itself; ``naive`` declines, and the engine copies its output there."""
    backend = Slicing("slicing")
    x, w, b, ref = _case()
    conv = _engine(backend, policy=policy).prepare(w, b, input_shape=x.shape, padding=1)
    buffer = np.full((3, 2 + 6 * step, 7, 7), 5.0, np.float32)
    out = OutputSlice(buffer, 1, 6, step)
    y = conv(x, out=out)
    assert np.shares_memory(y, buffer) and y.shape == (3, 6, 7, 7)
    np.testing.assert_allclose(buffer[:, 1:1 + 6 * step:step], ref, rtol=1e-5, atol=1e-5)
    outside = np.ones(buffer.shape[1], bool)
    outside[1:1 + 6 * step:step] = False
    assert (buffer[:, outside] == 5.0).all()
    assert [c is out for c in backend.calls] == ([True] if policy == "slicing" else [])


def test_a_buffer_the_input_lives_in_is_never_handed_to_the_backend():
    backend = Slicing("slicing")
    x, w, b, ref = _case(batch=1)  # (at batch 3 the engine reads a contiguous copy of the input: no overlap)
    buffer = np.zeros((1, 10, 7, 7), np.float32)
    buffer[:, :4] = x
    conv = _engine(backend, policy="slicing").prepare(w, b, input_shape=x.shape, padding=1)
    y = conv(buffer[:, :4], out=OutputSlice(buffer, 4, 6))
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    assert backend.calls == [None]  # computed first, then copied


def test_a_backend_that_claims_slices_but_returns_a_new_array_is_excluded():
    x, w, b, ref = _case()
    liar = Slicing("liar", liar=True)
    engine = _engine(liar, Slicing("honest"), policy=["liar", "honest"])
    buffer = np.zeros((3, 6, 7, 7), np.float32)
    with pytest.warns(PluginWarning, match="liar"):
        y = engine.prepare(w, b, input_shape=x.shape, padding=1)(x, out=OutputSlice(buffer, 0, 6))
    np.testing.assert_allclose(buffer, ref, rtol=1e-5, atol=1e-5)
    assert np.shares_memory(y, buffer)
    assert "another array than out.view" in engine.registry.get("liar").broken
    with pytest.raises(BackendFailedError, match="out.view"), pytest.warns(PluginWarning):
        _engine(Slicing("liar", liar=True), policy="liar").prepare(w, b, input_shape=x.shape, padding=1)(
            x, out=OutputSlice(np.zeros((3, 6, 7, 7), np.float32), 0, 6))


@pytest.mark.parametrize("buffer, start, channels, step, error", [
    (np.zeros((2, 8, 7, 7), np.float32), 0, 6, 1, "out.buffer must be an array of shape \\(3, C_total, 7, 7\\)"),
    (np.zeros((3, 8, 7, 6), np.float32), 0, 6, 1, "out.buffer must be an array of shape"),
    (np.zeros((3, 8, 7, 7), np.float64), 0, 6, 1, "writable C-contiguous float32"),
    (np.zeros((3, 16, 7, 7), np.float32)[:, ::2], 0, 6, 1, "not C-contiguous"),
    (np.zeros((3, 8, 7, 7), np.float32), 3, 6, 1, "must hold 6 channels inside the buffer's 8"),
    (np.zeros((3, 8, 7, 7), np.float32), 0, 6, 2, "must hold 6 channels"),
    (np.zeros((3, 8, 7, 7), np.float32), 0, 5, 1, "must hold 6 channels"),
])
def test_a_slice_that_does_not_fit_is_refused_before_anything_runs(buffer, start, channels, step, error):
    backend = Slicing("slicing")
    x, w, b, _ = _case()
    conv = _engine(backend, policy="slicing").prepare(w, b, input_shape=x.shape, padding=1)
    with pytest.raises(ValueError, match=error):
        conv(x, out=OutputSlice(buffer, start, channels, step))
    assert backend.calls == []
