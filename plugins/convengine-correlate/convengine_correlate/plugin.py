"""The ``correlate`` backend: each output plane is one ``scipy.signal.correlate`` call.

Plain convolutions only (stride 1, dilation 1, groups 1; any padding). ``method="direct"``
sums the products as written, with no transform, so the numerical class is EXACT.

``CONVENGINE_CORRELATE_BREAK`` breaks it on purpose, to try the failure paths of the
walk-through without editing this file: ``import`` (the module fails to import),
``prepare`` (``prepare()`` raises), ``shape`` (``execute()`` returns one row short).
"""

import os

import numpy as np

import convengine

from . import __version__

BREAK = os.environ.get("CONVENGINE_CORRELATE_BREAK", "")
if BREAK == "import":
    raise ImportError("CONVENGINE_CORRELATE_BREAK=import: this plugin fails to import, on purpose")


class CorrelateBackend(convengine.Backend):
    name = "correlate"
    device = "cpu"
    numerical_class = convengine.EXACT
    version = __version__  # part of the tuning-cache key: a new version is measured again

    def availability(self):
        try:
            import scipy.signal  # noqa: F401  (imported here, not at the top: the hook runs at every start-up)
        except ImportError as exc:
            return f"scipy is not installed ({exc})"
        return None

    def supports(self, problem):
        if problem.stride != (1, 1) or problem.dilation != (1, 1) or problem.groups != 1:
            return "only stride 1, dilation 1, groups 1"
        return None

    def estimate_seconds(self, problem, machine):
        return problem.flops / (0.001 * machine.gemm_flops(problem.dtype))  # measured: ~0.1 GFLOP/s, 0.1% of GEMM

    def fingerprint(self):
        import scipy

        return {"version": self.version, "scipy": scipy.__version__}

    def prepare(self, problem, weight, bias):
        from scipy.signal import correlate

        if BREAK == "prepare":
            raise RuntimeError("CONVENGINE_CORRELATE_BREAK=prepare: prepare() fails, on purpose")
        w = weight.copy()  # the engine would allow a view (see Backend.prepare); direct callers may not
        b = None if bias is None else bias.reshape(-1, 1, 1).copy()
        top, bottom, left, right = problem.padding

        def execute(x):
            xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
            y = np.empty(problem.output_shape, x.dtype)
            for n in range(x.shape[0]):
                for o in range(problem.out_channels):
                    # (C, H, W) against (C, kH, kW), "valid": a (1, H_out, W_out) plane summed over C
                    y[n, o] = correlate(xp[n], w[o], mode="valid", method="direct")[0]
            if b is not None:
                y += b
            return y[:, :, 1:] if BREAK == "shape" else y

        return execute


@convengine.hookimpl
def convengine_register_backends(register):
    register(CorrelateBackend())
