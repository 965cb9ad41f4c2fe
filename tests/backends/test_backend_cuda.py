"""The ``cuda`` backend against the float64 reference.

Runs unchanged on a real GPU and on Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``).
The simulator runs one Python thread per GPU thread, so every case is tiny: a few hundred
outputs at most, yet still more than one tile where the tiling itself is under test.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convengine.backends.cuda import SHARED_BYTES, TILE, CudaBackend, launch_plan
from convengine.core.problem import ConvProblem
from convengine.testing.reference import conv2d_reference, relative_error

ROOT = Path(__file__).resolve().parents[2]
BACKEND = CudaBackend()

_reason = BACKEND.availability()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

DTYPES = ["float32", "float64"]


def _run(x, w, b=None, **params):
    """Prepare and execute the backend on one problem; also return the problem."""
    problem = ConvProblem.from_shapes(x.shape, w.shape, bias=b is not None, dtype=x.dtype, **params)
    return BACKEND.prepare(problem, w, b)(x), problem


def _random(shape, dtype, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _check_against_reference(x_shape, w_shape, dtype, bias=False, seed=0, **params):
    x = _random(x_shape, dtype, seed)
    w = _random(w_shape, dtype, seed + 1)
    b = _random((w_shape[0],), dtype, seed + 2) if bias else None
    y, problem = _run(x, w, b, **params)
    assert y.shape == problem.output_shape
    assert y.dtype == np.dtype(dtype)
    expected = conv2d_reference(x, w, b, problem.stride, problem.padding, problem.dilation, problem.groups)
    assert relative_error(y, expected) <= BACKEND.error_bound(dtype)
    return problem


# -- the course's worked examples (expected values copied from the course, not computed) --

X = np.arange(9.0).reshape(1, 1, 3, 3)
K = np.array([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 1, 2, 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "params, expected",
    [
        ({}, [[19, 25], [37, 43]]),
        ({"padding": 1}, [[0, 3, 8, 4], [9, 19, 25, 10], [21, 37, 43, 16], [6, 7, 8, 0]]),
        ({"padding": 1, "stride": (3, 2)}, [[0, 8], [6, 8]]),
    ],
    ids=["valid", "padding1", "padding1-stride3x2"],
)
def test_course_examples(params, expected, dtype):
    y, _ = _run(X.astype(dtype), K.astype(dtype), **params)
    np.testing.assert_array_equal(y, np.array(expected, dtype=dtype).reshape(y.shape))


# -- hyper-parameters, one or two at a time -------------------------------------------

CASES = {
    "stride": dict(x_shape=(1, 2, 7, 7), w_shape=(3, 2, 3, 3), stride=(2, 3)),
    "asymmetric-padding": dict(x_shape=(1, 2, 5, 6), w_shape=(2, 2, 3, 2), padding=(0, 2, 1, 3)),
    "dilation": dict(x_shape=(1, 1, 9, 9), w_shape=(2, 1, 3, 3), dilation=(2, 3), padding=1),
    "stride-dilation-padding": dict(
        x_shape=(2, 2, 8, 7), w_shape=(2, 2, 2, 3), stride=2, dilation=2, padding=(1, 0, 2, 1)
    ),
    "groups": dict(x_shape=(1, 4, 6, 6), w_shape=(4, 2, 3, 3), groups=2),
    "depthwise": dict(x_shape=(2, 3, 6, 6), w_shape=(3, 1, 3, 3), groups=3, padding=1),
    "depthwise-multiplier-same": dict(x_shape=(1, 2, 5, 5), w_shape=(4, 1, 3, 3), groups=2, padding="same"),
    "bias": dict(x_shape=(1, 3, 5, 5), w_shape=(4, 3, 3, 3), bias=True, padding=1),
    "pointwise": dict(x_shape=(2, 4, 4, 4), w_shape=(3, 4, 1, 1)),
    "kernel-covers-input": dict(x_shape=(1, 2, 4, 4), w_shape=(3, 2, 4, 4), bias=True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_reference(case, dtype):
    problem = _check_against_reference(dtype=dtype, **case)
    assert BACKEND.supports(problem) is None


# -- the tiling: several tiles per plane, and the fallback when a patch does not fit ----


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case",
    [
        dict(x_shape=(1, 1, 18, 18), w_shape=(1, 1, 3, 3), padding=1),
        dict(x_shape=(1, 2, 37, 37), w_shape=(1, 2, 3, 3), bias=True, stride=2, dilation=2, padding=(1, 2, 2, 1)),
    ],
    ids=["18x18", "18x18-strided-dilated-2ch"],
)
def test_output_spanning_several_tiles(case, dtype):
    problem = _check_against_reference(dtype=dtype, **case)
    assert problem.out_height > TILE and problem.out_width > TILE
    plan = launch_plan(problem)
    assert plan.patch is not None and plan.blocks == 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_patch_too_large_for_shared_memory_uses_direct_kernel(dtype):
    case = dict(x_shape=(1, 2, 122, 122), w_shape=(2, 2, 2, 2), bias=True, dilation=120, padding=(1, 0, 0, 1))
    problem = _check_against_reference(dtype=dtype, **case)
    assert launch_plan(problem).patch is None
    assert problem.effective_kernel[0] ** 2 * np.dtype(dtype).itemsize > SHARED_BYTES


# -- the executor's contract ------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_zero_returns_empty_output(dtype):
    y, problem = _run(np.zeros((0, 2, 5, 5), dtype), np.ones((3, 2, 3, 3), dtype))
    assert y.shape == problem.output_shape == (0, 3, 3, 3)
    assert y.dtype == np.dtype(dtype)


def test_inputs_not_mutated_and_executor_reusable():
    x1, x2 = _random((1, 2, 5, 5), "float32", 10), _random((1, 2, 5, 5), "float32", 11)
    w, b = _random((2, 2, 3, 3), "float32", 12), _random((2,), "float32", 13)
    originals = [a.copy() for a in (x1, x2, w, b)]
    problem = ConvProblem.from_shapes(x1.shape, w.shape, bias=True, padding=1)
    execute = BACKEND.prepare(problem, w, b)
    y1, y2 = execute(x1), execute(x2)
    for array, original in zip((x1, x2, w, b), originals):
        np.testing.assert_array_equal(array, original)
    for x, y in ((x1, y1), (x2, y2)):
        expected = conv2d_reference(x, w, b, padding=problem.padding)
        assert relative_error(y, expected) <= BACKEND.error_bound("float32")
    np.testing.assert_array_equal(execute(x1), y1)


# -- the rest of the Backend contract -----------------------------------------------------


def test_too_many_blocks_is_unsupported():
    problem = ConvProblem.from_shapes((2**20, 1, 4, 4), (4096, 1, 1, 1))
    assert "thread blocks" in BACKEND.supports(problem)


def test_estimate_and_fingerprint():
    import numba

    problem = ConvProblem.from_shapes((8, 16, 32, 32), (16, 16, 3, 3), padding=1)
    seconds = BACKEND.estimate_seconds(problem, machine=None)
    assert 0 < seconds < float("inf")
    fingerprint = BACKEND.fingerprint()
    assert fingerprint["version"] == BACKEND.version
    assert fingerprint["simulator"] == bool(numba.config.ENABLE_CUDASIM)
    if numba.config.ENABLE_CUDASIM:
        assert seconds > 1.0  # a cost model must never pick the simulator
    else:
        assert "gpu" in fingerprint and "compute_capability" in fingerprint


def _without_simulator(code: str) -> str:
    """Run ``code`` in a fresh interpreter with the simulator off; return its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_availability_explains_why_without_gpu():
    code = "import json; from convengine.backends.cuda import CudaBackend; print(json.dumps(CudaBackend().availability()))"
    reason = json.loads(_without_simulator(code))
    if reason is None:
        pytest.skip("a real CUDA GPU is present")
    assert isinstance(reason, str) and "NUMBA_ENABLE_CUDASIM" in reason


def test_import_does_not_load_numba():
    code = "import sys, convengine.backends.cuda; print('numba' in sys.modules)"
    assert _without_simulator(code).strip() == "False"
