"""Elementwise chains run as one step: PyTorch's exported GELU, and batch norm + ReLU before a convolution.

Tiny ONNX models built with ``onnx.helper`` as the exporters write the chains (GELU as
``Div(x, 1.4142135) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5)``, DenseNet's ``BatchNormalization
-> Relu -> Conv``), loaded with ``convengine.load_onnx`` and checked against ONNX Runtime on
the same file, fused and unfused. A chain with another constant, another operand, or an
intermediate that something else reads (or that the graph returns) is left alone.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from conftest import onnx_model_bytes, onnx_runtime_outputs  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from onnx import TensorProto, helper, numpy_helper  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)

import convengine as ce  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.graph.executor import CompiledGraph  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)

pytestmark = pytest.mark.usefixtures("no_forced_backend")

EXACT_ENGINE = ce.Engine(max_rel_error=1e-6)
C, H, W = 6, 5, 7
GELU = ["scale", "erf", "one", "times", "half"]


def _model(nodes, inits, outputs=("y",)):
    return onnx_model_bytes(nodes, inits, (C, H, W), outputs, "chain")


def _gelu_model(root2=1.4142135, one=1.0, half=0.5, swap=False, extra=(), outputs=("y",), times_input="t"):
    """x -> Add(bias) -> "t" -> torch's exact GELU -> "y" (then ``extra`` nodes)."""
    rng = np.random.default_rng(0)
    inits = {"bias": rng.standard_normal((C, 1, 1)), "root2": np.array(root2), "one": np.array(one),
             "half": np.array(half)}
    nodes = [helper.make_node("Add", ["x", "bias"], ["t"], name="bias"),
             helper.make_node("Div", ["t", "root2"], ["d"], name="scale"),
             helper.make_node("Erf", ["d"], ["e"], name="erf"),
             helper.make_node("Add", ["one", "e"] if swap else ["e", "one"], ["a"], name="one"),
             helper.make_node("Mul", ["a", times_input] if swap else [times_input, "a"], ["m"], name="times"),
             helper.make_node("Mul", ["half", "m"] if swap else ["m", "half"], ["y"], name="half"), *extra]
    return _model(nodes, inits, outputs)


def _input(batch=2, seed=1):
    x = (np.random.default_rng(seed).standard_normal((batch, C, H, W)) * 3).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    return x


def _check(compiled, model, x, outputs=("y",)):
    want = onnx_runtime_outputs(model, x)
    got = compiled.run(x)
    got = got if isinstance(got, dict) else {outputs[0]: got}
    for name, w in zip(outputs, want):
        assert np.array_equal(np.isnan(got[name]), np.isnan(w))
        # atol scaled to the output's size: where a convolution follows, a sum of float32 products
        # that cancels near zero differs with the summation order (the backend chosen), by ~1e-7 of the largest value
        scale = float(np.nanmax(np.abs(w))) if np.isfinite(w).any() else 1.0
        np.testing.assert_allclose(got[name], w, rtol=2e-6, atol=1e-6 * max(1.0, scale))


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
def test_torchs_gelu_is_one_step_in_place_and_matches_onnx_runtime(swap, batch):
    model = _gelu_model(swap=swap)
    x = _input(batch)
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE, batch=batch)
    assert compiled.fused == {"half": "Mul+Erf+Add+Mul+Mul"}
    assert [s.node.op for s in compiled.steps] == ["Add", "Gelu"]
    assert compiled.steps[1].inplace  # "t" is read by the chain alone
    assert any(k.function == "gelu_parallel" for k in compiled.kernels())  # compiled ahead
    _check(compiled, model, x)
    unfused = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE, fuse_epilogues=False, batch=batch)
    assert "half" not in unfused.fused
    np.testing.assert_array_equal(compiled.run(x), unfused.run(x))  # the same operations, in the same order


@pytest.mark.parametrize("changes", [
    dict(root2=1.5), dict(root2=1.4142137), dict(one=2.0), dict(half=0.25),  # another constant
    dict(times_input="x"),  # Mul by another tensor than the one the chain started from
])
def test_gelu_with_another_constant_or_operand_is_not_fused(changes):
    model = _gelu_model(**changes)
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE)
    assert "half" not in compiled.fused
    assert "Gelu" not in [s.node.op for s in compiled.steps]
    _check(compiled, model, _input())


