"""An independent float64 reference convolution, written for clarity, not speed.

It shares no code with any backend: it pads with ``np.pad`` and sums one kernel tap at a
time over strided slices, in float64, following the definition of cross-correlation
directly. Tests and the conformance kit compare every backend against it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def conv2d_reference(
    x: np.ndarray,
    w: np.ndarray,
    bias: Optional[np.ndarray] = None,
    stride: Sequence[int] = (1, 1),
    padding: Sequence[int] = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    groups: int = 1,
) -> np.ndarray:
    """``y[n, o, i, j] = b[o] + sum_{c, p, q} x_pad[n, g*Cg + c, i*sh + p*dh, j*sw + q*dw] * w[o, c, p, q]``.

    ``padding`` is ``(top, bottom, left, right)``; the result is float64.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, c_in, _, _ = x.shape
    c_out, c_group, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dilation
    top, bottom, left, right = padding
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    out_h = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    out_per_group = c_out // groups
    y = np.zeros((n, c_out, out_h, out_w), dtype=np.float64)
    for g in range(groups):
        xg = xp[:, g * c_group:(g + 1) * c_group]
        wg = w[g * out_per_group:(g + 1) * out_per_group]
        for p in range(kh):
            for q in range(kw):
                rows = slice(p * dh, p * dh + sh * (out_h - 1) + 1, sh)
                cols = slice(q * dw, q * dw + sw * (out_w - 1) + 1, sw)
                window = xg[:, :, rows, cols]  # (n, c_group, out_h, out_w)
                y[:, g * out_per_group:(g + 1) * out_per_group] += np.einsum(
                    "nchw,oc->nohw", window, wg[:, :, p, q]
                )
    if bias is not None:
        y += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return y


def relative_error(y: np.ndarray, reference: np.ndarray) -> float:
    """Normwise relative error ``max|y - ref| / max|ref|`` (the measure of ``ERROR_BOUNDS``)."""
    reference = np.asarray(reference, dtype=np.float64)
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    diff = float(np.max(np.abs(np.asarray(y, dtype=np.float64) - reference))) if reference.size else 0.0
    return diff / scale if scale > 0 else diff


def activation_reference(y: np.ndarray, activation: Optional[str], params: Sequence[float] = ()) -> np.ndarray:
    """An epilogue activation in float64, written from ONNX's operator definitions (new array).

    ``activation`` and ``params`` as :class:`convengine.Epilogue` holds them once normalised
    (``"relu"``, ``"clip"`` with ``(min, max)``, ``"sigmoid"``, ``"silu"``, ``"hardsigmoid"`` with
    ``(alpha, beta)``, ``"hardswish"``; ``None``: identity). Independent of the engine's own
    (``Epilogue.apply``, the kernels), which tests compare with it.
    """
    x = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        sigmoid = 1.0 / (1.0 + np.exp(-x))
        table = {
            None: lambda: x.copy(),
            "relu": lambda: np.maximum(x, 0.0),  # numpy's maximum keeps NaN, as ONNX's Relu
            "clip": lambda: np.minimum(np.maximum(x, params[0]), params[1]),
            "sigmoid": lambda: sigmoid,
            "silu": lambda: x * sigmoid,
            "hardsigmoid": lambda: np.maximum(0.0, np.minimum(1.0, params[0] * x + params[1])),
            "hardswish": lambda: x * np.maximum(0.0, np.minimum(1.0, x / 6.0 + 0.5)),
            "gelu": lambda: 0.5 * x * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(x / math.sqrt(2.0))),
        }
        if activation not in table:
            raise ValueError(f"no reference for activation {activation!r}")
        return table[activation]()
