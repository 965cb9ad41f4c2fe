"""Arrays as the engine takes and hands them: validated inputs, kernel-ready copies, checked
outputs, and random data for a problem (for tuning and benchmarks). Kept apart from the
engine so that the graph executor and the tools can use them without importing dispatch."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .layouts import layout_note, to_layout
from .problem import ConvProblem


def as_float_array(value, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind != "f" or array.dtype.itemsize not in (4, 8):  # float32/float64, either byte order
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {array.dtype}")
    if not array.dtype.isnative:  # backends are promised native-endian data
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def conv_arrays(x, weight, bias):
    """Check types, dtypes and ranks; return C-contiguous arrays and whether ``x`` was unbatched."""
    x = as_float_array(x, "input")
    weight = as_float_array(weight, "weight")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight dtype {weight.dtype} does not match input dtype {x.dtype}; cast one of them")
    if weight.ndim != 4:
        raise ValueError(f"weight must be 4-D (C_out, C_in/groups, kH, kW), got {weight.ndim}-D shape {weight.shape}")
    unbatched = x.ndim == 3
    if unbatched:  # as torch: (C, H, W) in, (C_out, H_out, W_out) out
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"input must be 4-D (N, C_in, H, W) or 3-D (C_in, H, W), got {x.ndim}-D shape {x.shape}")
    if bias is not None:
        bias = as_float_array(bias, "bias")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias dtype {bias.dtype} does not match input dtype {x.dtype}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape (C_out,) = ({weight.shape[0]},), got {bias.shape}")
        bias = np.ascontiguousarray(bias)
    return np.ascontiguousarray(x), np.ascontiguousarray(weight), bias, unbatched


def kernel_ready(array: np.ndarray) -> np.ndarray:
    """C-contiguous and writable memory: a read-only array (``np.frombuffer``, an ONNX tensor)
    is a type of its own to Numba, and would cost every kernel a second compile. A copy then,
    never a write into the caller's array."""
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


def is_kernel_ready(array: np.ndarray) -> bool:
    """Whether :func:`kernel_ready` would return ``array`` itself (C-contiguous and writable)."""
    flags = array.flags
    return flags.c_contiguous and flags.writeable


def all_finite(array: np.ndarray) -> bool:
    """Whether no element is NaN or Inf: one BLAS pass (the sum of squares), no temporary array.

    Lossy backends ask it of every input, to take an exact path when a NaN or Inf would spread
    through their transform. Squares of huge finite values can overflow: then the element-wise
    test decides (slower, and only then).
    """
    flat = array.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.dot(flat, flat)):
            return True
    return bool(np.isfinite(flat).all())


def output_violation(y, problem: ConvProblem) -> Optional[str]:
    """Why ``y`` is not a valid output for ``problem`` (``None`` when it is)."""
    if isinstance(y, np.ndarray) and y.shape == problem.output_array_shape and y.dtype == problem.numpy_dtype:
        return None
    got = f"{type(y).__name__} {getattr(y, 'shape', '')} {getattr(y, 'dtype', '')}".strip()
    return f"returned {got}, expected ndarray {problem.output_array_shape}{layout_note(problem.output_layout)} {problem.dtype}"


def problem_data(problem: ConvProblem, seed: int = 0):
    """Random ``(x, weight, bias)`` for ``problem`` (bias ``None`` without one), seeded; ``x`` in the problem's input layout."""
    rng = np.random.default_rng(seed)
    x = to_layout(rng.standard_normal(problem.input_shape).astype(problem.dtype), problem.input_layout)
    w = rng.standard_normal(problem.weight_shape).astype(problem.dtype)
    b = rng.standard_normal(problem.out_channels).astype(problem.dtype) if problem.has_bias else None
    return x, w, b