@pytest.mark.parametrize("extra, outputs", [
    ((), ("y", "e")),  # the Erf's output is returned too
    ((helper.make_node("Neg", ["a"], ["n"]),), ("y", "n")),  # the Add's output is read elsewhere
    ((helper.make_node("Neg", ["m"], ["n"]),), ("y", "n")),  # the product's output is read elsewhere
])
def test_gelu_whose_intermediate_is_read_elsewhere_is_not_fused(extra, outputs):
    model = _gelu_model(extra=extra, outputs=outputs)
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE)
    assert "half" not in compiled.fused
    _check(compiled, model, _input(), outputs)


def test_gelu_whose_input_is_read_later_is_fused_but_not_in_place():
    model = _gelu_model(extra=(helper.make_node("Add", ["y", "t"], ["z"], name="residual"),), outputs=("z",))
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE)
    assert compiled.fused == {"half": "Mul+Erf+Add+Mul+Mul"}
    assert not next(s for s in compiled.steps if s.node.op == "Gelu").inplace
    _check(compiled, model, _input(), ("z",))


def _bn_model(scale_first=True, extra=(), outputs=("y",), conv_before=False):
    """[x -> Mul(s) | x -> Conv] -> "t" -> BatchNormalization -> Relu -> Conv 3x3 -> "y": DenseNet's pre-activation."""
    rng = np.random.default_rng(2)
    inits = {"s": np.array(1.5), "gamma": rng.uniform(0.5, 1.5, C), "beta": rng.standard_normal(C),
             "mean": rng.standard_normal(C), "var": rng.uniform(0.5, 2, C),
             "w0": rng.standard_normal((C, C, 1, 1)) * 0.5, "w": rng.standard_normal((4, C, 3, 3)) * 0.3}
    first = (helper.make_node("Conv", ["x", "w0"], ["t"], name="conv0", kernel_shape=[1, 1]) if conv_before
             else helper.make_node("Mul", ["x", "s"], ["t"], name="pre"))
    nodes = [first,
             helper.make_node("BatchNormalization", ["t", "gamma", "beta", "mean", "var"], ["b"], name="bn", epsilon=1e-5),
             helper.make_node("Relu", ["b"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1] * 4), *extra]
    return _model(nodes, inits, outputs)


@pytest.mark.parametrize("batch", [1, 2])
def test_batchnorm_then_relu_is_one_step_in_place_and_matches_onnx_runtime(batch):
    model = _bn_model()
    x = _input(batch)
    x[0, 1, 2, 3] = 0  # (a NaN would spread through the convolution)
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE, batch=batch)
    assert compiled.fused["relu"] == "BatchNormalization+Relu"
    assert [s.node.op for s in compiled.steps] == ["Mul", "BatchNormalization+Relu", "Conv"]
    assert compiled.steps[1].inplace
    assert any(k.function == "scale_shift_parallel" for k in compiled.kernels())
    _check(compiled, model, x)
    _check(CompiledGraph(ce.load_onnx(model), EXACT_ENGINE, fuse_epilogues=False, batch=batch), model, x)


def test_batchnorm_after_a_convolution_is_folded_not_chained():
    model = _bn_model(conv_before=True)
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE)
    assert compiled.fused == {"conv0": "Relu"}  # folded into conv0, and the Relu its epilogue
    x = _input()
    x[0, 1, 2, 3] = 0
    _check(compiled, model, x)


@pytest.mark.parametrize("extra, outputs", [
    ((), ("y", "b")),  # the batch norm's output is returned too
    ((helper.make_node("Neg", ["b"], ["n"]),), ("y", "n")),  # ... or read by another node
])
def test_batchnorm_whose_output_is_read_elsewhere_is_not_chained(extra, outputs):
    model = _bn_model(extra=extra, outputs=outputs)
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE)
    assert "relu" not in compiled.fused
    x = _input()
    x[0, 1, 2, 3] = 0
    _check(compiled, model, x, outputs)


def test_batchnorm_relu_chain_whose_input_is_returned_leaves_it_alone():
    model = _bn_model(outputs=("y", "t"))
    x = _input()
    x[0, 1, 2, 3] = 0
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE)
    assert compiled.fused["relu"] == "BatchNormalization+Relu"
    assert not compiled.steps[1].inplace
    _check(compiled, model, x, ("y", "t"))


