"""The conformance kit (convengine.testing.BackendConformance) run on every built-in backend.

The plugins in plugins/ run the same kit in their own tests.
"""

import pytest

from convengine.backends.cuda import CudaBackend
from convengine.backends.fft import FFTBackend
from convengine.backends.im2col import Im2colBackend
from convengine.backends.naive import NaiveBackend
from convengine.testing import BackendConformance
from convengine_mybackend.plugin import MyBackend


class TestNaive(BackendConformance):
    backend = NaiveBackend()


class TestIm2col(BackendConformance):
    backend = Im2colBackend()


class TestIm2colTiled(BackendConformance):
    """A column buffer limit of 256 bytes forces tiling over images and output rows."""

    backend = Im2colBackend(max_buffer_bytes=256)


class TestFFT(BackendConformance):
    backend = FFTBackend()


class TestCuda(BackendConformance):
    backend = CudaBackend()


class TestKitCatchesABrokenBackend:
    """The kit must fail a backend that is wrong; otherwise passing it would mean nothing."""

    def test_off_by_one_backend_fails(self):
        import numpy as np

        class OffByOne(NaiveBackend):
            name = "off-by-one"

            def prepare(self, problem, weight, bias):
                execute = super().prepare(problem, weight, bias)
                return lambda x: execute(x) + np.asarray(1e-3, x.dtype)

        class Probe(BackendConformance):
            backend = OffByOne()

        with pytest.raises(AssertionError, match="relative error"):
            Probe().test_matches_float64_reference()

    def test_a_backend_writing_outside_its_slice_fails(self):
        from convengine.backends.im2col import Im2colBackend

        class Spills(Im2colBackend):
            name = "spills"

            def prepare(self, problem, weight, bias, epilogue=None):
                execute = super().prepare(problem, weight, bias) if epilogue is None else super().prepare(
                    problem, weight, bias, epilogue=epilogue)

                def run(*args, out=None):
                    y = execute(*args, out=out)
                    if out is not None:
                        out.buffer[:, 0] = 0  # the channel before the slice
                    return y

                return run

        class Probe(BackendConformance):
            backend = Spills()

        with pytest.raises(AssertionError, match="outside the slice"):
            Probe().test_output_slice_matches_reference(1, False, None)

    def test_mutating_backend_fails(self):
        class Probe(BackendConformance):
            backend = mutating(NaiveBackend)

        with pytest.raises(AssertionError):
            Probe().test_never_modifies_its_inputs()


def mutating(base: type) -> NaiveBackend:
    """A ``base`` backend whose executor zeroes its input after computing."""

    class Mutating(base):
        name = f"mutating-{base.name}"

        def prepare(self, problem, weight, bias):
            execute = super().prepare(problem, weight, bias)

            def run(x):
                y = execute(x)
                x.flags.writeable = True
                x[...] = 0
                return y

            return run

    return Mutating()


class PlainOnly(NaiveBackend):
    """Correct, but only for stride 1, dilation 1, groups 1 (any padding): the issue's scipy backend's sub-space."""

    name = "plain-only"

    def supports(self, problem):
        if problem.stride != (1, 1) or problem.dilation != (1, 1) or problem.groups != 1:
            return "only stride 1, dilation 1, groups 1"
        return None


class TestPlainOnlyBackendPassesWithTheDefaults(BackendConformance):
    """Issue 16 (1): none of the old seeded problems was plain, so this backend failed the kit."""

    backend = PlainOnly()


class Float32Only(NaiveBackend):
    """A backend may support one dtype: the kit tests it on that one, and passes it."""

    name = "float32-only"

    def supports(self, problem):
        return None if problem.dtype == "float32" else "float32 only"


class TestFloat32OnlyBackendPasses(BackendConformance):
    backend = Float32Only()
    test_benchmark_against_builtins = None  # the documented switch (a naive backend's benchmark takes seconds)


class DeclinesEverything(NaiveBackend):
    name = "declines-everything"

    def supports(self, problem):
        return "nothing supported"


def _kit_tests():
    """Every test of the kit as ``(name, kwargs)``, one call per parametrisation."""
    import itertools

    calls = []
    for name in sorted(n for n in dir(BackendConformance) if n.startswith("test_")):
        marks = [m for m in getattr(getattr(BackendConformance, name), "pytestmark", []) if m.name == "parametrize"]
        grids = [[dict(zip([a.strip() for a in m.args[0].split(",")], v if isinstance(v, tuple) else (v,)))
                  for v in m.args[1]] for m in marks]
        for combination in itertools.product(*grids):
            calls.append((name, {k: v for part in combination for k, v in part.items()}))
    return calls


def _run_kit_test(backend, name, kwargs):
    class Probe(BackendConformance):
        pass

    Probe.backend = backend
    method = getattr(Probe(), name)
    if "capsys" in method.__code__.co_varnames[:method.__code__.co_argcount]:
        kwargs = dict(kwargs, capsys=None)
    return method(**kwargs)


