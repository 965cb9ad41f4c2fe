"""ONNX's own Conv2d conformance cases (converted from PyTorch), run on every available backend.

The ``onnx`` package ships them under ``onnx/backend/test/data/pytorch-converted/test_Conv2d*``:
each directory holds ``model.onnx`` (a single ``Conv`` node) and ``test_data_set_*/`` with the
fed inputs (``input_*.pb``) and PyTorch's output (``output_0.pb``). The expected outputs were
computed by PyTorch, so they are independent of this project's code.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

import convengine as ce  # noqa: E402
from convengine.testing.reference import conv2d_reference  # noqa: E402

from conftest import backend_object, is_lossy, skip_if_unsupported  # noqa: E402

pytestmark = pytest.mark.usefixtures("no_forced_backend")

DATA_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "pytorch-converted")
CASE_DIRS = sorted(glob.glob(os.path.join(DATA_DIR, "test_Conv2d*")))
CASE_NAMES = [os.path.basename(d) for d in CASE_DIRS]


def _read_tensor(path: str) -> np.ndarray:
    tensor = onnx.TensorProto()
    with open(path, "rb") as f:
        tensor.ParseFromString(f.read())
    return numpy_helper.to_array(tensor)


def _same_padding(size, kernel, stride, dilation, upper):
    """ONNX ``auto_pad`` SAME_UPPER / SAME_LOWER for one axis: (before, after)."""
    eff = dilation * (kernel - 1) + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    small, large = total // 2, total - total // 2
    return (small, large) if upper else (large, small)


def load_case(case_dir: str):
    """``(conv_kwargs, weight, bias, [(x, expected), ...])`` of one conformance directory."""
    model = onnx.load(os.path.join(case_dir, "model.onnx"))
    graph = model.graph
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(graph.node) == 1 and len(convs) == 1, (
        f"{case_dir}: expected a graph of one Conv node, got {[n.op_type for n in graph.node]}")
    conv = convs[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}

    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    # Fed inputs are the graph inputs that no initializer provides, in order: input_k.pb feeds the k-th.
    fed_names = [i.name for i in graph.input if i.name not in initializers]
    data_sets = sorted(glob.glob(os.path.join(case_dir, "test_data_set_*")))
    assert data_sets, f"{case_dir}: no test_data_set_* directory"

    def values_of(data_set):
        values = dict(initializers)
        inputs = sorted(glob.glob(os.path.join(data_set, "input_*.pb")),
                        key=lambda p: int(os.path.basename(p)[len("input_"):-len(".pb")]))
        assert len(inputs) == len(fed_names), f"{data_set}: {len(inputs)} inputs for graph inputs {fed_names}"
        for name, path in zip(fed_names, inputs):
            values[name] = _read_tensor(path)
        return values

    sets = []
    weight = bias = None
    for data_set in data_sets:
        values = values_of(data_set)
        x = values[conv.input[0]]
        w = values[conv.input[1]]
        b = values[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else None
        if weight is None:
            weight, bias = w, b
        else:  # weights fed as graph inputs could differ per data set; the harness assumes they do not
            np.testing.assert_array_equal(w, weight)
        expected = _read_tensor(os.path.join(data_set, "output_0.pb"))
        sets.append((x, expected))

    kernel = tuple(attrs.get("kernel_shape", weight.shape[2:]))
    assert kernel == weight.shape[2:], f"kernel_shape {kernel} does not match weight {weight.shape}"
    stride = tuple(attrs.get("strides", (1, 1)))
    dilation = tuple(attrs.get("dilations", (1, 1)))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("", "NOTSET"):
        top, left, bottom, right = attrs.get("pads", (0, 0, 0, 0))  # ONNX: all begins, then all ends
        padding = (top, bottom, left, right)
    elif auto_pad == "VALID":
        padding = (0, 0, 0, 0)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        h, w_ = sets[0][0].shape[2:]
        upper = auto_pad == "SAME_UPPER"
        padding = (*_same_padding(h, kernel[0], stride[0], dilation[0], upper),
                   *_same_padding(w_, kernel[1], stride[1], dilation[1], upper))
    else:
        raise AssertionError(f"{case_dir}: unknown auto_pad {auto_pad!r}")
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=int(attrs.get("group", 1)))
    return kwargs, weight, bias, sets


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
