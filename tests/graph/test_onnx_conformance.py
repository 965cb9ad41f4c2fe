"""ONNX's own Conv2d conformance cases (converted from PyTorch), run on every available backend.

The ``onnx`` package ships them under ``onnx/backend/test/data/pytorch-converted/test_Conv2d*``:
each directory holds ``model.onnx`` (a single ``Conv`` node) and ``test_data_set_*/`` with the
fed inputs (``input_*.pb``) and PyTorch's output (``output_0.pb``). The expected outputs were
computed by PyTorch, so they are independent of this project's code.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from conftest import backend_object, is_lossy, skip_if_unsupported  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)

import convengine as ce  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.testing.onnx_cases import case_dirs, conformance_dir, load_case  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.testing.reference import conv2d_reference  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)

pytestmark = pytest.mark.usefixtures("no_forced_backend")

DATA_DIR = conformance_dir()
CASE_DIRS = case_dirs()
CASE_NAMES = [os.path.basename(d) for d in CASE_DIRS]


def test_conformance_cases_found():
    """Fail loudly, rather than pass vacuously, when onnx is installed but no case is found."""
    assert os.path.isdir(DATA_DIR), f"onnx {onnx.__version__} has no {DATA_DIR}"
    assert CASE_NAMES, f"no test_Conv2d* case under {DATA_DIR} (onnx {onnx.__version__})"
    assert "test_Conv2d" in CASE_NAMES


@pytest.mark.parametrize("case_dir", CASE_DIRS, ids=CASE_NAMES)
def test_reference_matches_onnx(case_dir):
    """The float64 reference itself agrees with PyTorch's recorded outputs."""
    kwargs, weight, bias, sets = load_case(case_dir)
    for x, expected in sets:
        y = conv2d_reference(x, weight, bias, kwargs["stride"], kwargs["padding"], kwargs["dilation"],
                             kwargs["groups"])
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case_dir", CASE_DIRS, ids=CASE_NAMES)
def test_backend_matches_onnx(backend_name, case_dir):
    kwargs, weight, bias, sets = load_case(case_dir)
    # rtol/atol for float32 data; a backend documenting a looser bound of its own (TF32 on a GPU) gets 10x it.
    tol = max(1e-3 if is_lossy(backend_name) else 1e-4, 10 * float(backend_object(backend_name).error_bound("float32")))
    for x, expected in sets:
        assert x.dtype == np.float32, "the shipped cases are float32 data"
        skip_if_unsupported(backend_name, x, weight, bias, **kwargs)
        y = ce.conv2d(x, weight, bias, backend=backend_name, **kwargs)
        assert y.dtype == expected.dtype
        assert y.shape == expected.shape
        np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)
