"""An example backend: a direct convolution as one einsum per kernel tap.

It is slow and simple on purpose: the file shows every part of the contract, nothing else.
"""

import numpy as np

import convengine

from . import __version__


class MyBackend(convengine.Backend):
    name = "mybackend"
    device = "cpu"
    numerical_class = convengine.EXACT  # sums the direct formula's products; LOSSY for transforms
    version = __version__  # part of the tuning-cache key: a new version is measured again

    def availability(self):
        return None  # or a reason string, e.g. "libfoo not found"

    def supports(self, problem):
        if problem.groups != 1:
            return f"groups > 1 not supported (got {problem.groups})"
        return None

    def estimate_seconds(self, problem, machine):
        # Optional: used by the "auto" policy. einsum reaches a small fraction of BLAS speed.
        return problem.flops / (0.05 * machine.gemm_flops(problem.dtype))

    def prepare(self, problem, weight, bias):
        w = weight.copy()  # the engine would allow a view (see Backend.prepare); direct callers may not
        b = None if bias is None else bias.reshape(1, -1, 1, 1).copy()
        top, bottom, left, right = problem.padding
        (sh, sw), (dh, dw) = problem.stride, problem.dilation
        oh, ow = problem.out_height, problem.out_width

        def execute(x):
            xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
            y = np.zeros(problem.output_shape, x.dtype)
            for p in range(problem.kernel_h):
                for q in range(problem.kernel_w):
                    window = xp[:, :, p * dh:p * dh + sh * (oh - 1) + 1:sh, q * dw:q * dw + sw * (ow - 1) + 1:sw]
                    y += np.einsum("nchw,oc->nohw", window, w[:, :, p, q])
            return y if b is None else y + b

        return execute


@convengine.hookimpl
def convengine_register_backends(register):
    register(MyBackend())
