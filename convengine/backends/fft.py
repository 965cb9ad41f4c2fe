"""``fft``: convolution theorem with real FFTs from ``scipy.fft``.

Cross-correlation is a pointwise product with the *conjugate* kernel spectrum. The FFT
size only needs to cover the padded input (wrap-around then only touches outputs that
the valid correlation discards), rounded up to a fast length. Kernel spectra are built
once in ``prepare``. Dilation is handled by spreading the kernel taps with zeros before
the transform; stride by computing the stride-1 result and subsampling it, which is
correct but wasteful, and the cost model knows it.

The transform's round-off makes this a *lossy* backend: an accuracy budget tighter than
the lossy bound keeps it out.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import LOSSY, Backend
from ..hookspecs import hookimpl
from ..problem import ConvProblem
from ..threads import get_num_threads

# Fraction of the GEMM rate FFT butterflies reach; the spectral products are memory-bound.
FFT_EFFICIENCY = 0.15


def fft_shape(problem: ConvProblem) -> tuple[int, int]:
    import scipy.fft

    return (scipy.fft.next_fast_len(problem.padded_height, real=True),
            scipy.fft.next_fast_len(problem.padded_width, real=True))


class FFTBackend(Backend):
    name = "fft"
    numerical_class = LOSSY
    version = "1"

    def fingerprint(self) -> dict:
        import scipy

        return {"version": self.version, "scipy": scipy.__version__}

    def estimate_seconds(self, problem: ConvProblem, machine) -> float:
        fh, fw = fft_shape(problem)
        points = fh * fw
        itemsize = np.dtype(problem.dtype).itemsize
        transforms = problem.batch * (problem.in_channels + problem.out_channels)
        fft_flops = 2.5 * points * math.log2(max(points, 2)) * transforms
        spectral_macs = problem.batch * problem.out_channels * (problem.in_channels // problem.groups) * points / 2
        spectral_bytes = 2 * itemsize * points / 2 * (
            problem.batch * problem.in_channels + problem.out_channels * problem.in_channels // problem.groups
        )
        rate = machine.gemm_flops(problem.dtype)
        return fft_flops / (rate * FFT_EFFICIENCY) + max(8 * spectral_macs / rate, spectral_bytes / machine.bandwidth) + 5e-5

    def prepare(self, problem: ConvProblem, weight, bias):
        import scipy.fft

        fh, fw = fft_shape(problem)
        g = problem.groups
        out_per_group = problem.out_channels // g
        c_group = problem.in_channels // g
        dh, dw = problem.dilation
        eff_h, eff_w = problem.effective_kernel
        spread = np.zeros((problem.out_channels, c_group, eff_h, eff_w), weight.dtype)
        spread[:, :, ::dh, ::dw] = weight
        spectrum = np.conj(scipy.fft.rfft2(spread, s=(fh, fw), workers=get_num_threads()))
        # (G, O/G, C/G, F) so that a group's product is one einsum over input channels.
        w_hat = np.ascontiguousarray(spectrum.reshape(g, out_per_group, c_group, fh, fw // 2 + 1))
        b = None if bias is None else bias.reshape(1, -1, 1, 1).copy()
        top, bottom, left, right = problem.padding
        sh, sw = problem.stride
        rows = slice(0, (problem.out_height - 1) * sh + 1, sh)
        cols = slice(0, (problem.out_width - 1) * sw + 1, sw)

        def execute(x: np.ndarray) -> np.ndarray:
            n = x.shape[0]
            workers = get_num_threads()
            xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(problem.padding) else x
            x_hat = scipy.fft.rfft2(xp, s=(fh, fw), workers=workers).reshape(n, g, c_group, fh, fw // 2 + 1)
            y_hat = np.einsum("ngcij,gocij->ngoij", x_hat, w_hat)
            y = scipy.fft.irfft2(y_hat, s=(fh, fw), workers=workers)[..., rows, cols]
            out = np.ascontiguousarray(y.reshape(problem.output_shape), dtype=x.dtype)
            if b is not None:
                out += b
            return out

        return execute


@hookimpl
def convengine_register_backends(register):
    register(FFTBackend())
