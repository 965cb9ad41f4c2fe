"""Testing tools for backend authors: a float64 reference and a pytest conformance kit.

``BackendConformance`` needs pytest (and uses ``onnx`` when installed); the reference
needs only numpy.
"""

from .reference import conv2d_reference, relative_error

__all__ = ["BackendConformance", "conv2d_reference", "problem_spread", "relative_error", "tolerance"]


def __getattr__(name):  # the kit imports pytest: load it only when asked for
    if name in ("BackendConformance", "tolerance", "problem_spread", "random_problems", "benchmark_against_builtins"):
        from . import conformance

        return getattr(conformance, name)
    raise AttributeError(name)
