"""The conformance kit (convengine.testing.BackendConformance) run on every built-in backend.

The plugins in plugins/ run the same kit in their own tests.
"""

import pytest

from convengine.backends.cuda import CudaBackend
from convengine.backends.fft import FFTBackend
from convengine.backends.im2col import Im2colBackend
from convengine.backends.naive import NaiveBackend
from convengine.testing import BackendConformance


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
            Probe().test_matches_float64_reference_on_random_problems("float64")

    def test_mutating_backend_fails(self):
        class Mutating(NaiveBackend):
            name = "mutating"

            def prepare(self, problem, weight, bias):
                execute = super().prepare(problem, weight, bias)

                def run(x):
                    y = execute(x)
                    x.flags.writeable = True
                    x[...] = 0
                    return y

                return run

        class Probe(BackendConformance):
            backend = Mutating()

        with pytest.raises(AssertionError):
            Probe().test_never_modifies_its_inputs()


def _template_backend():
    """The copyable plugin template (plugins/template), imported from its folder, uninstalled."""
    import importlib
    import pathlib
    import sys

    folder = pathlib.Path(__file__).resolve().parents[2] / "plugins" / "template"
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("convengine_mybackend.plugin").MyBackend()
    finally:
        sys.path.remove(str(folder))


class TestPluginTemplate(BackendConformance):
    """The template a plugin author copies must itself pass the kit."""

    backend = _template_backend()
