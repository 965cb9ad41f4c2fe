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

Writing into a larger buffer (optional): a backend whose :meth:`Backend.supports_output_slice`
returns ``None`` for a problem, its epilogue and a channel step may be called
``execute(x, [residual,] out=slice)`` with an :class:`OutputSlice`: it then writes the output
into those channels of ``slice.buffer`` and returns ``slice.view``. The graph executor uses it
to put a convolution's output straight into its place in a concatenation (Inception, DenseNet,
SqueezeNet) or, with a step, a channel shuffle (ShuffleNet), instead of copying it there. Backends
that do not override it are never given ``out``: the engine copies their output into the slice.

NaN and Inf: an input or weight that is NaN or Inf must reach exactly the outputs a direct
convolution (and torch) lets it reach, those whose window holds it. A transform (FFT,
Winograd) spreads it further, so a lossy backend checks its inputs
(:func:`convengine.core.arrays.all_finite`) and takes an exact path when one is not finite.
The conformance kit checks this for every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Optional, Sequence

import numpy as np

from .epilogue import Epilogue
from .layouts import channel_slice
from .problem import ConvProblem

#: Numerical class of a backend that accumulates the products of the direct formula (in any
#: order, as BLAS does): its error grows like the float epsilon times a small factor.
EXACT = "exact"
#: Numerical class of a backend that goes through a transform (FFT, Winograd): its error is
#: larger and depends on sizes.
LOSSY = "lossy"

#: Normwise relative error ``max|y - y_ref| / max|y_ref|`` each class is expected to stay
#: within, per dtype. An accuracy budget (``Engine(max_rel_error=...)``) admits a backend
#: only if its bound for the problem's dtype is at most the budget.
ERROR_BOUNDS = {
    EXACT: {"float32": 1e-6, "float64": 1e-14},
    LOSSY: {"float32": 1e-4, "float64": 1e-11},
}

@dataclass(frozen=True)
class OutputSlice:
    """Where an executor writes its output instead of a new array: ``channels`` channels of ``buffer``,
    from ``start``, ``step`` apart (channel ``j`` of the output is ``buffer[:, start + j * step]``).

    ``buffer`` is a C-contiguous, writable ``(N, C_total, H_out, W_out)`` array of the problem's
    dtype and batch; the engine checks that it fits the problem, and never passes one that
    overlaps the input or the residual. In one image, output channel ``j`` starts ``(start + j * step) * H_out *
    W_out`` elements in; images are ``C_total * H_out * W_out`` elements apart (so the slice is
    one contiguous run only for one image and ``step == 1``). Everything outside the slice must be
    left as it is.

    For a problem whose ``output_layout`` is ``"NCHW16c"`` (``layout`` says so), ``buffer`` is
    ``(N, C_total / 16, H_out, W_out, 16)``, ``start`` and ``channels`` are multiples of 16 and
    ``step`` is 1: the output's channel blocks are the buffer's blocks ``start / 16`` onwards
    (a concatenation of blocked convolution outputs, held blocked).
    """

    #: The whole ``(N, C_total, H_out, W_out)`` buffer (C-contiguous, writable), ``(N, C_total / 16, H_out, W_out, 16)`` blocked.
    buffer: np.ndarray
    #: The buffer channel that takes output channel 0.
    start: int
    #: The output's channel count (``problem.out_channels``).
    channels: int
    #: Buffer channels between consecutive output channels (2 for a two-group channel shuffle's place).
    step: int = 1
    #: The buffer's layout: the problem's ``output_layout``, ``"NCHW"`` or ``"NCHW16c"``.
    layout: str = "NCHW"

    @cached_property
    def view(self) -> np.ndarray:
        """The slice as an ``(N, channels, H_out, W_out)`` view of ``buffer`` (blocked: ``(N, channels / 16, H_out, W_out,
        16)``): what the executor returns (this object)."""
        return channel_slice(self.buffer, self.start, self.channels, self.step, self.layout)


#: What ``prepare`` returns: ``execute(x) -> y`` (``execute(x, residual)`` for a fused residual).
Executor = Callable[[np.ndarray], np.ndarray]


