"""Epilogues: what a convolution's output goes through before anyone else reads it.

In ResNet-style networks almost every convolution is followed by a ReLU, and every block
ends with a residual add and a ReLU. Run as separate operators these cost a pass over
memory and a dispatch each; folded into the convolution they are applied while the output
is still hot in cache. A backend that can do that says so (``Backend.supports_epilogue``)
and receives the epilogue in ``prepare``; for every other backend the engine applies it in
place on the backend's fresh output, so the result is the same either way:

    y = activation(conv(x) + bias + residual)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

#: Activations an epilogue may end with.
ACTIVATIONS = ("relu",)


@dataclass(frozen=True)
class Epilogue:
    """``residual``: add a tensor of the output's shape; ``activation``: then apply it (``"relu"`` or ``None``)."""

    residual: bool = False
    activation: Optional[str] = None

    def __post_init__(self):
        if not isinstance(self.residual, (bool, np.bool_)):
            raise TypeError(f"residual must be True or False, got {self.residual!r}")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS} or None, got {self.activation!r}")

    def __bool__(self) -> bool:
        return bool(self.residual) or self.activation is not None

    def __str__(self) -> str:
        parts = (["+ residual"] if self.residual else []) + ([self.activation] if self.activation else [])
        return ", ".join(parts) or "none"

    def apply(self, y: np.ndarray, residual: Optional[np.ndarray]) -> np.ndarray:
        """Apply in place to ``y`` (a fresh output no one else holds) and return it: the unfused path."""
        if self.residual:
            np.add(y, residual, out=y)
        if self.activation == "relu":
            np.maximum(y, 0, out=y)
        return y


NONE = Epilogue()
