"""ConvNeXt's ``Transpose(0, 2, 3, 1) -> LayerNormalization`` as one step that reads the NCHW tensor directly.

Tiny ONNX models built with ``onnx.helper``, loaded with ``convengine.load_onnx`` and checked
against ONNX Runtime on the same file, fused and unfused; the kernel alone against a float64
numpy reference. A normalisation over more than the channels, or a permuted tensor that
something else reads, keeps its two nodes.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from conftest import assert_matches_onnx_runtime, onnx_model_bytes  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from onnx import helper  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)

import convengine as ce  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.graph._layer_norm_kernels import channels_first_layer_norm  # noqa: E402  (after importorskip)
from convengine.graph.executor import CompiledGraph  # noqa: E402  (after importorskip)

pytestmark = pytest.mark.usefixtures("no_forced_backend")

C, H, W = 6, 5, 7
ENGINE = ce.Engine(max_rel_error=1e-6)


def _model(axis=-1, bias=True, outputs=("y",), back=False):
    """x -> Neg -> Transpose(0, 2, 3, 1) -> "t" -> LayerNormalization(axis) -> "y" (-> Transpose(0, 3, 1, 2) -> "z")."""
    rng = np.random.default_rng(0)
    norm_shape = (C,) if axis in (-1, 3) else (W, C)
    inits = {"scale": rng.standard_normal(norm_shape), **({"bias": rng.standard_normal(norm_shape)} if bias else {})}
    nodes = [helper.make_node("Neg", ["x"], ["s"], name="neg"),
             helper.make_node("Transpose", ["s"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("LayerNormalization", ["t", "scale"] + (["bias"] if bias else []), ["y"], name="norm",
                              axis=axis, epsilon=1e-6)]
    if back:
        nodes.append(helper.make_node("Transpose", ["y"], ["z"], name="to_nchw", perm=[0, 3, 1, 2]))
    return onnx_model_bytes(nodes, inits, (C, H, W), outputs, "norm")


def _check(compiled, model: bytes, x, outputs=("y",)):
    assert_matches_onnx_runtime(compiled, model, x, outputs, tol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_a_layer_norm_of_the_permuted_channels_is_one_step(batch, bias):
    model = _model(bias=bias)
    x = np.random.default_rng(1).standard_normal((batch, C, H, W)).astype(np.float32)
    compiled = CompiledGraph(ce.load_onnx(model), ENGINE, batch=batch)
    assert compiled.fused == {"norm": "Transpose+LayerNormalization"}
    assert [s.node.op for s in compiled.steps] == ["Neg", "TransposedLayerNorm"]
    assert any(k.function == "channels_first_parallel" for k in compiled.kernels())
    _check(compiled, model, x)
    _check(CompiledGraph(ce.load_onnx(model), ENGINE, fuse_epilogues=False, batch=batch), model, x)


@pytest.mark.parametrize("batch", [1, 2])
def test_with_the_transpose_back_the_step_writes_nchw(batch):
    """ConvNeXt's LayerNorm2d: permute, normalise, permute back; the output keeps the input's layout."""
    model = _model(outputs=("z",), back=True)
    x = np.random.default_rng(4).standard_normal((batch, C, H, W)).astype(np.float32)
    compiled = CompiledGraph(ce.load_onnx(model), ENGINE, batch=batch)
    assert compiled.fused == {"to_nchw": "Transpose+LayerNormalization+Transpose"}
    assert [s.node.op for s in compiled.steps] == ["Neg", "TransposedLayerNorm"]
    _check(compiled, model, x, ("z",))
    _check(CompiledGraph(ce.load_onnx(model), ENGINE, fuse_epilogues=False, batch=batch), model, x, ("z",))


@pytest.mark.parametrize("changes", [dict(axis=2), dict(outputs=("y", "t"))])
def test_other_patterns_keep_their_two_nodes(changes):
    model = _model(**changes)
    compiled = CompiledGraph(ce.load_onnx(model), ENGINE)
    assert "norm" not in compiled.fused
    _check(compiled, model, np.random.default_rng(2).standard_normal((2, C, H, W)).astype(np.float32),
           changes.get("outputs", ("y",)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 24, 5, 7), (1, 40, 60, 30)])  # a partial pixel tile; serial, parallel
@pytest.mark.parametrize("channels_last", [True, False])
def test_the_kernel_matches_a_float64_reference(shape, dtype, channels_last):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    scale, bias = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    before = x.copy()
    t = x.astype(np.float64).transpose(0, 2, 3, 1)
    mean = t.mean(-1, keepdims=True)
    want = (t - mean) / np.sqrt(((t - mean) ** 2).mean(-1, keepdims=True) + 1e-6) * scale + bias
    got = channels_first_layer_norm(x, scale, bias, 1e-6, channels_last)
    want = want if channels_last else want.transpose(0, 3, 1, 2)
    assert got.shape == want.shape and got.flags.c_contiguous and got.dtype == dtype
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_array_equal(x, before)
