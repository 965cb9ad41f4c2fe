"""``fft``: convolution theorem with real FFTs from ``scipy.fft``.

Cross-correlation is a pointwise product with the *conjugate* kernel spectrum. The FFT
size only needs to cover the padded input (wrap-around then only touches outputs that
the valid correlation discards), rounded up to a fast length. Kernel spectra are built
once in ``prepare``. Dilation is handled by spreading the kernel taps with zeros before
the transform; stride by computing the stride-1 result and subsampling it, which is
correct but wasteful, and the cost model knows it.

The transform's round-off makes this a *lossy* backend: an accuracy budget tighter than
the lossy bound keeps it out. A 1x1 kernel is declined: it is a matrix product already, and
its transform would cost the kernel's size times the input's in spectra for nothing.

A NaN or Inf anywhere in an image would reach every frequency, and from there every output
of that image. Direct convolution (and torch) confine it to the outputs whose window holds
it, so an input or weights that are not all finite go through ``im2col`` instead: exact, and
with the direct pattern of NaN and Inf. Checking costs one pass over the input per call
(``all_finite``; measured in ``benchmarks/nonfinite_check.py``, see docs/backends.md).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ..core.arrays import all_finite
from ..core.contract import LOSSY, Backend
from ..core.hookspecs import hookimpl
from ..core.problem import ConvProblem
from ..runtime.threads import get_num_threads
from .im2col import Im2colBackend

# Fraction of the GEMM rate FFT butterflies reach, and that the per-frequency complex products
# reach (small matrices, one per frequency; at batch 1 they are matrix-vector products bound by
# reading the kernel spectra, which the bandwidth term covers).
FFT_EFFICIENCY = 0.15
SPECTRAL_EFFICIENCY = 0.25
# The kernel spectra are read one frequency's (C_out, C_in) block at a time, strided: measured on
# AlexNet's 5x5 layer at batch 1 (94 MB of spectra), that read runs at ~0.6 of the copy bandwidth.
KERNEL_SPECTRA_PASSES = 1.7


def fft_shape(problem: ConvProblem) -> tuple[int, int]:
    import scipy.fft

    return (scipy.fft.next_fast_len(problem.padded_height, real=True),
            scipy.fft.next_fast_len(problem.padded_width, real=True))


class FFTBackend(Backend):
    name = "fft"
    numerical_class = LOSSY
    version = "3"  # 3: the finiteness check (and exact path) on every call

    def fingerprint(self) -> dict:
        import scipy

        return {"version": self.version, "scipy": scipy.__version__}

    def supports(self, problem: ConvProblem) -> Optional[str]:
        # The one place this rule lives: the benchmarks, the asv suite and tuning all ask supports().
        if problem.kernel_h == problem.kernel_w == 1:
            return ("1x1 kernel: a matrix product, which im2col and direct run as one; the FFT would transform "
                    "every kernel to the input's size (on ResNet-50, a minute and ~17 GB of spectra)")
        return None

    def extra_weight_bytes(self, problem: ConvProblem) -> int:
        """Its kernel spectra: a complex value per frequency of the padded input's transform and channel
        pair (AlexNet's 5x5 layer at 27x27: 51 MiB for 1.2 MiB of weights)."""
        fh, fw = fft_shape(problem)
        pairs = problem.out_channels * (problem.in_channels // problem.groups)
        return pairs * fh * (fw // 2 + 1) * 2 * np.dtype(problem.dtype).itemsize

    def estimate_seconds(self, problem: ConvProblem, machine) -> float:
        fh, fw = fft_shape(problem)
        points = fh * fw
        freqs = fh * (fw // 2 + 1)
        complex_bytes = 2 * np.dtype(problem.dtype).itemsize
        transforms = problem.batch * (problem.in_channels + problem.out_channels)
        fft_flops = 2.5 * points * math.log2(max(points, 2)) * transforms
        c_group = problem.in_channels // problem.groups
        spectral_flops = 8 * problem.batch * problem.out_channels * c_group * freqs
        spectral_bytes = complex_bytes * freqs * (
            KERNEL_SPECTRA_PASSES * problem.out_channels * c_group
            + 3 * problem.batch * (problem.in_channels + problem.out_channels))
        rate = machine.gemm_flops(problem.dtype)
        return (fft_flops / (rate * FFT_EFFICIENCY) + spectral_flops / (rate * SPECTRAL_EFFICIENCY)
                + spectral_bytes / machine.bandwidth + 5e-5)

    def prepare(self, problem: ConvProblem, weight, bias):
        import scipy.fft

        if not all_finite(weight):  # every spectrum would be NaN: the exact path for every call
            return Im2colBackend().prepare(problem, weight, bias)
        exact = []  # im2col's executor, prepared on the first input holding a NaN or Inf
        fh, fw = fft_shape(problem)
        g = problem.groups
        out_per_group = problem.out_channels // g
        c_group = problem.in_channels // g
        dh, dw = problem.dilation
        eff_h, eff_w = problem.effective_kernel
        spread = np.zeros((problem.out_channels, c_group, eff_h, eff_w), weight.dtype)
        spread[:, :, ::dh, ::dw] = weight
        spectrum = np.conj(scipy.fft.rfft2(spread, s=(fh, fw), workers=get_num_threads()))
        freqs = fh * (fw // 2 + 1)
        # (G, F, C/G, O/G): per group and frequency, one (N x C/G) @ (C/G x O/G) product.
        w_hat = np.ascontiguousarray(spectrum.reshape(g, out_per_group, c_group, freqs).transpose(0, 3, 2, 1))
        b = None if bias is None else bias.reshape(1, -1, 1, 1).copy()
        top, bottom, left, right = problem.padding
        sh, sw = problem.stride
        rows = slice(0, (problem.out_height - 1) * sh + 1, sh)
        cols = slice(0, (problem.out_width - 1) * sw + 1, sw)

        def execute(x: np.ndarray) -> np.ndarray:
            if not all_finite(x):
                if not exact:  # two threads may both prepare one here: harmless, either is right
                    exact.append(Im2colBackend().prepare(problem, weight, bias))
                return exact[0](x)
            n = x.shape[0]
            workers = get_num_threads()
            xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(problem.padding) else x
            x_hat = scipy.fft.rfft2(xp, s=(fh, fw), workers=workers).reshape(n, g, c_group, freqs)
            y_hat = np.matmul(x_hat.transpose(1, 3, 0, 2), w_hat)  # (G, F, N, O/G)
            y_hat = y_hat.transpose(2, 0, 3, 1).reshape(n, g * out_per_group, fh, fw // 2 + 1)
            y = scipy.fft.irfft2(y_hat, s=(fh, fw), workers=workers)[..., rows, cols]
            out = np.ascontiguousarray(y.reshape(problem.output_shape), dtype=x.dtype)
            if b is not None:
                out += b
            return out

        return execute


@hookimpl
def convengine_register_backends(register):
    register(FFTBackend())
