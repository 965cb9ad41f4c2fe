"""Engine.prepare_deferred: the weights are asked for at each preparation, not held by the engine."""

import numpy as np
import pytest
from conftest import make_plugin

import convengine as ce
from convengine import Backend, Engine
from convengine.core.registry import Registry
from convengine.testing.reference import conv2d_reference as reference_conv2d


def test_weights_asked_once_per_batch_size_and_results_match_the_reference():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    calls = []

    def weights():
        calls.append(1)
        return weight.copy(), bias.copy()

    engine = ce.Engine()
    prepared = engine.prepare_deferred(weights, input_shape=(2, 4, 9, 9), padding=1)
    assert len(calls) == 1  # validated, and the first preparation took those very arrays
    for batch in (2, 3, 2):
        x = rng.standard_normal((batch, 4, 9, 9)).astype(np.float32)
        np.testing.assert_allclose(prepared(x), reference_conv2d(x, weight, bias, padding=(1, 1, 1, 1)), rtol=1e-4, atol=1e-4)
    assert len(calls) == 2  # batch 3 prepared once more; batch 2 again reused


def test_bad_weights_are_named():
    engine = ce.Engine()
    with pytest.raises(ValueError, match="weight"):
        engine.prepare_deferred(lambda: (np.ones((8, 4, 3)), None), input_shape=(1, 4, 9, 9))


def test_prepare_keeps_its_own_copy():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    prepared = ce.Engine().prepare(weight, input_shape=(1, 2, 6, 6))
    expected = reference_conv2d(np.ones((3, 2, 6, 6), np.float32), weight.copy(), None)
    weight[:] = 0  # the caller changes its array after preparing: a new batch size must not see it
    np.testing.assert_allclose(prepared(np.ones((3, 2, 6, 6), np.float32)), expected, rtol=1e-4, atol=1e-4)


class _Recording(Backend):
    """Records the weight array prepare() is given; computes the float64 reference."""

    def __init__(self, name, weight_views):
        self.name, self.weight_views, self.given = name, weight_views, []

    def estimate_seconds(self, problem, machine):
        return 1e-9

    def prepare(self, problem, weight, bias):
        self.given.append(weight)
        return lambda x: reference_conv2d(x, weight, bias).astype(problem.dtype)


@pytest.mark.parametrize("weight_views", [True, False])
def test_a_weight_view_reaches_only_backends_that_take_views(weight_views):
    """The transpose of a channels-last (C, O) matrix, as the graph executor passes a Linear layer's weights."""
    matrix = np.random.default_rng(2).standard_normal((6, 10)).astype(np.float32)  # (C, O)
    backend = _Recording("recording", weight_views)
    registry = Registry.load(extra_plugins=[make_plugin("recording", backend)], load_entry_points=False)
    prepared = Engine("recording", registry=registry).prepare_deferred(lambda: (matrix.T[:, :, None, None], None),
                                                                       input_shape=(1, 6, 3, 4))
    x = np.random.default_rng(3).standard_normal((2, 6, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(prepared(x), reference_conv2d(x, matrix.T[:, :, None, None].copy(), None),
                               rtol=1e-5, atol=1e-5)
    given = backend.given[0]
    assert given.shape == (10, 6, 1, 1)
    if weight_views:
        assert np.shares_memory(given, matrix) and not given.flags.c_contiguous  # read in place, no copy
    else:
        assert given.flags.c_contiguous and not np.shares_memory(given, matrix)