class Backend:
    """Base class for convolution backends; override what differs.

    The engine reads the class attributes below and calls the methods; only ``name`` and
    ``prepare`` have no usable default. Every default declines safely: no estimate, no fused
    epilogue, no listed kernels.
    """

    #: Unique identifier used in ``backend=``, policies and preference lists (lower case by convention).
    name: str = ""
    #: ``"cpu"`` or ``"cuda"``: where the computation runs.
    device: str = "cpu"
    #: :data:`EXACT` or :data:`LOSSY`; decides the default :meth:`error_bound` and the kit's tolerance.
    numerical_class: str = EXACT
    #: The backend's own version: part of the tuning-cache key (the default :meth:`fingerprint`), so that
    #: an upgrade never reuses a stale measurement.
    version: str = "0"
    #: Its fused executor accepts ``in_place=True`` (see the module docstring): it reads each residual
    #: element before writing the output element at the same place.
    residual_in_place: bool = False
    #: Its :meth:`prepare` takes ``weight`` as any strided view, e.g. the transpose of a
    #: channels-last ``(C, O)`` matrix (ConvNeXt's Linear layers), and may keep it and read it in
    #: place; it never writes to it. Other backends are given a C-contiguous array (a copy where
    #: the caller's was not), so that a model's weights need not be held twice.
    weight_views: bool = False

    def availability(self) -> Optional[str]:
        """Return ``None`` if the backend can run on this machine, else the reason it cannot.

        Asked once per process (the answer is cached); import heavy libraries and probe devices
        here, not at import. An exception counts as "unavailable", with the exception as the reason.
        """
        return None

    def supports(self, problem: ConvProblem) -> Optional[str]:
        """Return ``None`` if the backend computes ``problem``, else a short reason why not.

        The reason is shown to users (``explain``, error messages), so say what is missing:
        ``"only stride 1 (got stride 2x2)"``. An exception excludes the backend for that problem.
        """
        return None

    def error_bound(self, dtype: str) -> float:
        """Expected normwise relative error for ``dtype``; defaults to the numerical class's bound."""
        return ERROR_BOUNDS[self.numerical_class][dtype]

    def estimate_seconds(self, problem: ConvProblem, machine) -> Optional[float]:
        """Predicted seconds for one ``execute`` of ``problem``, for the ``"auto"`` policy; ``None``
        means "no estimate" (ranked after every backend that has one).

        ``machine`` is a :class:`~convengine.core.costmodel.MachineProfile`: this machine's
        measured GEMM rate per dtype (``machine.gemm_flops(dtype)``, FLOP/s), memory bandwidth
        (``machine.bandwidth``, bytes/s) and parallel kernel start time (``machine.parallel_launch_s``).
        A negative, NaN or non-number estimate is ignored with a warning.
        """
        return None

    def extra_weight_bytes(self, problem: ConvProblem) -> Optional[int]:
        """Bytes its prepared state holds for ``problem`` beyond the layer's own weights (as many again
        in its layout does not count): Winograd's transforms, FFT's kernel spectra. ``None``: none
        worth counting (the default).

        Read by the engine's weight-memory budget (``Engine(max_extra_weight_bytes=...)``), which
        keeps a backend whose preparation would hold more out of what the engine chooses.
        """
        return None

    def fingerprint(self) -> dict:
        """What this backend's speed depends on, as a JSON-serialisable ``dict`` (tuning-cache key).

        The default is ``{"version": self.version}``; add your library's version and the device
        name (``{"version": ..., "scipy": scipy.__version__}``), so that a tuned choice is measured
        again after any of them changes.
        """
        return {"version": self.version}

    def supports_layouts(self, problem: ConvProblem) -> Optional[str]:
        """``None`` if the executor takes its input in ``problem.input_layout`` and returns its output
        in ``problem.output_layout`` (:mod:`~convengine.core.layouts`; asked only when either is
        not NCHW), else why not. The default declines: NCHW only.

        A problem's shapes are logical, ``(N, C, H, W)``; the arrays have
        ``problem.input_array_shape`` and ``problem.output_array_shape``. An ``NCHW16c``
        output's padding channels must be written as 0 (the next layer sums over them).
        """
        return "NCHW only"

    def supports_epilogue(self, problem: ConvProblem, epilogue: Epilogue) -> Optional[str]:
        """``None`` if ``prepare(..., epilogue=epilogue)`` applies ``epilogue`` inside the kernel, else why not.

        The default declines: the engine then applies the epilogue after ``execute``.
        """
        return "this backend does not fuse epilogues (the engine applies them after it)"

    def supports_output_slice(self, problem: ConvProblem, epilogue: Epilogue, step: int) -> Optional[str]:
        """``None`` if the executor prepared for ``problem`` and ``epilogue`` takes ``out=`` an :class:`OutputSlice`
        whose channels are ``step`` apart, else why not.

        ``epilogue`` is what ``prepare`` was given (:data:`~convengine.core.epilogue.NONE` when the
        engine applies it). The default declines: the engine then copies the output into the slice.
        """
        return "this backend writes new arrays only (the engine copies its output into the slice)"

    def prepare(self, problem: ConvProblem, weight: np.ndarray, bias: Optional[np.ndarray]) -> Executor:
        """Build the input-independent state and return ``execute(x) -> y``.

        A backend that fuses epilogues takes a keyword ``epilogue`` too, passed only when its
        :meth:`supports_epilogue` accepted it; with ``epilogue.residual`` its executor is
        ``execute(x, residual) -> y`` (``residual`` has the output's shape and must not be modified).

        ``weight`` and ``bias`` are C-contiguous arrays of ``problem.dtype`` with the shapes
        ``problem.weight_shape`` and ``(out_channels,)`` (``bias`` is ``None`` when absent);
        they must not be modified. The engine passes arrays it owns and never changes, so a
        backend may keep views of them instead of copies (a model's weights are then held once).
        ``execute`` receives a C-contiguous input of ``problem.input_array_shape`` (``input_shape``
        unless :meth:`supports_layouts` accepted another layout) and returns a new array of
        ``problem.output_array_shape`` and dtype.
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