@pytest.mark.parametrize("name, kwargs", _kit_tests(), ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_every_kit_test_fails_when_it_checked_no_case(name, kwargs):
    """Issue 16 (2): a test that checked nothing passed. Now each one fails, saying what was declined."""
    if name == "test_declares_its_capabilities":  # checks declared attributes: no case to decline
        pytest.skip("checks attributes, not cases")
    if name == "test_matches_onnx_conformance_cases":
        pytest.importorskip("onnx")
    with pytest.raises(pytest.fail.Exception, match="checked no case.*nothing supported"):
        _run_kit_test(DeclinesEverything(), name, kwargs)


def test_a_mutating_plain_only_backend_fails_the_input_check():
    """Issue 16 (2): test_never_modifies_its_inputs looked at 6 problems, all declined by a plain-only
    backend, and passed without calling prepare()."""
    with pytest.raises(AssertionError, match="an input was modified"):
        _run_kit_test(mutating(PlainOnly), "test_never_modifies_its_inputs", {})


def test_the_spread_covers_every_sub_space():
    """Each kind holds what its name says, at least twice, and the spread runs in both dtypes."""
    from convengine.testing import problem_spread

    checks = {
        "plain": lambda p: p.stride == (1, 1) and p.dilation == (1, 1) and p.groups == 1 and p.kernel_h * p.kernel_w > 1,
        "1x1": lambda p: (p.kernel_h, p.kernel_w) == (1, 1),
        "strided": lambda p: p.stride != (1, 1),
        "dilated": lambda p: p.dilation != (1, 1),
        "grouped": lambda p: 1 < p.groups < p.in_channels,
        "depthwise": lambda p: p.groups == p.in_channels > 1 and p.weight_shape[1] == 1,
        "large kernel": lambda p: max(p.kernel_h, p.kernel_w) >= 7,
    }
    for dtype in ("float32", "float64"):
        cases = problem_spread(random_count=0, dtype=dtype)
        assert {p.dtype for _, p in cases} == {dtype}
        for kind, holds in checks.items():
            members = [p for k, p in cases if k == kind]
            assert len(members) >= 2, kind
            assert all(holds(p) for p in members), kind
    assert len(problem_spread(random_count=5)) == len(problem_spread(random_count=0)) + 5


def test_extra_problems_are_checked_by_the_kit():
    """The documented hook: a backend for one odd sub-space (5x5, groups 2) is tested on the author's problems."""
    from convengine import ConvProblem

    class Odd(NaiveBackend):
        name = "odd"
        prepared = []

        def supports(self, problem):
            return None if (problem.kernel_h, problem.kernel_w, problem.groups) == (5, 5, 2) else "only 5x5 groups 2"

        def prepare(self, problem, weight, bias):
            self.prepared.append(problem)
            return super().prepare(problem, weight, bias)

    mine = ConvProblem.from_shapes((1, 4, 9, 9), (6, 2, 5, 5), groups=2, padding=2, bias=True, dtype="float64")

    class Probe(BackendConformance):
        backend = Odd()
        extra_problems = [mine]

    Probe().test_matches_float64_reference()
    # in both dtypes, whatever its own
    assert [(p.input_shape, p.dtype) for p in Odd.prepared] == [((1, 4, 9, 9), "float32"), ((1, 4, 9, 9), "float64")]
    with pytest.raises(pytest.fail.Exception, match="checked no case"):  # without the hook: nothing to check
        _run_kit_test(Odd(), "test_matches_float64_reference", {})
    with pytest.raises(TypeError, match="ConvProblem"):
        Probe.extra_problems = [dict(x_shape=(1, 4, 9, 9))]
        Probe().test_matches_float64_reference()


def test_the_speed_line_gives_usable_ratios():
    """Issue 16 (8): a backend 100x slower than the built-ins printed "0.00x"; now "... is 1.0e+02x slower"."""
    import re
    import time

    from convengine.testing import benchmark_against_builtins
    from convengine.testing.conformance import _ratio

    class Slow(PlainOnly):
        name = "slow"

        def prepare(self, problem, weight, bias):
            execute = super().prepare(problem, weight, bias)

            def run(x):
                time.sleep(0.02)
                return execute(x)

            return run

    table = benchmark_against_builtins(Slow(), rounds=2)
    assert "0.00x" not in table
    ratios = re.findall(r"slow is ([0-9.e+]+)x (slower|faster)", table)
    # one line per built-in contender, each a ratio of at least 1 with its direction (which one is
    # faster depends on the shared machine's load, so that is not judged here)
    assert len(ratios) == table.count(" ms  ") - 1 and all(float(r) >= 1 for r, _ in ratios), table
    # the formatting itself, on ratios far apart: never rounded to nothing
    assert [_ratio(r) for r in (1.0, 12.54, 99.94, 1265.3, 2.5e5)] == ["1x", "12.5x", "99.9x", "1265x", "250000x"]


class TestPluginTemplate(BackendConformance):
    """The template a plugin author copies passes the kit with its defaults and no extra attribute
    (plugins/template is on pytest's pythonpath, see pyproject.toml)."""

    backend = MyBackend()
