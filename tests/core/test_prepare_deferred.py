"""Engine.prepare_deferred: the weights are asked for at each preparation, not held by the engine."""

import numpy as np
import pytest

import convengine as ce
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