def _bias_gelu_model(bias_shape, extra=(), outputs=("y",)):
    """x -> Neg -> "u" -> Add(bias) -> "t" -> torch's exact GELU -> "y": ConvNeXt's MatMul -> Add(bias) -> GELU."""
    rng = np.random.default_rng(3)
    inits = {"bias": rng.standard_normal(bias_shape), "root2": np.array(1.4142135), "one": np.array(1.0),
             "half": np.array(0.5)}
    nodes = [helper.make_node("Neg", ["x"], ["u"], name="neg"),
             helper.make_node("Add", ["bias", "u"], ["t"], name="bias"),
             helper.make_node("Div", ["t", "root2"], ["d"], name="scale"),
             helper.make_node("Erf", ["d"], ["e"], name="erf"),
             helper.make_node("Add", ["e", "one"], ["a"], name="one"),
             helper.make_node("Mul", ["t", "a"], ["m"], name="times"),
             helper.make_node("Mul", ["m", "half"], ["y"], name="half"), *extra]
    return _model(nodes, inits, outputs)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("bias_shape", [(W,), (1, 1, W), (1, 1, 1, W)])
def test_a_bias_along_the_last_axis_before_gelu_is_absorbed_too(bias_shape, batch):
    model = _bias_gelu_model(bias_shape)
    x = _input(batch)
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE, batch=batch)
    assert compiled.fused == {"half": "Add+Mul+Erf+Add+Mul+Mul"}
    assert [s.node.op for s in compiled.steps] == ["Neg", "Gelu"]
    assert compiled.steps[1].inplace  # "u" is read by the chain alone
    assert any(k.function == "bias_gelu_parallel" for k in compiled.kernels())
    _check(compiled, model, x)
    np.testing.assert_array_equal(compiled.run(x), CompiledGraph(ce.load_onnx(model), EXACT_ENGINE, fuse_epilogues=False,
                                                                 batch=batch).run(x))


@pytest.mark.parametrize("bias_shape, extra, outputs", [
    ((C, 1, 1), (), ("y",)),  # a bias along the channels of NCHW: not the last axis
    ((H, W), (), ("y",)),  # more than a vector
    ((W,), (), ("y", "t")),  # the biased tensor is returned too
    ((W,), (helper.make_node("Neg", ["t"], ["n"]),), ("y", "n")),  # ... or read by another node
])
def test_a_bias_that_is_not_a_last_axis_vector_read_by_the_chain_alone_stays_an_add(bias_shape, extra, outputs):
    model = _bias_gelu_model(bias_shape, extra, outputs)
    compiled = CompiledGraph(ce.load_onnx(model), EXACT_ENGINE)
    assert compiled.fused == {"half": "Mul+Erf+Add+Mul+Mul"}  # the GELU itself still is one step
    assert "Add" in [s.node.op for s in compiled.steps]
    _check(compiled, model, _input(), outputs)


@pytest.mark.parametrize("in_place", [False, True])
def test_batchnorm_relu_on_a_channel_slice_of_a_larger_buffer(in_place):
    """At batch > 1 a concatenation's prefix (DenseNet) is a view whose images are apart: run image by image."""
    from convengine.graph._pointwise_kernels import scale_shift

    rng = np.random.default_rng(5)
    buffer = rng.standard_normal((3, 12, 5, 5)).astype(np.float32)
    before = buffer.copy()
    factor, shift = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    x = buffer[:, :8]
    want = np.maximum(before[:, :8] * factor.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1), 0)
    y = scale_shift(x, factor, shift, True, out=x if in_place else None)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    assert np.shares_memory(y, buffer) == in_place
    np.testing.assert_array_equal(buffer[:, 8:], before[:, 8:])
    if not in_place:
        np.testing.assert_array_equal(buffer, before)


def test_float64_chains_match_the_float64_definitions():
    """A float64 graph's chains run numpy's float64 arithmetic (scipy's erf) and the float64 batch-norm kernel."""
    from scipy.special import erf

    def as_float64(model: bytes) -> bytes:
        proto = onnx.load_from_string(model)
        for value in list(proto.graph.input) + list(proto.graph.output):
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
        for init in proto.graph.initializer:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
        return proto.SerializeToString()

    x = _input().astype(np.float64)
    x[0, 1, 2, 3] = 0
    gelu = ce.load_onnx(as_float64(_bias_gelu_model((W,))))
    compiled = CompiledGraph(gelu, EXACT_ENGINE)
    assert compiled.fused == {"half": "Add+Mul+Erf+Add+Mul+Mul"}
    t = -x + gelu.params["bias"].reshape(-1)
    want = 0.5 * t * (1 + erf(t / np.float64(np.float32(1.4142135))))
    got = compiled.run(x)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    bn = ce.load_onnx(as_float64(_bn_model(outputs=("r",))))
    compiled = CompiledGraph(bn, EXACT_ENGINE)
    assert compiled.fused == {"relu": "BatchNormalization+Relu"}
    p = {k: bn.params[k] for k in ("gamma", "beta", "mean", "var")}
    want = np.maximum((x * 1.5 - p["mean"].reshape(-1, 1, 1)) / np.sqrt(p["var"].reshape(-1, 1, 1) + 1e-5)
                      * p["gamma"].reshape(-1, 1, 1) + p["beta"].reshape(-1, 1, 1), 0)
    got = compiled.run(x)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels", [16, 40, 5])
