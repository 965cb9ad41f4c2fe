"""The conformance kit: the tests every backend, built-in or plugin, must pass.

Subclass :class:`BackendConformance` in your plugin's tests and set ``backend``; pytest
collects the inherited tests::

    from convengine.testing import BackendConformance
    from my_plugin import MyBackend

    class TestMyBackend(BackendConformance):
        backend = MyBackend()

The kit checks the backend's contract (attributes, ``availability``/``supports`` answers,
prepare/execute, output shape and dtype, inputs never modified, executors reusable), its
results against an independent float64 reference on worked examples with hand-computed
answers and on the problems of :func:`problem_spread` (plain, strided, dilated, grouped,
depthwise, 1x1 and large-kernel convolutions, plus seeded random ones, each in float32 and
float64), against PyTorch's recorded outputs in ONNX's Conv2d conformance cases (when
``onnx`` is installed), NaN and Inf propagating as in a direct convolution, epilogues, writing
into a channel slice of a larger buffer where ``supports_output_slice`` says it can, a run
through the engine like any user call, and prints a short benchmark against the built-in backends.

Problems the backend declines (``supports`` returns a reason) are not run, but every test
fails when it checked no case: a backend that declines everything the kit tries has not
been tested, and must not pass. Hooks for the author, set in the subclass:

* ``extra_problems``: your own :class:`~convengine.ConvProblem` instances (shapes your users
  run, or the sub-space your backend is for), checked by every test like the spread's, each
  in float32 and float64 whatever its own dtype;
* ``problem_count``: how many seeded random problems join the spread (default 24; 0 for none);
* a test that cannot apply to your backend is switched off by name, visibly, in your
  subclass: ``test_worked_examples = None``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence

import numpy as np
import pytest

from ..core.arrays import problem_data
from ..core.contract import ERROR_BOUNDS, EXACT, LOSSY, OutputSlice
from ..core.problem import ConvProblem
from ..runtime.tables import format_table
from ..runtime.timing import interleaved
from .reference import conv2d_reference, relative_error

#: Normwise relative error accepted, per numerical class and dtype: a margin over the
#: class's documented ``ERROR_BOUNDS`` (rounding differs with summation order and size).
REL_TOLERANCE = {
    EXACT: {"float32": 1e-5, "float64": 1e-12},
    LOSSY: {"float32": 1e-3, "float64": 1e-10},
}
assert set(REL_TOLERANCE) == set(ERROR_BOUNDS), "every numerical class needs a test tolerance"

#: Worked examples with answers computed by hand: (what it shows, X (C, H, W), K (O, C, kH, kW),
#: conv2d keyword arguments, expected output (O, H_out, W_out)). The first three are the course's.
_COURSE_X = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
_COURSE_K = [[0, 1], [2, 3]]
_X4 = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
WORKED_EXAMPLES = [
    ("course, valid", [_COURSE_X], [[_COURSE_K]], {}, [[[19, 25], [37, 43]]]),
    ("course, padding 1", [_COURSE_X], [[_COURSE_K]], {"padding": 1},
     [[[0, 3, 8, 4], [9, 19, 25, 10], [21, 37, 43, 16], [6, 7, 8, 0]]]),
    ("course, padding 1, stride (3, 2)", [_COURSE_X], [[_COURSE_K]], {"padding": 1, "stride": (3, 2)}, [[[0, 8], [6, 8]]]),
    # y = X[i, j] + 2 X[i+2, j+2]: a flipped kernel (convolution, not correlation) gives other numbers
    ("3x3, corners only", [_X4], [[[[1, 0, 0], [0, 0, 0], [0, 0, 2]]]], {}, [[[20, 23], [32, 35]]]),
    ("3x3 box sum, padding 1", [_X4], [[[[1, 1, 1], [1, 1, 1], [1, 1, 1]]]], {"padding": 1},
     [[[10, 18, 24, 18], [27, 45, 54, 39], [51, 81, 90, 63], [42, 66, 72, 50]]]),
    ("1x1, stride 2", [_COURSE_X], [[[[2]]]], {"stride": 2}, [[[0, 4], [12, 16]]]),
    # two input channels summed: the course's result plus the 2x2 sum of the ones channel
    ("two channels", [_COURSE_X, [[1] * 3] * 3], [[_COURSE_K, [[1, 1], [1, 1]]]], {}, [[[23, 29], [41, 47]]]),
]


def tolerance(backend, dtype) -> float:
    """Normwise relative error allowed for ``backend`` on ``dtype`` data.

    The table entry for the backend's numerical class, or ten times its own declared
    ``error_bound`` when that is looser (e.g. a GPU backend using TF32).
    """
    dtype = np.dtype(dtype).name
    return max(REL_TOLERANCE[backend.numerical_class][dtype], 10 * float(backend.error_bound(dtype)))


def _spread_problem(x_shape, w_shape, **params) -> ConvProblem:
    return ConvProblem.from_shapes(x_shape, w_shape, **params)


#: The spread every backend is checked on: a few problems in each sub-space a backend may
#: specialise in, small enough for a simulator. A backend supporting only one of them (plain
#: convolutions, say, or depthwise 3x3) still finds several problems it accepts.
SPREAD = [
    ("plain", _spread_problem((1, 3, 8, 8), (4, 3, 3, 3), padding=1, bias=True)),
    ("plain", _spread_problem((2, 2, 7, 9), (3, 2, 3, 3))),
    ("plain", _spread_problem((1, 4, 6, 5), (2, 4, 2, 2), padding=(1, 0, 1, 0))),  # even kernel, asymmetric padding
    ("plain", _spread_problem((1, 2, 9, 7), (3, 2, 5, 3), padding=(2, 1, 0, 2), bias=True)),  # non-square kernel
    ("plain", _spread_problem((3, 1, 5, 5), (1, 1, 3, 3), padding="same")),  # batch 3, one channel
    ("plain", _spread_problem((1, 3, 3, 3), (2, 3, 3, 3))),  # kernel as large as the input: a 1x1 output
    ("1x1", _spread_problem((1, 8, 5, 5), (6, 8, 1, 1), bias=True)),
    ("1x1", _spread_problem((2, 4, 7, 6), (5, 4, 1, 1), stride=2)),
    ("1x1", _spread_problem((1, 3, 4, 4), (2, 3, 1, 1), padding=1)),
    ("strided", _spread_problem((1, 3, 9, 9), (4, 3, 3, 3), stride=2, padding=1, bias=True)),
    ("strided", _spread_problem((2, 2, 8, 11), (3, 2, 3, 3), stride=(2, 3))),
    ("strided", _spread_problem((1, 3, 15, 15), (4, 3, 7, 7), stride=2, padding=3)),  # a small ResNet stem
    ("dilated", _spread_problem((1, 2, 9, 9), (3, 2, 3, 3), dilation=2, padding=2)),
    ("dilated", _spread_problem((1, 3, 10, 8), (2, 3, 3, 2), dilation=(2, 1), bias=True)),
    ("grouped", _spread_problem((1, 4, 6, 6), (6, 2, 3, 3), groups=2, padding=1, bias=True)),
    ("grouped", _spread_problem((2, 6, 5, 5), (3, 2, 1, 1), groups=3)),
    ("depthwise", _spread_problem((1, 4, 7, 7), (4, 1, 3, 3), groups=4, padding=1)),
    ("depthwise", _spread_problem((2, 3, 8, 8), (6, 1, 3, 3), groups=3, stride=2, padding=1, bias=True)),  # multiplier 2
    ("large kernel", _spread_problem((1, 2, 12, 12), (3, 2, 7, 7), padding=3)),
    ("large kernel", _spread_problem((1, 1, 16, 14), (2, 1, 11, 11))),
    ("large kernel", _spread_problem((1, 2, 10, 10), (2, 2, 9, 5), padding=(4, 4, 2, 2), bias=True)),
    ("mixed", _spread_problem((2, 4, 11, 10), (4, 2, 3, 3), stride=2, dilation=2, groups=2, padding=(1, 2, 0, 1))),
]


def problem_spread(random_count: int = 24, extra: Sequence[ConvProblem] = (), dtype: str = "float32",
                   max_outputs: Optional[int] = None) -> list[tuple[str, ConvProblem]]:
    """``(kind, problem)`` pairs the kit checks: :data:`SPREAD`, ``random_count`` seeded random problems
    (kind ``"random"``), then ``extra`` (kind ``"yours"``), all in ``dtype``.

    ``max_outputs`` drops problems with more output elements (for slow devices such as a CUDA
    simulator); an author's own problems are always kept.
    """
    cases = list(SPREAD) + [("random", _problem(spec, "float32")) for spec in random_problems(random_count)]
    if max_outputs is not None:
        cases = [(kind, p) for kind, p in cases if np.prod(p.output_shape) <= max_outputs]
    for problem in extra:
        if not isinstance(problem, ConvProblem):
            raise TypeError(f"extra_problems must hold convengine.ConvProblem instances, got {problem!r}")
        cases.append(("yours", problem))
    return [(kind, dataclasses.replace(p, dtype=dtype)) for kind, p in cases]


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


def _problem(spec: dict, dtype: str) -> ConvProblem:
    return ConvProblem.from_shapes(spec["x_shape"], spec["w_shape"], bias=spec["bias"], stride=spec["stride"],
                                   padding=spec["padding"], dilation=spec["dilation"], groups=spec["groups"], dtype=dtype)


def _reference(x, w, b, problem: ConvProblem) -> np.ndarray:
    return conv2d_reference(x, w, b, problem.stride, problem.padding, problem.dilation, problem.groups)


def _is_simulator(backend) -> bool:
    if backend.device != "cuda":
        return False
    try:
        import numba

        return bool(numba.config.ENABLE_CUDASIM)
    except ImportError:
        return False


DTYPES = ("float32", "float64")

#: On a simulator (each output is a Python-level thread there, ~2 ms each): outputs per problem
#: kept, and problems per test where a test samples one problem per kind.
SIMULATOR_MAX_OUTPUTS = 256
SIMULATOR_SAMPLE = 4


class BackendConformance:
    """Inherit in a ``Test...`` class and set ``backend`` to an instance of your backend.

    Optional class attributes: ``extra_problems`` (your own ``ConvProblem`` instances, checked
    by every test in both dtypes) and ``problem_count`` (seeded random problems added to the
    spread). See the module docstring.
    """

    #: An instance of the backend under test (required).
    backend = None
    #: Your own problems: checked like the spread's, each in float32 and float64.
    extra_problems: Sequence[ConvProblem] = ()
    #: Seeded random problems added to the spread; fewer on simulators.
    problem_count = 24

    # -- helpers ------------------------------------------------------------------------------
    @pytest.fixture(autouse=True)
    def _require_available(self):
        if self.backend is None:
            pytest.fail(f"{type(self).__name__} must set `backend = YourBackend()`")
        reason = self.backend.availability()
        if reason is not None:
            pytest.skip(f"backend {self.backend.name!r} is not available here: {reason}")

    def cases(self, dtype: str) -> list[tuple[str, ConvProblem]]:
        """Every ``(kind, problem)`` the kit tries in ``dtype``, declined ones included.

        On a simulator: the first problem of each kind that is small enough, and a few random ones.
        """
        if not _is_simulator(self.backend):
            return problem_spread(self.problem_count, self.extra_problems, dtype)
        kept, kinds = [], set()
        for kind, problem in problem_spread(min(4, self.problem_count), self.extra_problems, dtype, SIMULATOR_MAX_OUTPUTS):
            if kind in ("random", "yours") or kind not in kinds:
                kept.append((kind, problem))
                kinds.add(kind)
        return kept

    def supported_cases(self, dtype: Optional[str] = None, one_per_kind: bool = False) -> list[tuple[str, ConvProblem]]:
        """The cases ``supports`` accepts, in ``dtype`` (``None``: float32 then float64); with
        ``one_per_kind``, the first of each kind per dtype (and all of yours).

        Tests run over both dtypes and fail only when neither gave a case: a float32-only backend
        (its ``supports`` declining float64) is tested on float32.
        """
        chosen = []
        for each in (dtype,) if dtype else DTYPES:
            kinds: set[str] = set()
            picked = []
            for kind, problem in self.cases(each):
                if self.backend.supports(problem) or (one_per_kind and kind in kinds and kind != "yours"):
                    continue
                kinds.add(kind)
                picked.append((kind, problem))
            chosen += picked[:SIMULATOR_SAMPLE] if one_per_kind and _is_simulator(self.backend) else picked
        return chosen

    def checked_nothing(self, what: str) -> None:
        """Fail: a test that ran no case has tested nothing. Says what the backend declined, and why."""
        declines: dict[str, str] = {}
        for kind, problem in [case for dtype in DTYPES for case in self.cases(dtype)]:
            reason = self.backend.supports(problem)
            if reason:
                declines.setdefault(f"{kind} {problem.dtype}", str(reason))
        detail = "; ".join(f"{kind}: {reason}" for kind, reason in declines.items())
        pytest.fail(f"checked no case: {self.backend.name!r} declined every {what}. Its reasons: {detail or 'none'}. "
                    "Add problems it supports to `extra_problems` in your test class (or switch a test that "
                    "cannot apply off by name, e.g. `test_worked_examples = None`).")

    def run(self, x, w, b=None, **params) -> np.ndarray:
        """Prepare and execute the backend directly, skipping the test if it declines the problem."""
        problem = ConvProblem.from_shapes(x.shape, w.shape, bias=b is not None, dtype=x.dtype, **params)
        reason = self.backend.supports(problem)
        if reason:
            pytest.skip(f"{self.backend.name} declines {problem}: {reason}")
        return self.backend.prepare(problem, w, b)(x)

    def _private_engine(self, **engine_args):
        """An engine whose registry holds only this backend, registered through the hook like any plugin."""
        from ..core.engine import Engine
        from ..core.hookspecs import hookimpl
        from ..core.registry import Registry

        backend = self.backend
        plugin = type("ConformancePlugin", (), {
            "convengine_register_backends": staticmethod(hookimpl(lambda register: register(backend)))})()
        registry = Registry.load(extra_plugins=[plugin], load_entry_points=False, builtins=False)
        return Engine(policy=backend.name, registry=registry, tuning_cache=False, **engine_args)

    # -- the contract -------------------------------------------------------------------------
    def test_declares_its_capabilities(self):
        """``name``, ``device``, ``numerical_class``, ``error_bound`` and a JSON-serialisable ``fingerprint``."""
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
        """``supports`` returns ``None`` or a non-empty reason for every generated problem, and accepts some."""
        answers = [self.backend.supports(problem) for dtype in DTYPES for _, problem in self.cases(dtype)]
        for answer in answers:
            assert answer is None or (isinstance(answer, str) and answer.strip()), (
                f"supports() must return None or a non-empty reason, got {answer!r}")
        if all(answers):
            self.checked_nothing("problem the kit generated")

    def test_output_is_a_new_array_of_the_problem_shape_and_dtype(self):
        """``execute`` returns a new ndarray of ``problem.output_shape`` and dtype, sharing no memory with an input."""
        cases = self.supported_cases(one_per_kind=True)
        for i, (kind, problem) in enumerate(cases):
            x, w, b = problem_data(problem, i)
            y = self.backend.prepare(problem, w, b)(x)
            assert isinstance(y, np.ndarray), f"{kind} {problem}: execute returned {type(y).__name__}"
            assert y.shape == problem.output_shape and y.dtype == np.dtype(problem.dtype), (kind, str(problem), y.shape, y.dtype)
            assert not np.shares_memory(y, x) and not np.shares_memory(y, w), f"{kind} {problem}: output aliases an input"
        if not cases:
            self.checked_nothing("problem")

    def test_never_modifies_its_inputs(self):
        """Input, weight and bias are unchanged after ``prepare`` and ``execute``."""
        cases = self.supported_cases(one_per_kind=True)
        for i, (kind, problem) in enumerate(cases):
            x, w, b = problem_data(problem, i)
            arrays = [a for a in (x, w, b) if a is not None]
            copies = [a.copy() for a in arrays]
            self.backend.prepare(problem, w, b)(x)
            for original, copy in zip(arrays, copies):
                np.testing.assert_array_equal(original, copy, err_msg=f"{kind} {problem}: an input was modified")
        if not cases:
            self.checked_nothing("problem")

    def test_prepared_executor_is_reusable(self):
        """execute() keeps no state between calls: two inputs, two correct answers, in either order."""
        cases = self.supported_cases("float64") or self.supported_cases("float32")
        if not cases:
            self.checked_nothing("problem")
        _, problem = cases[0]
        _, w, b = problem_data(problem, 0)
        execute = self.backend.prepare(problem, w, b)
        inputs = [problem_data(problem, seed)[0] for seed in (10, 11)]
        first = [execute(x) for x in inputs]
        second = [execute(x) for x in reversed(inputs)][::-1]
        for x, y1, y2 in zip(inputs, first, second):
            assert relative_error(y1, _reference(x, w, b, problem)) <= tolerance(self.backend, problem.dtype)
            np.testing.assert_array_equal(y1, y2)

    def test_weight_views_are_read_not_written(self):
        """A backend that sets ``weight_views`` is given weights as strided views (the axes reversed in
        memory; every other filter of a larger array): the same answers, and the arrays viewed are left
        as they were. The others skip: the engine gives them C-contiguous copies."""
        if getattr(self.backend, "weight_views", False) is not True:
            pytest.skip(f"{self.backend.name} does not set weight_views: the engine gives it C-contiguous weights")
        cases = self.supported_cases(one_per_kind=True)
        if not cases:
            self.checked_nothing("problem")
        for i, (kind, problem) in enumerate(cases):
            x, w, b = problem_data(problem, 60 + i)
            reversed_axes = np.asfortranarray(w)
            every_other = np.zeros((2 * w.shape[0],) + w.shape[1:], w.dtype)
            every_other[::2] = w
            for view in (reversed_axes, every_other[::2]):
                held = (reversed_axes.copy(), every_other.copy())
                y = self.backend.prepare(problem, view, b)(x)
                error = relative_error(y, _reference(x, w, b, problem))
                where = f"{kind} {problem}, weight strides {view.strides}"
                assert error <= tolerance(self.backend, problem.dtype), f"{where}: error {error:.2e}"
                np.testing.assert_array_equal(reversed_axes, held[0], err_msg=f"{kind} {problem}: a weight view was written")
                np.testing.assert_array_equal(every_other, held[1], err_msg=f"{kind} {problem}: a weight view was written")

    # -- correctness ----------------------------------------------------------------------------
    def test_worked_examples(self):
        """Answers computed by hand (the course's examples among them): exact for an exact backend."""
        checked = 0
        for dtype in DTYPES:
            for what, x, k, params, expected in WORKED_EXAMPLES:
                x, k = np.array(x, dtype)[None], np.array(k, dtype)
                problem = ConvProblem.from_shapes(x.shape, k.shape, dtype=dtype, **params)
                if self.backend.supports(problem):
                    continue
                y = self.backend.prepare(problem, k, None)(x)[0]
                if self.backend.numerical_class == EXACT:
                    np.testing.assert_array_equal(y, np.array(expected, dtype), err_msg=f"{what}, {dtype}")
                else:
                    np.testing.assert_allclose(y, expected, atol=1e-4 if dtype == "float32" else 1e-9, err_msg=f"{what}, {dtype}")
                checked += 1
        if not checked:
            self.checked_nothing(f"worked example ({', '.join(w for w, *_ in WORKED_EXAMPLES)})")

    def test_matches_float64_reference(self):
        """Every supported problem of the spread (and yours), in both dtypes, within :func:`tolerance` of the
        float64 reference (normwise relative error)."""
        cases = self.supported_cases()
        for i, (kind, problem) in enumerate(cases):
            x, w, b = problem_data(problem, i)
            y = self.backend.prepare(problem, w, b)(x)
            assert y.shape == problem.output_shape and y.dtype == np.dtype(problem.dtype), (kind, str(problem), y.shape, y.dtype)
            error = relative_error(y, _reference(x, w, b, problem))
            assert error <= tolerance(self.backend, problem.dtype), f"{kind} {problem}: relative error {error:.2e}"
        if not cases:
            self.checked_nothing("problem")

    def test_matches_onnx_conformance_cases(self):
        """ONNX's Conv2d conformance cases (PyTorch's recorded outputs), when ``onnx`` is installed."""
        pytest.importorskip("onnx")
        from .onnx_cases import case_dirs, load_case

        dirs = case_dirs()
        assert dirs, "onnx is installed but ships no test_Conv2d* cases"
        tol = max(1e-4, tolerance(self.backend, "float32") * 10)
        checked = 0
        for case_dir in dirs:
            kwargs, w, b, sets = load_case(case_dir)
            for x, expected in sets:
                problem = ConvProblem.from_shapes(x.shape, w.shape, bias=b is not None, dtype=x.dtype, **kwargs)
                if self.backend.supports(problem) or (_is_simulator(self.backend) and expected.size > 2000):
                    continue
                y = self.backend.prepare(problem, w, b)(x)
                np.testing.assert_allclose(y, expected, rtol=tol, atol=tol, err_msg=case_dir)
                checked += 1
        if not checked:
            self.checked_nothing(f"ONNX Conv2d conformance case ({len(dirs)} cases)")

    def test_nan_and_inf_propagate_like_a_direct_convolution(self):
        """A NaN, a +Inf and a -Inf in the input reach exactly the outputs whose window holds them, as in
        torch: a transform (FFT, Winograd) must not spread them to other outputs, nor turn Inf into NaN."""
        cases = self.supported_cases(one_per_kind=True)
        for i, (kind, problem) in enumerate(cases):
            x, w, b = problem_data(problem, 30 + i)
            flat = x.reshape(-1)
            spots = np.random.default_rng(i).choice(flat.size, size=min(3, flat.size), replace=False)
            flat[spots] = [np.nan, np.inf, -np.inf][:len(spots)]
            with np.errstate(invalid="ignore", over="ignore"):  # Inf - Inf and Inf * 0 are the point here
                y = self.backend.prepare(problem, w, b)(x)
                ref = _reference(x, w, b, problem)
            for what, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
                got, want = test(y), test(ref)
                assert np.array_equal(got, want), (
                    f"{kind} {problem}: {what} at {int(got.sum())} outputs, a direct convolution has it at {int(want.sum())} "
                    f"(first difference at index {tuple(int(v) for v in np.argwhere(got != want)[0])})")
            finite = np.isfinite(ref)
            if finite.any():
                error = relative_error(y[finite], ref[finite])
                assert error <= tolerance(self.backend, problem.dtype), f"{kind} {problem}: finite outputs' error {error:.2e}"
        if not cases:
            self.checked_nothing("problem")

    def test_runs_through_the_engine(self):
        """Registered through the hook like any plugin, the engine runs it by name and returns its result."""
        cases = self.supported_cases()
        if not cases:
            self.checked_nothing("problem")
        _, problem = cases[0]
        x, w, b = problem_data(problem, 7)
        y = self._private_engine().conv2d(x, w, b, stride=problem.stride, padding=problem.padding,
                                          dilation=problem.dilation, groups=problem.groups)
        np.testing.assert_array_equal(y, self.backend.prepare(problem, w, b)(x))

    # -- epilogues ------------------------------------------------------------------------------
    @pytest.mark.parametrize("residual", [False, True])
    @pytest.mark.parametrize("activation", [None, "relu"])
    def test_epilogue_matches_reference(self, residual, activation):
        """``act(conv + bias + residual)``, the residual untouched: computed by the backend when its
        ``supports_epilogue`` accepts, else by the engine right after it (a decline needs a reason)."""
        from ..core.epilogue import Epilogue

        epilogue = Epilogue(residual=residual, activation=activation)
        declines = getattr(self.backend, "supports_epilogue", None)
        engine = self._private_engine()
        cases = self.supported_cases(one_per_kind=True)
        for i, (kind, problem) in enumerate(cases):
            reason = declines(problem, epilogue) if declines else "no supports_epilogue"
            x, w, b = problem_data(problem, 20 + i)
            r = np.random.default_rng(i).standard_normal(problem.output_shape).astype(problem.dtype) if residual else None
            ref = _reference(x, w, b, problem)
            if residual:
                ref = ref + r
                r.flags.writeable = False
            if activation == "relu":
                ref = np.maximum(ref, 0)
            where = f"{kind} {problem}, epilogue {epilogue}"
            tol = tolerance(self.backend, problem.dtype)
            if reason is not None:
                assert isinstance(reason, str) and reason.strip(), f"supports_epilogue() returned {reason!r}"
                prepared = engine.prepare(w, b, input_shape=problem.input_shape, stride=problem.stride,
                                          padding=problem.padding, dilation=problem.dilation, groups=problem.groups,
                                          residual=residual, activation=activation)
                assert not prepared.fused_for(problem.batch), f"{where}: declined, yet the engine fused it"
                y = prepared(x, r) if residual else prepared(x)
            else:
                execute = self.backend.prepare(problem, w, b, epilogue=epilogue)
                y = execute(x, r) if residual else execute(x)
                assert not (residual and np.shares_memory(y, r)), f"{where}: the output must be a new array, not the residual"
            assert y.shape == problem.output_shape and y.dtype == np.dtype(problem.dtype), (where, y.shape, y.dtype)
            error = relative_error(y, ref)
            assert error <= tol, f"{where}: error {error:.2e}"
            if reason is None and residual and getattr(self.backend, "residual_in_place", False):
                given_up = r.copy()  # a residual the caller gave up: the output goes over it
                y = execute(x, given_up, in_place=True)
                assert y is given_up or np.shares_memory(y, given_up), "in_place=True must write over the residual"
                error = relative_error(y, ref)
                assert error <= tol, f"{where}, in place: error {error:.2e}"
        if not cases:
            self.checked_nothing("problem")

    @pytest.mark.parametrize("step", [1, 2])
    @pytest.mark.parametrize("residual, activation", [(False, None), (False, "relu"), (True, "relu")])
    def test_output_slice_matches_reference(self, step, residual, activation):
        """Where ``supports_output_slice`` accepts, ``execute(..., out=slice)`` writes the output into
        those channels of the buffer, returns ``out.view`` and leaves every other element as it was
        (a decline needs a reason; declining everything is allowed: the engine copies then)."""
        from ..core.epilogue import NONE, Epilogue

        asks = getattr(self.backend, "supports_output_slice", None)
        fuses = getattr(self.backend, "supports_epilogue", None)
        epilogue = Epilogue(residual=residual, activation=activation)
        cases = self.supported_cases(one_per_kind=True)
        if not cases:
            self.checked_nothing("problem")
        for i, (kind, problem) in enumerate(cases):
            fused = bool(epilogue) and fuses is not None and fuses(problem, epilogue) is None
            if epilogue and not fused:
                continue  # the engine applies it, and never passes out= then
            given = epilogue if fused else NONE
            reason = asks(problem, given, step) if asks else "no supports_output_slice"
            if reason is not None:
                assert isinstance(reason, str) and reason.strip(), f"supports_output_slice() returned {reason!r}"
                continue
            x, w, b = problem_data(problem, 40 + i)
            ref = _reference(x, w, b, problem)
            r = np.random.default_rng(i).standard_normal(problem.output_shape).astype(problem.dtype) if residual else None
            if residual:
                ref = ref + r
            if activation == "relu":
                ref = np.maximum(ref, 0)
            n, c, h, wd = problem.output_shape
            start = 3
            buffer = np.full((n, start + step * c + 2, h, wd), 7.0, problem.dtype)
            out = OutputSlice(buffer, start, c, step)
            execute = self.backend.prepare(problem, w, b, epilogue=given) if fused else self.backend.prepare(problem, w, b)
            y = execute(x, r, out=out) if residual else execute(x, out=out)
            where = f"{kind} {problem}, epilogue {epilogue}, step {step}"
            view = out.view
            assert (isinstance(y, np.ndarray) and y.shape == view.shape and y.strides == view.strides
                    and y.__array_interface__["data"][0] == view.__array_interface__["data"][0]), f"{where}: must return out.view"
            error = relative_error(view, ref)
            assert error <= tolerance(self.backend, problem.dtype), f"{where}: error {error:.2e}"
            outside = np.ones(buffer.shape[1], bool)
            outside[start:start + step * (c - 1) + 1:step] = False
            assert (buffer[:, outside] == 7.0).all(), f"{where}: wrote outside the slice"

    @pytest.mark.parametrize("batch", [1, 2])
    def test_blocked_output_slice_matches_reference(self, batch):
        """Where the backend writes NCHW16c outputs (``supports_layouts``) and accepts ``out=`` for them, a blocked
        slice (whole blocks of a ``(N, C/16, H, W, 16)`` buffer: a concatenation held blocked) gets the output in
        its blocks and nothing else changes. A backend that writes no blocked output is never given one."""
        from ..core.epilogue import NONE
        from ..core.layouts import NCHW16C, to_nchw

        takes = getattr(self.backend, "supports_layouts", None)
        asks = getattr(self.backend, "supports_output_slice", None)
        checked = 0
        for i, (cin, cout, kernel) in enumerate([(16, 32, 3), (32, 16, 1)]):
            problem = dataclasses.replace(ConvProblem.from_shapes((batch, cin, 9, 7), (cout, cin, kernel, kernel),
                                                                  bias=True, padding=kernel // 2), output_layout=NCHW16C)
            if (takes is None or asks is None or self.backend.supports(problem) is not None
                    or takes(problem) is not None or asks(problem, NONE, 1) is not None):
                continue
            x, w, b = problem_data(problem, 60 + i)
            buffer = np.full((batch, cout // 16 + 2, 9, 7, 16), 7.0, problem.dtype)
            out = OutputSlice(buffer, 16, cout, 1, NCHW16C)
            y = self.backend.prepare(problem, w, b)(x, out=out)
            view = out.view
            where = f"{problem}, a blocked slice at block 1 of {buffer.shape[1]}"
            assert (isinstance(y, np.ndarray) and y.shape == view.shape and y.strides == view.strides
                    and y.__array_interface__["data"][0] == view.__array_interface__["data"][0]), f"{where}: must return out.view"
            error = relative_error(to_nchw(view, NCHW16C, cout), _reference(x, w, b, problem))
            assert error <= tolerance(self.backend, problem.dtype), f"{where}: error {error:.2e}"
            assert (buffer[:, [0, -1]] == 7.0).all(), f"{where}: wrote outside the slice"
            checked += 1
        if not checked:
            pytest.skip(f"{self.backend.name!r} writes no NCHW16c output into a slice (supports_layouts or "
                        "supports_output_slice declines): the engine never gives it one")

    # -- speed (reported, never asserted) ---------------------------------------------------------
    def test_benchmark_against_builtins(self, capsys):
        """Median time per call next to the built-in CPU backends on a ResNet-like layer; printed with -s."""
        if _is_simulator(self.backend):
            pytest.skip("no benchmark on a simulator")
        problem = next((p for p in BENCHMARK_PROBLEMS if not self.backend.supports(p)), None)
        if problem is None:
            self.checked_nothing(f"benchmark layer ({'; '.join(map(str, BENCHMARK_PROBLEMS))})")
        table = benchmark_against_builtins(self.backend, problem)
        with capsys.disabled():
            print("\n" + table)


#: Layers the benchmark tries, in order, until the backend supports one: a ResNet 3x3 layer, a 1x1
#: layer, a strided 3x3 layer, a depthwise one (float32, batch 1).
BENCHMARK_PROBLEMS = [
    ConvProblem.from_shapes((1, 64, 28, 28), (64, 64, 3, 3), padding=1),
    ConvProblem.from_shapes((1, 256, 14, 14), (64, 256, 1, 1)),
    ConvProblem.from_shapes((1, 64, 28, 28), (128, 64, 3, 3), stride=2, padding=1),
    ConvProblem.from_shapes((1, 128, 28, 28), (128, 1, 3, 3), padding=1, groups=128),
]


def _ratio(ratio: float) -> str:
    """Three significant digits (whole numbers from 100 on), whatever the size: ``0.00x`` says nothing, ``1260x`` does."""
    return f"{ratio:.3g}x" if ratio < 100 else f"{ratio:.0f}x"


def benchmark_against_builtins(backend, problem: Optional[ConvProblem] = None, rounds: int = 5) -> str:
    """A small side-by-side timing table of ``backend`` and the available built-in CPU backends.

    Each line says how ``backend`` compares with that contender ("mybackend is 12.5x slower"),
    so that the numbers stay readable however far apart the times are.
    """
    from ..core.registry import BUILTIN_PLUGINS, default_registry

    problem = problem or BENCHMARK_PROBLEMS[0]
    declined = backend.supports(problem)
    if declined:
        raise ValueError(f"{backend.name!r} cannot run the benchmark problem {problem}: {declined}")
    x, w, _ = problem_data(problem, 0)
    contenders = {backend.name: backend}
    for entry in default_registry().entries():
        if entry.plugin in BUILTIN_PLUGINS and entry.available and entry.attribute("device") == "cpu":
            contenders.setdefault(entry.name, entry.backend)
    executors = {name: b.prepare(problem, w, None) for name, b in contenders.items() if not b.supports(problem)}
    # warmed first (JIT compilation), then one call per contender and round: a kit test must stay quick
    times = interleaved({name: (lambda e=e: e(x)) for name, e in executors.items()}, rounds, target_s=0.0, settle_s=0.0)
    medians = {name: max(float(np.median(t)), 1e-9) for name, t in times.items()}
    ours = medians[backend.name]
    rows = []
    for name, seconds in sorted(medians.items(), key=lambda kv: kv[1]):
        if name == backend.name:
            relation = "(the backend under test)"
        elif ours >= seconds:
            relation = f"{backend.name} is {_ratio(ours / seconds)} slower"
        else:
            relation = f"{backend.name} is {_ratio(seconds / ours)} faster"
        rows.append((name, f"{seconds * 1e3:.3f} ms", relation))
    table = format_table(("backend", "median", f"{backend.name} against it"), rows, right=(1,))
    return f"{problem}: median of {rounds} interleaved rounds\n" + "\n".join("  " + line for line in table.splitlines())
