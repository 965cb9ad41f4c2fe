"""Shared test helpers: the available backends, their tolerances, and the hypothesis profile.

The suite runs unchanged on a machine with an NVIDIA GPU and on one without, where CI sets
``NUMBA_ENABLE_CUDASIM=1`` so that the ``cuda`` backend runs on Numba's CUDA simulator (one
Python thread per GPU thread: correct but very slow). Tests ask :func:`is_cuda_simulator`
and shrink their shapes for it; on a real GPU the same tests run at full size.
"""

from __future__ import annotations

import importlib.util
import os
import types

import numpy as np
import pytest

import convengine as ce
from convengine.core.contract import LOSSY
from convengine.core.engine import ENV_BACKEND
from convengine.core.problem import ConvProblem
from convengine.core.registry import default_registry
from convengine.testing.conformance import tolerance as kit_tolerance

try:  # hypothesis is a test extra; files that do not use it must still run without it
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover
    settings = None

if settings is not None:
    settings.register_profile(
        "ci",
        deadline=None,  # Numba compiles on first use; the simulator is slow: timing is not under test
        derandomize=True,  # the same examples on every run and machine
        database=None,  # nothing written into the checkout
        max_examples=25,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
    # A longer local run: HYPOTHESIS_PROFILE=thorough python -m pytest tests/core/test_conv2d_property.py
    settings.register_profile("thorough", parent=settings.get_profile("ci"), derandomize=False, max_examples=500)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# -- backends ---------------------------------------------------------------------------------

#: Every backend that can run on this machine, as ``list_backends`` reports it at collection.
AVAILABLE_BACKENDS = tuple(info for info in ce.list_backends() if info.available)
AVAILABLE_BACKEND_NAMES = tuple(info.name for info in AVAILABLE_BACKENDS)


def module_from_file(name: str, path) -> types.ModuleType:
    """The Python file ``path`` loaded as a module named ``name`` (scripts and suites that are not installed packages)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def backend_info(name: str) -> ce.BackendInfo:
    """The :class:`convengine.BackendInfo` of an available backend."""
    for info in AVAILABLE_BACKENDS:
        if info.name == name:
            return info
    raise KeyError(f"{name!r} is not an available backend; available: {AVAILABLE_BACKEND_NAMES}")


def backend_object(name: str):
    """The registered backend object itself (for ``supports`` and ``error_bound``)."""
    return default_registry().get(name).backend


def is_cuda_simulator(name: str) -> bool:
    """True when ``name`` is a CUDA backend running on Numba's simulator (tiny shapes only)."""
    if backend_info(name).device != "cuda":
        return False
    import numba  # imported here: only CUDA backends need it

    return bool(numba.config.ENABLE_CUDASIM)


def is_lossy(name: str) -> bool:
    return backend_info(name).numerical_class == LOSSY


def tolerance(name: str, dtype) -> float:
    """Normwise relative error allowed for backend ``name`` on ``dtype`` data: the conformance kit's rule."""
    return kit_tolerance(backend_object(name), dtype)


def unsupported_reason(name: str, x_shape, w_shape, *, dtype, bias: bool = False, **params):
    """Why backend ``name`` declines this problem (its ``supports``), or ``None`` if it runs it.

    Built-in backends support every problem; plugins (e.g. Winograd: 3x3, stride 1 only) may not.
    """
    x_shape = tuple(x_shape)
    if len(x_shape) == 3:
        x_shape = (1, *x_shape)
    problem = ConvProblem.from_shapes(x_shape, tuple(w_shape), bias=bias, dtype=dtype, **params)
    return backend_object(name).supports(problem)


def skip_if_unsupported(name: str, x, w, bias=None, **params) -> None:
    reason = unsupported_reason(name, np.shape(x), np.shape(w), dtype=np.asarray(x).dtype, bias=bias is not None,
                                **params)
    if reason:
        pytest.skip(f"backend {name!r} does not support this problem: {reason}")


@pytest.fixture(params=AVAILABLE_BACKEND_NAMES, ids=AVAILABLE_BACKEND_NAMES, scope="session")
def backend_name(request) -> str:
    """Each available backend's name in turn (session scope, so hypothesis tests may use it)."""
    return request.param


@pytest.fixture(scope="module")
def no_forced_backend():
    """Unset ``CONVENGINE_BACKEND`` for a module, so that ``backend=`` really picks the backend."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ENV_BACKEND, raising=False)
        yield


@pytest.fixture
def typical_machine(monkeypatch):
    """The cost model's machine profile fixed for a test whose expected choices assume one: an AVX-512 2-core
    VM's GEMM rates and bandwidth, and its parallel kernels starting in the typical 5 us (the profile's
    default). Why: the profile is measured once per process, and a pytest-xdist worker that measures
    the start-up time while its sibling compiles (Numba's threads asleep) gets ~40 us, which moves
    small layers to backends that start fewer kernels (measured: the layout tests of tests/graph then
    keep convolutions NCHW)."""
    from convengine.core import costmodel

    monkeypatch.setattr(costmodel, "_profile", costmodel.MachineProfile(
        gemm_flops_float32=2.8e11, gemm_flops_float64=1.4e11, bandwidth=1.5e10))


@pytest.fixture
def isolated_env(monkeypatch, tmp_path):
    """Never touch the user's tuning cache, nor pick up the caller's backend or plugin overrides."""
    monkeypatch.setenv("CONVENGINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(ENV_BACKEND, raising=False)
    monkeypatch.delenv("CONVENGINE_LOAD_PLUGINS", raising=False)


def make_plugin(plugin_name: str, *backends):
    """A throw-away plugin module registering ``backends`` through the real hook."""
    import types

    @ce.hookimpl
    def convengine_register_backends(register):
        for backend in backends:
            register(backend)

    plugin = types.ModuleType(plugin_name)
    plugin.convengine_register_backends = convengine_register_backends
    return plugin


# -- small ONNX models ------------------------------------------------------------------------

def onnx_model_bytes(nodes, inits: dict, input_chw: tuple, outputs=("y",), name: str = "model") -> bytes:
    """A serialised opset-17 model: input ``x`` of shape ``(N, *input_chw)``, float32 initialisers
    ``inits`` (name -> array), ``nodes`` built with ``onnx.helper``, the named ``outputs``."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_chw])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def onnx_runtime_outputs(model: bytes, x) -> list:
    """ONNX Runtime's outputs for input ``x`` (the independent reference of the fused steps' tests)."""
    import onnxruntime

    return onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def assert_matches_onnx_runtime(compiled, model: bytes, x, outputs=("y",), tol: float = 1e-6) -> None:
    """``compiled.run(x)`` equals ONNX Runtime's outputs on ``model`` (named ``outputs``), within ``tol``."""
    want = onnx_runtime_outputs(model, x)
    got = compiled.run(x)
    got = got if isinstance(got, dict) else {outputs[0]: got}
    for name, w in zip(outputs, want):
        np.testing.assert_allclose(got[name], w, rtol=tol, atol=tol)


def assert_matches_nchw_self(compiled, model: bytes, x, **graph_args):
    """``compiled.run(x)`` equals (1e-5) the same model compiled with every tensor NCHW (``blocked_layouts=False``,
    checked), twice in a row: the blocked-layout tests' second oracle beside ONNX Runtime. Returns the NCHW one."""
    from convengine.graph.executor import CompiledGraph

    plain = CompiledGraph(ce.load_onnx(model), blocked_layouts=False, **graph_args)
    assert all(s.layouts == ("NCHW", "NCHW") for s in plain.steps)
    for _ in range(2):  # (a second run reuses the buffers)
        got, want = compiled.run(x), plain.run(x)
        got, want = (got, want) if isinstance(got, dict) else ({"y": got}, {"y": want})
        assert got.keys() == want.keys()
        for name, value in got.items():
            np.testing.assert_allclose(value, want[name], rtol=1e-5, atol=1e-5)
    return plain


def draw_window(draw, kernel: int) -> dict:
    """A square ``kernel``'s stride, dilation and padding, and a plane size it fits (a hypothesis ``draw``):
    the blocked-layout tests' geometry (tests/core/test_layouts.py, tests/backends/test_grouped.py)."""
    from hypothesis import strategies as st

    stride = draw(st.sampled_from([1, 2]))
    dilation = draw(st.sampled_from([1, 1, 2])) if kernel > 1 else 1
    padding = draw(st.sampled_from([0, 1, 2])) if kernel > 1 else 0
    extent = dilation * (kernel - 1) + 1
    h = draw(st.integers(max(1, extent - 2 * padding), 12))
    w = draw(st.integers(max(1, extent - 2 * padding), 20))
    return dict(stride=stride, dilation=dilation, padding=padding, height=h, width=w)
