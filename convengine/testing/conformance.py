"""The conformance kit: the tests every backend, built-in or plugin, must pass.

Subclass :class:`BackendConformance` in your plugin's tests and set ``backend``; pytest
collects the inherited tests::

    from convengine.testing import BackendConformance
    from my_plugin import MyBackend

    class TestMyBackend(BackendConformance):
        backend = MyBackend()

The kit checks the backend's contract (attributes, ``availability``/``supports`` answers,
prepare/execute, output shape and dtype, inputs never modified, executors reusable), its
results against an independent float64 reference on the course's worked examples and on
seeded random problems, against PyTorch's recorded outputs in ONNX's Conv2d conformance
cases (when ``onnx`` is installed), through the engine like any user call, and prints a
short benchmark against the built-in backends. Problems the backend declines (``supports``
returns a reason) are skipped, but a backend must accept at least some of them.
"""

from __future__ import annotations

import json
import time
from typing import Optional

import numpy as np
import pytest

from ..core.contract import ERROR_BOUNDS, EXACT, LOSSY
from ..core.problem import ConvProblem
from .reference import conv2d_reference, relative_error

#: Normwise relative error accepted, per numerical class and dtype: a margin over the
#: class's documented ``ERROR_BOUNDS`` (rounding differs with summation order and size).
REL_TOLERANCE = {
    EXACT: {"float32": 1e-5, "float64": 1e-12},
    LOSSY: {"float32": 1e-3, "float64": 1e-10},
}
assert set(REL_TOLERANCE) == set(ERROR_BOUNDS), "every numerical class needs a test tolerance"

#: The course's worked examples: X, K, conv2d keyword arguments, expected output.
COURSE_X = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
COURSE_K = [[0, 1], [2, 3]]
COURSE_EXAMPLES = [
    ({}, [[19, 25], [37, 43]]),
    ({"padding": 1}, [[0, 3, 8, 4], [9, 19, 25, 10], [21, 37, 43, 16], [6, 7, 8, 0]]),
    ({"padding": 1, "stride": (3, 2)}, [[0, 8], [6, 8]]),
]


def tolerance(backend, dtype) -> float:
    """Normwise relative error allowed for ``backend`` on ``dtype`` data.

    The table entry for the backend's numerical class, or ten times its own declared
    ``error_bound`` when that is looser (e.g. a GPU backend using TF32).
    """
    dtype = np.dtype(dtype).name
    return max(REL_TOLERANCE[backend.numerical_class][dtype], 10 * float(backend.error_bound(dtype)))


def random_problems(count: int = 24, seed: int = 0, max_outputs: Optional[int] = None) -> list[dict]:
    """Seeded conv problems over batch, groups (incl. depthwise), kernels 1-7, stride, dilation, asymmetric padding.

    Each is ``dict(x_shape, w_shape, bias, stride, padding, dilation, groups)``; ``max_outputs``
    bounds the output size (for slow devices such as a CUDA simulator). Every third problem is a
    3x3 stride-1 convolution, the case specialised algorithms (Winograd) target.
    """
    rng = np.random.default_rng(seed)
    problems = []
    while len(problems) < count:
        groups = int(rng.choice([1, 1, 2, 3]))
        c_group, o_group = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        if rng.random() < 0.2:  # depthwise
            c_group, o_group = 1, int(rng.integers(1, 3))
            groups = int(rng.integers(2, 5))
        if len(problems) % 3 == 0:
            kh = kw = 3
            stride, dilation = (1, 1), (1, 1)
        else:
            kh, kw = (int(v) for v in rng.integers(1, 8, size=2))
            stride = tuple(int(v) for v in rng.integers(1, 4, size=2))
            dilation = tuple(int(v) for v in rng.integers(1, 3, size=2))
        padding = tuple(int(v) for v in rng.integers(0, 3, size=4))
        out_h, out_w = (int(v) for v in rng.integers(1, 9, size=2))
        # input size from the output size, so the effective kernel always fits
        h = (out_h - 1) * stride[0] + dilation[0] * (kh - 1) + 1 - padding[0] - padding[1] + int(rng.integers(0, stride[0]))
        w = (out_w - 1) * stride[1] + dilation[1] * (kw - 1) + 1 - padding[2] - padding[3] + int(rng.integers(0, stride[1]))
        if h < 1 or w < 1:
            continue
        problem = dict(x_shape=(int(rng.integers(1, 3)), c_group * groups, h, w), w_shape=(o_group * groups, c_group, kh, kw),
                       bias=bool(rng.random() < 0.5), stride=stride, padding=padding, dilation=dilation, groups=groups)
        n_out = problem["x_shape"][0] * problem["w_shape"][0] * out_h * out_w
        if max_outputs is None or n_out <= max_outputs:
            problems.append(problem)
    return problems