@pytest.mark.parametrize("sliced", [False, True])
@pytest.mark.parametrize("streamed", [False, True])
def test_batchnorm_relu_on_blocked_tensors_keeps_padding_and_nan(channels, sliced, streamed, monkeypatch):
    """The blocked form (DenseNet's concatenation held NCHW16c): each lane by its channel's factor and shift, a
    channel slice of a larger blocked buffer read in place, the padding channels of a partial block left 0, NaN
    kept and negative values clipped, as the NCHW definition does; the same with streaming stores (a large
    output's), into an array aligned for them."""
    import convengine.graph._pointwise_kernels as kernels
    from convengine.core.layouts import to_layout, to_nchw
    from convengine.graph._lane_stores import STREAM_ALIGNMENT
    from convengine.graph._pointwise_kernels import scale_shift_blocked

    monkeypatch.setattr(kernels, "STREAM_MIN_L2", 0 if streamed else 1 << 30)

    rng = np.random.default_rng(channels)
    x = rng.standard_normal((3, channels, 5, 7)).astype(np.float32)
    x[1, channels - 1, 2, 3] = np.nan
    blocked = to_layout(x, "NCHW16c")
    if sliced:  # the same blocks inside a buffer with more blocks after them
        buffer = to_layout(np.concatenate([x, rng.standard_normal((3, 32, 5, 7)).astype(np.float32)], axis=1)
                           if channels % 16 == 0 else x, "NCHW16c")
        blocked = buffer[:, :-(-channels // 16)]
    factor, shift = rng.uniform(0.5, 2, channels).astype(np.float32), rng.standard_normal(channels).astype(np.float32)
    pad = -(-channels // 16) * 16 - channels
    y = scale_shift_blocked(blocked, np.concatenate([factor, np.zeros(pad, np.float32)]),
                            np.concatenate([shift, np.zeros(pad, np.float32)]), True)
    want = np.maximum(x * factor[None, :, None, None] + shift[None, :, None, None], 0)
    want[np.isnan(x)] = np.nan
    got = to_nchw(y, "NCHW16c", y.shape[1] * 16)
    np.testing.assert_allclose(got[:, :channels], want, rtol=1e-6, atol=1e-6)
    assert not got[:, channels:].any()
    if streamed:
        assert y.ctypes.data % STREAM_ALIGNMENT == 0


@pytest.mark.parametrize("misalign", [0, 1, 4])
@pytest.mark.parametrize("parallel", [False, True])
def test_lane_affine_streams_only_into_aligned_memory(misalign, parallel):
    """Asked to stream into memory off a vector boundary (where ``movntps`` would fault), the kernel stores as
    usual; on it, it streams; both give the affine + ReLU of each lane, NaN kept."""
    from convengine.graph._lane_stores import STREAM_ALIGNMENT
    from convengine.graph._pointwise_kernels import scale_shift_lanes_parallel, scale_shift_lanes_serial

    rng = np.random.default_rng(misalign)
    images, blocks, pixels = 3, 2, 9
    x = rng.standard_normal(images * blocks * pixels * 16).astype(np.float32)
    x[5] = np.nan
    factor, shift = rng.uniform(0.5, 2, blocks * 16).astype(np.float32), rng.standard_normal(blocks * 16).astype(np.float32)
    room = np.empty(x.size + 64, np.float32)
    start = (-room.ctypes.data % STREAM_ALIGNMENT) // 4 + misalign
    y = room[start:start + x.size].reshape(images, blocks, pixels * 16)
    kernel = scale_shift_lanes_parallel if parallel else scale_shift_lanes_serial
    kernel(x, blocks * pixels * 16, y, factor, shift, True, True)
    lanes = x.reshape(images, blocks, pixels, 16)
    want = np.maximum(lanes * factor.reshape(blocks, 1, 16) + shift.reshape(blocks, 1, 16), 0)
    want[np.isnan(lanes)] = np.nan
    np.testing.assert_allclose(y.reshape(want.shape), want, rtol=1e-6, atol=1e-6)
