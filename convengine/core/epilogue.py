"""Epilogues: what a convolution's output goes through before anyone else reads it.

In ResNet-style networks almost every convolution is followed by a ReLU, and every block
ends with a residual add and a ReLU; MobileNet-class networks follow theirs with ReLU6,
SiLU (``x * sigmoid(x)``), HardSwish or HardSigmoid. Run as separate operators these cost
a pass over memory and a dispatch each (SiLU as ONNX writes it, ``Sigmoid`` then ``Mul``,
two); folded into the convolution they are applied while the output is still hot in cache.
A backend that can do that says so (``Backend.supports_epilogue``) and receives the epilogue
in ``prepare``; for every other backend the engine applies it in place on the backend's
fresh output (:meth:`Epilogue.apply`), so the result is the same either way:

    y = activation(conv(x) + bias + residual)

Activations (:data:`ACTIVATIONS`), with ONNX's definitions:

- ``relu``: ``max(x, 0)``;
- ``clip`` with parameters ``(min, max)``: ``min(max(x, min), max)``; ``relu6`` is spelt
  ``clip`` with ``(0, 6)`` once normalised;
- ``sigmoid``: ``1 / (1 + exp(-x))``; ``silu``: ``x * sigmoid(x)`` (also called swish);
- ``hardsigmoid`` with parameters ``(alpha, beta)`` (ONNX's defaults 0.2 and 0.5; PyTorch's
  ``Hardsigmoid`` exports 1/6 and 0.5): ``max(0, min(1, alpha * x + beta))``;
- ``hardswish``: ``x * hardsigmoid(x)`` with ``alpha = 1/6``, ``beta = 0.5``;
- ``gelu``: ``((erf(x / sqrt(2)) + 1) * x) * 0.5`` (ONNX's ``Gelu``, ``approximate="none"``, and
  the ``Div -> Erf -> Add -> Mul -> Mul`` that exporters write for it).

NaN stays NaN through every one of them, as through the operators they replace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

#: Activations an epilogue may end with (``relu6`` is normalised to ``clip`` with ``(0, 6)``).
ACTIVATIONS = ("relu", "relu6", "clip", "sigmoid", "silu", "hardsigmoid", "hardswish", "gelu")
#: The parameters of each parameterised activation, by name, with their defaults (ONNX's).
PARAMETERS = {"clip": (("min", -math.inf), ("max", math.inf)), "hardsigmoid": (("alpha", 0.2), ("beta", 0.5))}
_ALIASES = {"relu6": ("clip", (0.0, 6.0))}
HARDSWISH_ALPHA, HARDSWISH_BETA = 1.0 / 6.0, 0.5

#: How fusing kernels receive the activation: an integer code and two float parameters
#: (:meth:`Epilogue.kernel_activation`). ``relu`` is a clip to ``[0, inf)`` there, and
#: ``hardswish`` a hard sigmoid with ONNX's fixed parameters, times ``x``.
KERNEL_NONE, KERNEL_CLIP, KERNEL_SIGMOID, KERNEL_SILU, KERNEL_HARDSIGMOID, KERNEL_HARDSWISH, KERNEL_GELU = range(7)
#: ``1 / sqrt(2)`` in float64: GELU's ``x / sqrt(2)`` is taken as ``x * GELU_SCALE``.
GELU_SCALE = 0.7071067811865476

ActivationSpec = Union[None, str, tuple]


def _activation_error(activation) -> ValueError:
    return ValueError(f"activation must be one of {ACTIVATIONS} or None (or a tuple (name, *parameters) for "
                      f"{', '.join(PARAMETERS)}), got {activation!r}")


@dataclass(frozen=True)
class Epilogue:
    """``residual``: add a tensor of the output's shape; ``activation``: then apply it (one of :data:`ACTIVATIONS`).

    ``activation`` may also be given as a tuple ``(name, *params)``, e.g. ``("clip", 0, 6)`` or
    ``("hardsigmoid", 1/6, 0.5)``; ``params`` then holds the parameters. Both are normalised on
    construction: ``relu6`` becomes ``clip`` with ``params == (0.0, 6.0)``, omitted parameters
    take their defaults (:data:`PARAMETERS`), so two spellings of one epilogue compare equal.
    """

    residual: bool = False
    activation: Optional[str] = None
    params: tuple = ()

    def __post_init__(self):
        if not isinstance(self.residual, (bool, np.bool_)):
            raise TypeError(f"residual must be True or False, got {self.residual!r}")
        name, params = self.activation, self.params
        if isinstance(name, tuple):
            if params:
                raise ValueError(f"give the activation's parameters once, in the tuple or as params, got {name!r} "
                                 f"and params={params!r}")
            name, params = (name[0], tuple(name[1:])) if name else (None, ())
        if name is not None and (not isinstance(name, str) or name not in ACTIVATIONS):
            raise _activation_error(self.activation)
        if name in _ALIASES:
            if params:
                raise ValueError(f"activation {name!r} takes no parameters, got {params!r}")
            name, params = _ALIASES[name]
        params = _check_params(name, params)
        object.__setattr__(self, "activation", name)
        object.__setattr__(self, "params", params)

    def __bool__(self) -> bool:
        return bool(self.residual) or self.activation is not None

    @property
    def activation_text(self) -> Optional[str]:
        """The activation as text, with its parameters: ``"clip(0, 6)"``, ``"silu"``; ``None`` when there is none."""
        if self.activation is None:
            return None
        return self.activation + (f"({', '.join(f'{p:g}' for p in self.params)})" if self.params else "")

    def __str__(self) -> str:
        parts = (["+ residual"] if self.residual else []) + ([self.activation_text] if self.activation else [])
        return ", ".join(parts) or "none"

    def kernel_activation(self) -> tuple[int, float, float]:
        """``(code, p0, p1)`` for fusing kernels: one of the ``KERNEL_*`` codes and its two parameters."""
        if self.activation is None:
            return KERNEL_NONE, 0.0, 0.0
        if self.activation == "relu":
            return KERNEL_CLIP, 0.0, math.inf
        if self.activation == "clip":
            return KERNEL_CLIP, float(self.params[0]), float(self.params[1])
        if self.activation == "hardsigmoid":
            return KERNEL_HARDSIGMOID, float(self.params[0]), float(self.params[1])
        if self.activation == "hardswish":
            return KERNEL_HARDSWISH, HARDSWISH_ALPHA, HARDSWISH_BETA
        return {"sigmoid": KERNEL_SIGMOID, "silu": KERNEL_SILU, "gelu": KERNEL_GELU}[self.activation], 0.0, 0.0

    def apply(self, y: np.ndarray, residual: Optional[np.ndarray]) -> np.ndarray:
        """Apply in place to ``y`` (a fresh output no one else holds) and return it: the unfused path."""
        if self.residual:
            np.add(y, residual, out=y)
        if self.activation is not None:
            apply_activation(y, self.activation, self.params)
        return y


def _check_params(name: Optional[str], params) -> tuple:
    if not isinstance(params, (tuple, list)):
        raise TypeError(f"activation parameters must be a tuple of numbers, got {params!r}")
    if name not in PARAMETERS:
        if params:
            raise ValueError(f"activation {name!r} takes no parameters, got {tuple(params)!r}")
        return ()
    spec = PARAMETERS[name]
    if len(params) > len(spec):
        raise ValueError(f"activation {name!r} takes at most {len(spec)} parameters ({', '.join(p for p, _ in spec)}), "
                         f"got {tuple(params)!r}")
    values = []
    for (pname, default), value in zip(spec, tuple(params) + (None,) * (len(spec) - len(params))):
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or math.isnan(value):
            raise ValueError(f"activation {name!r}: {pname} must be a number, got {value!r}")
        values.append(float(value))
    if name == "clip" and values[0] > values[1]:
        raise ValueError(f"activation 'clip': min ({values[0]:g}) must not exceed max ({values[1]:g})")
    return tuple(values)


def apply_activation(y: np.ndarray, activation: str, params: tuple = ()) -> np.ndarray:
    """``activation`` applied to ``y`` in place (numpy, a pass or two over memory); returns ``y``.

    ``activation`` and ``params`` are in :class:`Epilogue`'s normalised form. The sigmoid's
    ``exp(-x)`` overflows to ``inf`` for ``x`` below about -88 (float32), which gives the exact
    limits 0 (sigmoid) and -0 (silu), and ``-inf * 0`` is NaN in silu and hardswish as in the
    ``Mul`` they replace: expected, so not warned about.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return _apply_activation(y, activation, params)


def _apply_activation(y: np.ndarray, activation: str, params: tuple) -> np.ndarray:
    kind = y.dtype.type
    if activation == "relu":
        np.maximum(y, 0, out=y)
    elif activation == "clip":
        np.clip(y, kind(params[0]), kind(params[1]), out=y)
    elif activation in ("sigmoid", "silu"):
        e = np.exp(-y)
        e += 1
        if activation == "sigmoid":
            np.reciprocal(e, out=y)
        else:
            np.divide(y, e, out=y)
    elif activation in ("hardsigmoid", "hardswish"):
        alpha, beta = params if activation == "hardsigmoid" else (HARDSWISH_ALPHA, HARDSWISH_BETA)
        h = y * kind(alpha) if activation == "hardswish" else np.multiply(y, kind(alpha), out=y)
        h += kind(beta)
        np.clip(h, 0, 1, out=h)
        if activation == "hardswish":
            np.multiply(y, h, out=y)
    elif activation == "gelu":
        from scipy.special import erf

        e = erf(y * kind(GELU_SCALE))
        e += 1
        e *= y
        np.multiply(e, kind(0.5), out=y)
    else:
        raise _activation_error(activation)
    return y


NONE = Epilogue()
