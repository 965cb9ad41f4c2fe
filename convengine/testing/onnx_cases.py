"""The Conv2d conformance cases that the ``onnx`` package ships, as plain numpy data.

``onnx/backend/test/data/pytorch-converted/test_Conv2d*`` each hold ``model.onnx`` (one
``Conv`` node) and ``test_data_set_*/`` with the inputs fed and PyTorch's recorded output.
Those outputs were computed by PyTorch, so they check a backend against data that no code
of this project produced. Requires the ``onnx`` package (``pip install convengine[test]``).
"""

from __future__ import annotations

import glob
import os

import numpy as np


def conformance_dir() -> str:
    import onnx

    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "pytorch-converted")


def case_dirs() -> list[str]:
    """Every ``test_Conv2d*`` directory of the installed onnx package, sorted."""
    return sorted(glob.glob(os.path.join(conformance_dir(), "test_Conv2d*")))


def _read_tensor(path: str) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

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
    """``(conv_kwargs, weight, bias, [(x, expected), ...])`` of one conformance directory.

    ``conv_kwargs`` are ``convengine.conv2d`` keyword arguments (padding as a 4-tuple).
    """
    import onnx
    from onnx import helper, numpy_helper

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
