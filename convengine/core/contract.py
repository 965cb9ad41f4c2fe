"""What a backend is: the contract every built-in and third-party backend fulfils.

A backend is a plain object registered through the ``convengine_register_backends``
hook. Subclassing :class:`Backend` is the easy way to get the defaults right, but the
engine only relies on the attributes and methods documented here, and it never trusts
them: every call into a backend is guarded, and every output is checked.

Two-phase execution: :meth:`Backend.prepare` runs once per (problem, weights) and does
everything that does not depend on the input (weight re-layouts, kernel FFTs, uploads
to a GPU); it returns an *executor*, a callable ``execute(x) -> y`` that must be
stateless (it may be called many times, and concurrently).

Fused epilogues (optional): a backend whose :meth:`Backend.supports_epilogue` returns
``None`` for a problem receives the :class:`~convengine.core.epilogue.Epilogue` in ``prepare``
and applies it itself; its executor is then called ``execute(x, residual)`` when the
epilogue adds a residual. Backends that do not override it need not know epilogues exist:
the engine applies them on their output. A fusing backend that sets
:attr:`Backend.residual_in_place` may also be called ``execute(x, residual, in_place=True)``
when the caller gave the residual up: it then writes the output over ``residual`` and
returns it, saving a fresh output array (and, from memory, its cache misses).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from .epilogue import Epilogue
from .problem import ConvProblem

#: Accumulates the products of the direct formula (in any order, as BLAS does):
#: error grows like the float epsilon times a small factor.
EXACT = "exact"
#: Goes through a transform (FFT, Winograd): error is larger and depends on sizes.
LOSSY = "lossy"

#: Normwise relative error ``max|y - y_ref| / max|y_ref|`` each class is expected to stay
#: within, per dtype. An accuracy budget (``Engine(max_rel_error=...)``) admits a backend
#: only if its bound for the problem's dtype is at most the budget.
ERROR_BOUNDS = {
    EXACT: {"float32": 1e-6, "float64": 1e-14},
    LOSSY: {"float32": 1e-4, "float64": 1e-11},
}

Executor = Callable[[np.ndarray], np.ndarray]


class Backend:
    """Base class for convolution backends; override what differs.

    Attributes
    ----------
    name:
        Unique, lower-case identifier used in ``backend=`` and preference lists.
    device:
        ``"cpu"`` or ``"cuda"``; where the computation runs.
    numerical_class:
        :data:`EXACT` or :data:`LOSSY` (see :data:`ERROR_BOUNDS`).
    version:
        The backend's own version; part of the tuning-cache key so that an upgrade
        never reuses a stale measurement.
    residual_in_place:
        Its fused executor accepts ``in_place=True`` (see the module docstring): it reads
        each residual element before writing the output element at the same place.
    """

    name: str = ""
    device: str = "cpu"
    numerical_class: str = EXACT
    version: str = "0"
    residual_in_place: bool = False

    def availability(self) -> Optional[str]:
        """Return ``None`` if the backend can run on this machine, else the reason it cannot."""
        return None

    def supports(self, problem: ConvProblem) -> Optional[str]:
        """Return ``None`` if the backend computes ``problem``, else a short reason why not."""
        return None

    def error_bound(self, dtype: str) -> float:
        """Expected normwise relative error for ``dtype``; defaults to the numerical class's bound."""
        return ERROR_BOUNDS[self.numerical_class][dtype]

    def estimate_seconds(self, problem: ConvProblem, machine) -> Optional[float]:
        """Predicted execution time, for the ``"auto"`` policy; ``None`` means "no estimate".

        ``machine`` is a :class:`convengine.core.costmodel.MachineProfile` with the measured
        GEMM rate and memory bandwidth of this machine.
        """
        return None

    def fingerprint(self) -> dict:
        """Versions of the software and device this backend's speed depends on (tuning-cache key)."""
        return {"version": self.version}

    def supports_epilogue(self, problem: ConvProblem, epilogue: Epilogue) -> Optional[str]:
        """``None`` if ``prepare(..., epilogue=epilogue)`` applies ``epilogue`` inside the kernel, else why not.

        The default declines: the engine then applies the epilogue after ``execute``.
        """
        return "this backend does not fuse epilogues (the engine applies them after it)"

    def prepare(self, problem: ConvProblem, weight: np.ndarray, bias: Optional[np.ndarray]) -> Executor:
        """Build the input-independent state and return ``execute(x) -> y``.

        A backend that fuses epilogues takes a keyword ``epilogue`` too, passed only when its
        :meth:`supports_epilogue` accepted it; with ``epilogue.residual`` its executor is
        ``execute(x, residual) -> y`` (``residual`` has the output's shape and must not be modified).

        ``weight`` and ``bias`` are C-contiguous arrays of ``problem.dtype`` with the shapes
        ``problem.weight_shape`` and ``(out_channels,)`` (``bias`` is ``None`` when absent);
        they must not be modified. The engine passes arrays it owns and never changes, so a
        backend may keep views of them instead of copies (a model's weights are then held once).
        ``execute`` receives a C-contiguous input of ``problem.input_shape`` and returns a new
        array of ``problem.output_shape`` and dtype.
        """
        raise NotImplementedError

    def kernels(self, problem: ConvProblem, epilogue: Epilogue) -> Sequence:
        """The compiled kernels (:class:`convengine.runtime.precompile.Kernel`) running ``problem`` calls.

        Listed, they are compiled ahead, in parallel worker processes, when a model is
        prepared (see :mod:`convengine.runtime.precompile`). The default lists none: those compile on
        first call, one after another.
        """
        return ()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} on {self.device}>"