def _arrays(spec: dict, dtype: str, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec["x_shape"]).astype(dtype)
    w = rng.standard_normal(spec["w_shape"]).astype(dtype)
    b = rng.standard_normal(spec["w_shape"][0]).astype(dtype) if spec["bias"] else None
    return x, w, b


def _problem(spec: dict, dtype: str) -> ConvProblem:
    return ConvProblem.from_shapes(spec["x_shape"], spec["w_shape"], bias=spec["bias"], stride=spec["stride"],
                                   padding=spec["padding"], dilation=spec["dilation"], groups=spec["groups"], dtype=dtype)


def _is_simulator(backend) -> bool:
    if backend.device != "cuda":
        return False
    try:
        import numba

        return bool(numba.config.ENABLE_CUDASIM)
    except ImportError:
        return False


class BackendConformance:
    """Inherit in a ``Test...`` class and set ``backend`` to an instance of your backend."""

    backend = None
    #: Random problems checked per dtype; fewer on simulators.
    problem_count = 24

    # -- helpers ------------------------------------------------------------------------------
    @pytest.fixture(autouse=True)
    def _require_available(self):
        if self.backend is None:
            pytest.fail(f"{type(self).__name__} must set `backend = YourBackend()`")
        reason = self.backend.availability()
        if reason is not None:
            pytest.skip(f"backend {self.backend.name!r} is not available here: {reason}")

    def _problems(self) -> list[dict]:
        if _is_simulator(self.backend):
            return random_problems(max(4, self.problem_count // 4), max_outputs=64)
        return random_problems(self.problem_count)

    def run(self, x, w, b=None, **params) -> np.ndarray:
        """Prepare and execute the backend directly, skipping the test if it declines the problem."""
        problem = ConvProblem.from_shapes(x.shape, w.shape, bias=b is not None, dtype=x.dtype, **params)
        reason = self.backend.supports(problem)
        if reason:
            pytest.skip(f"{self.backend.name} declines {problem}: {reason}")
        return self.backend.prepare(problem, w, b)(x)

    # -- the contract -------------------------------------------------------------------------
    def test_declares_its_capabilities(self):
        b = self.backend
        assert isinstance(b.name, str) and b.name and b.name == b.name.strip(), "name: a non-empty string"
        assert b.device in ("cpu", "cuda"), f"device must be 'cpu' or 'cuda', got {b.device!r}"
        assert b.numerical_class in (EXACT, LOSSY), f"numerical_class must be EXACT or LOSSY, got {b.numerical_class!r}"
        for dtype in ("float32", "float64"):
            bound = b.error_bound(dtype)
            assert isinstance(bound, float) and 0 < bound < 1, f"error_bound({dtype}) = {bound!r}"
        fingerprint = b.fingerprint()
        assert isinstance(fingerprint, dict) and fingerprint, "fingerprint() must be a non-empty dict"
        json.dumps(fingerprint)  # it becomes part of a JSON cache key

    def test_supports_answers_none_or_a_reason(self):
        answers = [self.backend.supports(_problem(spec, dtype)) for spec in self._problems()
                   for dtype in ("float32", "float64")]
        for answer in answers:
            assert answer is None or (isinstance(answer, str) and answer.strip()), (
                f"supports() must return None or a non-empty reason, got {answer!r}")
        assert any(a is None for a in answers), "the backend declined every generated problem"

    def _first_supported(self, dtype: str) -> tuple[dict, ConvProblem]:
        for spec in self._problems():
            problem = _problem(spec, dtype)
            if not self.backend.supports(problem):
                return spec, problem
        pytest.fail(f"the backend declined every generated {dtype} problem")

    def test_output_is_a_new_array_of_the_problem_shape_and_dtype(self):
        for dtype in ("float32", "float64"):
            spec, problem = self._first_supported(dtype)
            x, w, b = _arrays(spec, dtype, 0)
            y = self.backend.prepare(problem, w, b)(x)
            assert isinstance(y, np.ndarray), f"execute returned {type(y).__name__}"
            assert y.shape == problem.output_shape and y.dtype == np.dtype(dtype), (y.shape, y.dtype)
            assert not np.shares_memory(y, x) and not np.shares_memory(y, w)

    def test_never_modifies_its_inputs(self):
        for spec in self._problems()[:6]:
            x, w, b = _arrays(spec, "float32", 1)
            x.flags.writeable = w.flags.writeable = False
            copies = [a.copy() for a in (x, w, b) if a is not None]
            if self.backend.supports(_problem(spec, "float32")):
                continue
            self.backend.prepare(_problem(spec, "float32"), w, b)(x)
            for original, copy in zip([a for a in (x, w, b) if a is not None], copies):
                np.testing.assert_array_equal(original, copy)

    def test_prepared_executor_is_reusable(self):
        """execute() keeps no state between calls: two inputs, two correct answers, in either order."""
        spec, problem = self._first_supported("float64")
        _, w, b = _arrays(spec, "float64", 0)
        execute = self.backend.prepare(problem, w, b)
        inputs = [_arrays(spec, "float64", seed)[0] for seed in (10, 11)]
        first = [execute(x) for x in inputs]
        second = [execute(x) for x in reversed(inputs)][::-1]
        for x, y1, y2 in zip(inputs, first, second):
            ref = conv2d_reference(x, w, b, problem.stride, problem.padding, problem.dilation, problem.groups)
            assert relative_error(y1, ref) <= tolerance(self.backend, "float64")
            np.testing.assert_array_equal(y1, y2)

    # -- correctness ----------------------------------------------------------------------------
    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    @pytest.mark.parametrize("example", range(len(COURSE_EXAMPLES)))
    def test_course_example(self, example, dtype):
        params, expected = COURSE_EXAMPLES[example]
        x = np.array(COURSE_X, dtype).reshape(1, 1, 3, 3)
        k = np.array(COURSE_K, dtype).reshape(1, 1, 2, 2)
        y = self.run(x, k, **params)[0, 0]
        if self.backend.numerical_class == EXACT:
            np.testing.assert_array_equal(y, np.array(expected, dtype))
        else:
            np.testing.assert_allclose(y, expected, atol=1e-4 if dtype == "float32" else 1e-9)

    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    def test_matches_float64_reference_on_random_problems(self, dtype):
        checked = 0
        for i, spec in enumerate(self._problems()):
            problem = _problem(spec, dtype)
            if self.backend.supports(problem):
                continue
            x, w, b = _arrays(spec, dtype, i)
            y = self.backend.prepare(problem, w, b)(x)
            ref = conv2d_reference(x, w, b, problem.stride, problem.padding, problem.dilation, problem.groups)
            error = relative_error(y, ref)
            assert error <= tolerance(self.backend, dtype), f"{problem}: relative error {error:.2e}"
            checked += 1
        assert checked, "no generated problem was supported"

    def test_matches_onnx_conformance_cases(self):
        pytest.importorskip("onnx")
        from .onnx_cases import case_dirs, load_case

        dirs = case_dirs()
        assert dirs, "onnx is installed but ships no test_Conv2d* cases"
        tol = max(1e-4, tolerance(self.backend, "float32") * 10)
        for case_dir in dirs:
            kwargs, w, b, sets = load_case(case_dir)
            for x, expected in sets:
                problem = ConvProblem.from_shapes(x.shape, w.shape, bias=b is not None, dtype=x.dtype, **kwargs)
                if self.backend.supports(problem) or (_is_simulator(self.backend) and expected.size > 2000):
                    continue
                y = self.backend.prepare(problem, w, b)(x)
                np.testing.assert_allclose(y, expected, rtol=tol, atol=tol, err_msg=case_dir)

    def test_runs_through_the_engine(self):
        """Registered through the hook like any plugin, the engine runs it by name and returns its result."""
        from ..core.engine import Engine
        from ..core.hookspecs import hookimpl
        from ..core.registry import Registry

        backend = self.backend
        plugin = type("ConformancePlugin", (), {
            "convengine_register_backends": staticmethod(hookimpl(lambda register: register(backend)))})()
        registry = Registry.load(extra_plugins=[plugin], load_entry_points=False, builtins=False)
        engine = Engine(policy=backend.name, registry=registry)
        spec, _ = self._first_supported("float32")
        x, w, b = _arrays(spec, "float32", 7)
        kwargs = {k: spec[k] for k in ("stride", "padding", "dilation", "groups")}
        y = engine.conv2d(x, w, b, **kwargs)
        np.testing.assert_array_equal(y, self.backend.prepare(_problem(spec, "float32"), w, b)(x))

    # -- epilogues ------------------------------------------------------------------------------
    @pytest.mark.parametrize("residual", [False, True])
    @pytest.mark.parametrize("activation", [None, "relu"])
    def test_epilogue_matches_reference(self, residual, activation):
        """A backend that says it fuses an epilogue computes ``act(conv + bias + residual)``,
        leaving the residual untouched; one that declines gets a reason and the engine's path."""
        from ..core.epilogue import Epilogue

        epilogue = Epilogue(residual=residual, activation=activation)
        declines = getattr(self.backend, "supports_epilogue", None)
        checked = 0
        for i, spec in enumerate(self._problems()[:8]):
            problem = _problem(spec, "float64")
            if self.backend.supports(problem):
                continue
            reason = declines(problem, epilogue) if declines else "no supports_epilogue"
            if reason is not None:
                assert isinstance(reason, str) and reason.strip(), f"supports_epilogue() returned {reason!r}"
                continue
            x, w, b = _arrays(spec, "float64", 20 + i)
            r = np.random.default_rng(i).standard_normal(problem.output_shape) if residual else None
            ref = conv2d_reference(x, w, b, problem.stride, problem.padding, problem.dilation, problem.groups)
            if residual:
                ref = ref + r
                r.flags.writeable = False
            if activation == "relu":
                ref = np.maximum(ref, 0)
            execute = self.backend.prepare(problem, w, b, epilogue=epilogue)
            y = execute(x, r) if residual else execute(x)
            assert y.shape == problem.output_shape and y.dtype == np.float64, (y.shape, y.dtype)
            assert not (residual and np.shares_memory(y, r)), "the output must be a new array, not the residual"
            error = relative_error(y, ref)
            assert error <= tolerance(self.backend, "float64"), f"{problem}, epilogue {epilogue}: error {error:.2e}"
            if residual and getattr(self.backend, "residual_in_place", False):
                given_up = r.copy()  # a residual the caller gave up: the output goes over it
                y = execute(x, given_up, in_place=True)
                assert y is given_up or np.shares_memory(y, given_up), "in_place=True must write over the residual"
                error = relative_error(y, ref)
                assert error <= tolerance(self.backend, "float64"), f"{problem}, in place: error {error:.2e}"
            checked += 1
        if declines is None or checked == 0:
            pytest.skip(f"{self.backend.name} does not fuse the epilogue {epilogue} (the engine applies it)")

    # -- speed (reported, never asserted) ---------------------------------------------------------
    def test_benchmark_against_builtins(self, capsys):
        """Median time per call next to the built-in CPU backends on a ResNet-like layer; printed with -s."""
        if _is_simulator(self.backend):
            pytest.skip("no benchmark on a simulator")
        table = benchmark_against_builtins(self.backend)
        with capsys.disabled():
            print("\n" + table)


def benchmark_against_builtins(backend, x_shape=(1, 64, 28, 28), w_shape=(64, 64, 3, 3), padding=1,
                               rounds: int = 5) -> str:
    """A small side-by-side timing table of ``backend`` and the available built-in backends."""
    from ..core.registry import BUILTIN_PLUGINS, default_registry

    problem = ConvProblem.from_shapes(x_shape, w_shape, padding=padding)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype("float32")
    w = rng.standard_normal(w_shape).astype("float32")
    contenders = {backend.name: backend}
    for entry in default_registry().entries():
        if entry.plugin in BUILTIN_PLUGINS and entry.available and entry.attribute("device") == "cpu":
            contenders.setdefault(entry.name, entry.backend)
    executors = {name: b.prepare(problem, w, None) for name, b in contenders.items() if not b.supports(problem)}
    times: dict[str, list[float]] = {name: [] for name in executors}
    for execute in executors.values():
        execute(x)  # warm-up (JIT compilation)
    for _ in range(rounds):
        for name, execute in executors.items():
            start = time.perf_counter()
            execute(x)
            times[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    ours = medians.get(backend.name)
    lines = [f"{problem}: median of {rounds} interleaved rounds"]
    for name, seconds in sorted(medians.items(), key=lambda kv: kv[1]):
        ratio = f"{seconds / ours:.2f}x" if ours else "-"
        lines.append(f"  {name:<12} {seconds * 1e3:9.3f} ms  {ratio} of {backend.name}")
    return "\n".join(lines)
