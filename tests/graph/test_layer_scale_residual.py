"""ConvNeXt's block end, ``Add(bias) -> Transpose(0, 3, 1, 2) -> Mul(layer scale) -> Add(shortcut)``, as one step.

Tiny ONNX models built with ``onnx.helper`` as torchvision's ConvNeXt exports the pattern,
loaded with ``convengine.load_onnx`` and checked against ONNX Runtime on the same file,
fused and unfused; the kernel alone against a float64 numpy reference. A scale that is not one
value per channel or an intermediate read elsewhere leaves the nodes alone.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from conftest import assert_matches_onnx_runtime, onnx_model_bytes  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from onnx import helper  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)

import convengine as ce  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.graph._pointwise_kernels import layer_scale_residual  # noqa: E402  (after importorskip)
from convengine.graph.executor import CompiledGraph  # noqa: E402  (after importorskip)

pytestmark = pytest.mark.usefixtures("no_forced_backend")

C, H, W = 6, 5, 7
ENGINE = ce.Engine(max_rel_error=1e-6)
FUSED = "Add+Transpose+Mul+Add"


def _model(gamma_shape=(C, 1, 1), extra=(), outputs=("y",), swap=False):
    """x -> Neg -> "s" (the shortcut) -> Transpose to NHWC -> Add(bias) -> Transpose(0, 3, 1, 2) -> Mul(gamma) -> Add(s)."""
    rng = np.random.default_rng(0)
    inits = {"bias": rng.standard_normal(C), "gamma": rng.standard_normal(gamma_shape)}
    nodes = [helper.make_node("Neg", ["x"], ["s"], name="neg"),
             helper.make_node("Transpose", ["s"], ["p"], name="to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("Add", ["bias", "p"] if swap else ["p", "bias"], ["b"], name="bias"),
             helper.make_node("Transpose", ["b"], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Mul", ["gamma", "t"] if swap else ["t", "gamma"], ["m"], name="scale"),
             helper.make_node("Add", ["s", "m"] if swap else ["m", "s"], ["y"], name="residual"), *extra]
    return onnx_model_bytes(nodes, inits, (C, H, W), outputs, "layer_scale")


def _check(compiled, model: bytes, x, outputs=("y",)):
    assert_matches_onnx_runtime(compiled, model, x, outputs)


def _input(batch, seed=1):
    return np.random.default_rng(seed).standard_normal((batch, C, H, W)).astype(np.float32)


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("gamma_shape", [(C, 1, 1), (1, C, 1, 1)])
@pytest.mark.parametrize("batch", [1, 3])
def test_the_block_end_is_one_step_over_the_shortcut_and_matches_onnx_runtime(batch, gamma_shape, swap):
    model = _model(gamma_shape, swap=swap)
    x = _input(batch)
    compiled = CompiledGraph(ce.load_onnx(model), ENGINE, batch=batch)
    assert compiled.fused == {"residual": FUSED}
    assert [s.node.op for s in compiled.steps] == ["Neg", "Transpose", "LayerScaleResidual"]
    assert compiled.steps[2].inplace  # the shortcut "s" is read by nothing after
    assert any(k.function == "layer_scale_residual_parallel" for k in compiled.kernels())
    _check(compiled, model, x)
    unfused = CompiledGraph(ce.load_onnx(model), ENGINE, fuse_epilogues=False, batch=batch)
    assert "residual" not in unfused.fused
    np.testing.assert_array_equal(compiled.run(x), unfused.run(x))  # the same three roundings, in the same order


def test_a_shortcut_read_later_is_not_overwritten():
    model = _model(extra=(helper.make_node("Add", ["y", "s"], ["z"], name="again"),), outputs=("z",))
    compiled = CompiledGraph(ce.load_onnx(model), ENGINE)
    assert compiled.fused == {"residual": FUSED}
    assert not next(s for s in compiled.steps if s.node.op == "LayerScaleResidual").inplace
    _check(compiled, model, _input(2), ("z",))


@pytest.mark.parametrize("changes", [
    dict(gamma_shape=(W,)),  # broadcasts along the width, not the channels
    dict(gamma_shape=(C, H, W)),  # more than one value per channel
    dict(outputs=("y", "t")),  # an intermediate is returned
    dict(extra=(helper.make_node("Neg", ["m"], ["n"]),), outputs=("y", "n")),  # ... or read by another node
])
def test_other_patterns_are_left_to_their_nodes(changes):
    model = _model(**changes)
    compiled = CompiledGraph(ce.load_onnx(model), ENGINE)
    assert "residual" not in compiled.fused
    _check(compiled, model, _input(2), changes.get("outputs", ("y",)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 3, 5, 2), (2, 33, 35, 40), (1, 70, 70, 240)])  # tiles cut and whole, serial and parallel
def test_the_kernel_matches_a_float64_reference_and_can_write_over_the_shortcut(shape, dtype):
    n, h, w, c = shape
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    residual = rng.standard_normal((n, c, h, w)).astype(dtype)
    bias, gamma = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    want = ((x.astype(np.float64) + bias).transpose(0, 3, 1, 2) * gamma.reshape(-1, 1, 1).astype(np.float64)
            + residual.astype(np.float64))
    tol = 1e-6 if dtype == np.float32 else 1e-13
    before = x.copy(), residual.copy()
    got = layer_scale_residual(x, residual, bias, gamma)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(residual, before[1])
    in_place = layer_scale_residual(x, residual, bias, gamma, out=residual)
    assert in_place is residual
    np.testing.assert_array_equal(in_place, got)
