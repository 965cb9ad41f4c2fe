"""The engine: validates a call, selects a backend, runs it, and checks what comes back.

The engine knows backends only through the registry and the :class:`~convengine.Backend`
contract; it never names a particular one. It distrusts them: a backend that raises or
returns an output of the wrong shape or dtype is excluded for the rest of the process and,
unless the caller named it explicitly, the call is retried on the next choice.
"""

from __future__ import annotations

import functools
import numbers
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from . import selection
from .arrays import as_float_array, conv_arrays, is_kernel_ready, kernel_ready, output_violation
from .contract import OutputSlice
from .epilogue import NONE as NO_EPILOGUE
from .epilogue import Epilogue
from .errors import BackendError, BackendFailedError  # noqa: F401  (BackendError: its old home)
from .layouts import BLOCK, NCHW, NCHW16C, clear_padding, layout_note, whole_blocks
from .problem import ConvProblem
from .registry import Registry, default_registry
from .selection import Decision, Policy

ENV_BACKEND = "CONVENGINE_BACKEND"

#: The engine's default weight-memory budget (``Engine(max_extra_weight_bytes=...)``): 20 MiB a layer
#: beyond its own weights. Winograd's transforms of a 3x3 layer of up to ~145,000 channel pairs
#: (VGG's 256 -> 512: 18 MiB) fit; those of larger ones (Wide ResNet-50's 512 and 1024 channels:
#: 36 and 144 MiB each, chosen at batch 32) and FFT's spectra of AlexNet's 5x5 layer (51 MiB for
#: 1.2 MiB of weights) do not: with them, Wide ResNet-50 at batch 32 peaked at 1.7x ONNX Runtime's
#: memory (which expands no weights), AlexNet at 1.3-1.4x.
DEFAULT_MAX_EXTRA_WEIGHT_BYTES = 20 << 20


class PreparedConv:
    """A convolution with fixed weights, ready to run on many inputs (the graph executor's unit).

    Preparation (backend choice, weight re-layout) happens once per batch size. An
    ``epilogue`` (residual add, activation) runs inside the backend when it can fuse it, and
    right after it otherwise.
    """

    def __init__(self, engine: "Engine", weights: Callable[[], tuple], problem: ConvProblem,
                 backend: Optional[str], epilogue: Epilogue = NO_EPILOGUE, first: Optional[tuple] = None):
        self.engine = engine
        self.problem = problem
        self.epilogue = epilogue
        self._weights = weights  # () -> (weight, bias), asked again for each batch size prepared
        self._first = first  # what it gave for validation, handed to the first preparation
        self._backend = backend
        self._by_batch: dict[int, _Prepared] = {}
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        """The backend chosen for the batch size given at preparation."""
        return self.backend_for(self.problem.batch)

    def backend_for(self, batch: int) -> str:
        """The backend chosen for ``batch`` (choosing and preparing it now if needed)."""
        return self._prepared(batch).decision.chosen

    def fused_for(self, batch: int) -> bool:
        """Whether the backend chosen for ``batch`` applies the epilogue itself."""
        return self._prepared(batch).fused

    def kernels(self) -> list:
        """The compiled kernels the chosen backend lists for this convolution (:mod:`convengine.runtime.precompile`).

        Only a listing: a backend whose ``kernels`` is missing or raises lists none.
        """
        prepared = self._prepared(self.problem.batch)
        backend = self.engine.registry.get(prepared.decision.chosen).backend
        listing = getattr(backend, "kernels", None)
        try:
            return list(listing(prepared.problem, self.epilogue if prepared.fused else NO_EPILOGUE)) if listing else []
        except Exception:  # a broken plugin must not stop preparation; its kernels compile on first call
            return []

    def _prepared(self, batch: int) -> "_Prepared":
        prepared = self._by_batch.get(batch)
        if prepared is None:
            with self._lock:
                if batch not in self._by_batch:
                    problem = self.problem.with_batch(batch)
                    weight, bias = self._first or self._weights()
                    self._first = None
                    self._by_batch[batch] = self.engine._prepare(problem, weight, bias, self._backend,
                                                                 self.epilogue)
                prepared = self._by_batch[batch]
        return prepared

    def __call__(self, x, residual=None, *, consume_residual: bool = False,
                 out: Optional[OutputSlice] = None) -> np.ndarray:
        """The convolution of ``x`` with the epilogue applied; ``x`` and ``residual`` are left untouched.

        ``consume_residual=True`` says the caller will not read ``residual`` again (the graph
        executor knows when): a backend that can then writes the output over it and returns it.
        ``out``, an :class:`~convengine.core.contract.OutputSlice`, is where the output goes (then
        ``out.view`` is returned): the backend writes it there if it can
        (``Backend.supports_output_slice``), else the engine copies it there; the rest of
        ``out.buffer`` is left as it is. A buffer that overlaps ``x`` or ``residual`` is written after
        the whole output is computed.
        """
        x = as_float_array(x, "input")
        expected = self.problem.input_array_shape[1:]
        if x.ndim != len(expected) + 1 or x.shape[1:] != expected:
            raise ValueError(f"input must have shape (N, {', '.join(map(str, expected))})"
                             f"{layout_note(self.problem.input_layout)}, got {x.shape}")
        if x.dtype != self.problem.numpy_dtype:  # not .name: numpy computes that in Python, per call
            raise TypeError(f"input dtype {x.dtype} does not match the prepared dtype {self.problem.dtype}")
        batch = x.shape[0]
        residual = self._check_residual(residual, batch, x.dtype)
        if out is not None:
            self._check_out(out, batch, x, residual)
        if batch == 0:  # nothing to compute, but the backend request must still be valid
            problem = self.problem.with_batch(0)
            self.engine.select(problem, self._backend)
            return np.empty(problem.output_array_shape, problem.dtype) if out is None else out.view
        return self._run(self._prepared(batch), kernel_ready(x), residual, consume_residual, out)

    def _run(self, prepared: "_Prepared", x, residual, consume_residual: bool, out: Optional[OutputSlice]) -> np.ndarray:
        """The call once its arrays are checked (:meth:`__call__`) or known good (:meth:`run_validated`):
        the backend, its failures retried elsewhere, and the epilogue it does not fuse."""
        batch = x.shape[0]
        if out is not None:
            return self._into(prepared, out, x, residual, consume_residual)
        try:
            if prepared.fused:
                if self.epilogue.residual:
                    in_place = consume_residual and prepared.residual_in_place
                    return self.engine._run_checked(prepared, (x, residual), in_place=in_place)
                return self.engine._run_checked(prepared, (x,))
            y = self.engine._run_checked(prepared, (x,))
        except _Retry:
            with self._lock:
                self._by_batch.pop(batch, None)
            return self(x, residual, consume_residual=consume_residual)
        except BackendFailedError:  # the backend is excluded now: the next call prepares another
            with self._lock:
                self._by_batch.pop(batch, None)
            raise
        if not self.epilogue:
            return y
        if np.may_share_memory(y, x) or (residual is not None and np.may_share_memory(y, residual)):
            y = y.copy()  # the epilogue writes in place: never into the caller's arrays, whatever a backend returns
        return clear_padding(self.epilogue.apply(y, residual), self.problem.output_layout, self.problem.out_channels)

    def run_validated(self, x, residual=None, *, consume_residual: bool = False,
                      out: Optional[OutputSlice] = None) -> np.ndarray:
        """:meth:`__call__` for a caller that made ``x``, ``residual`` and ``out`` to this convolution's
        prepared shapes, dtype and layouts itself: the graph executor, whose tensors' shapes were
        checked when the graph was compiled. Their validation is skipped, nothing else: the backend's
        output is checked, a failing backend excluded and the call retried, and an epilogue the backend
        does not fuse applied, as by :meth:`__call__`, whose path any other case takes (a batch size not
        prepared yet, an array the kernels cannot take as it is).

        Why: inside a model each step's Python runs with cold caches (the kernels stream megabytes
        through them between two steps), so each function call and check costs several times its
        hot-loop time: ~30 us a convolution step on ResNet-50 at batch 1, 1.7 ms of its 28.
        """
        prepared = self._by_batch.get(x.shape[0])
        if prepared is None or not is_kernel_ready(x) or (residual is not None and not is_kernel_ready(residual)):
            return self(x, residual, consume_residual=consume_residual, out=out)
        return self._run(prepared, x, residual, consume_residual, out)

    def _into(self, prepared: "_Prepared", out: OutputSlice, x, residual, consume_residual: bool) -> np.ndarray:
        """The call with ``out``: the backend writes into the slice if it says it can, else its output is copied there."""
        buffer = out.buffer
        overlaps = np.may_share_memory(buffer, x) or (residual is not None and np.may_share_memory(buffer, residual))
        if overlaps or not prepared.writes_into(out.step):  # (a backend is never given a buffer it reads)
            view = out.view
            view[...] = self(x, residual, consume_residual=consume_residual)
            return view
        try:
            args = (x, residual) if self.epilogue.residual else (x,)
            return self.engine._run_checked(prepared, args, out=out)
        except _Retry:  # nothing of the caller's was overwritten but the slice, which the next try rewrites
            with self._lock:
                self._by_batch.pop(x.shape[0], None)
            return self(x, residual, consume_residual=consume_residual, out=out)
        except BackendFailedError:
            with self._lock:
                self._by_batch.pop(x.shape[0], None)
            raise

    def _check_out(self, out, batch: int, x, residual) -> None:
        if not isinstance(out, OutputSlice):
            raise TypeError(f"out must be an OutputSlice, got {type(out).__name__}")
        layout = self.problem.output_layout
        if layout not in (NCHW, NCHW16C) or out.layout != layout:
            raise ValueError(f"out= takes NCHW and NCHW16c outputs, with out.layout the problem's output_layout; "
                             f"this convolution was prepared with output_layout={layout!r}, out.layout is {out.layout!r}")
        buffer, (c_out, h_out, w_out) = out.buffer, self.problem.output_shape[1:]
        blocked = layout == NCHW16C
        expected = (h_out, w_out, BLOCK) if blocked else (h_out, w_out)
        if (not isinstance(buffer, np.ndarray) or buffer.ndim != 2 + len(expected) or buffer.shape[0] != batch
                or buffer.shape[2:] != expected):
            shape = f"({batch}, C_total / 16, {h_out}, {w_out}, {BLOCK})" if blocked else f"({batch}, C_total, {h_out}, {w_out})"
            got = getattr(buffer, "shape", type(buffer).__name__)
            raise ValueError(f"out.buffer must be an array of shape {shape}, got {got}")
        if buffer.dtype != x.dtype or not buffer.flags.c_contiguous or not buffer.flags.writeable:
            raise ValueError(f"out.buffer must be a writable C-contiguous {x.dtype} array, got "
                             f"{buffer.dtype}{'' if buffer.flags.c_contiguous else ', not C-contiguous'}"
                             f"{'' if buffer.flags.writeable else ', read-only'}")
        start, channels, step = out.start, out.channels, out.step
        if not (type(start) is type(channels) is type(step) is int) and not all(  # (the fast path: plain ints)
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (start, channels, step)):
            raise TypeError(f"out.start, out.channels and out.step must be ints, got {start!r}, {channels!r}, {step!r}")
        total = buffer.shape[1] * (BLOCK if blocked else 1)
        if channels != c_out or step < 1 or start < 0 or start + step * (channels - 1) >= total:
            raise ValueError(f"out must hold {c_out} channels inside the buffer's {total}: got start {start}, "
                             f"{channels} channels, step {step}")
        if blocked and not whole_blocks(start, channels, step):
            raise ValueError(f"an NCHW16c out= takes whole blocks of {BLOCK} channels, step 1: got start {start}, "
                             f"{channels} channels, step {step}")

    def _check_residual(self, residual, batch: int, dtype) -> Optional[np.ndarray]:
        if not self.epilogue.residual:
            if residual is not None:
                raise ValueError("residual given, but this convolution was prepared without one (residual=True)")
            return None
        if residual is None:
            raise ValueError("residual is required: this convolution was prepared with residual=True")
        residual = as_float_array(residual, "residual")
        expected = (batch,) + self.problem.output_array_shape[1:]
        if residual.shape != expected:
            raise ValueError(f"residual must have the output's shape {expected}{layout_note(self.problem.output_layout)}, "
                             f"got {residual.shape}")
        if residual.dtype != dtype:
            raise TypeError(f"residual dtype {residual.dtype} does not match input dtype {dtype}")
        return kernel_ready(residual)


@dataclass(frozen=True)
class _Prepared:
    """One batch size's choice: the decision, the backend's executor, and whether it fuses the epilogue."""

    problem: ConvProblem
    decision: Decision
    execute: Callable
    fused: bool
    residual_in_place: bool = False  # the fused executor may write its output over the residual
    #: the backend's ``supports_output_slice`` for this problem and epilogue (``None``: it never writes into a slice)
    slices: Optional[Callable] = None
    _steps: dict = field(default_factory=dict, compare=False)  # {step: whether out= goes to the backend}

    def writes_into(self, step: int) -> bool:
        """Whether the executor takes ``out=`` slices ``step`` channels apart (asked once per step)."""
        answer = self._steps.get(step)
        if answer is None:
            try:
                answer = self.slices is not None and self.slices(step) is None
            except Exception:  # a broken plugin answers "no": the engine copies instead
                answer = False
            self._steps[step] = answer
        return answer


class _Retry(Exception):
    """Internal: the chosen backend broke and was excluded; select again."""


class Engine:
    """A configured dispatcher.

    Parameters
    ----------
    policy:
        ``"auto"`` (cost model, the default), ``"tune"`` (measure and cache), a backend name,
        or a list of names in order of preference (the first eligible one runs).
    max_rel_error:
        Accuracy budget: backends whose expected normwise relative error for the problem's
        dtype exceeds it are excluded (``1e-6`` keeps FFT and Winograd out of float32 work).
        ``None`` admits every backend.
    tuning_cache:
        Where ``"tune"`` keeps its measurements: a :class:`~convengine.core.tuning_cache.TuningCache`,
        a path, ``None`` for the default per-user location, or ``False`` for no persistence.
    max_extra_weight_bytes:
        Weight-memory budget, in bytes: where the engine chooses (``auto``, ``tune``, a preference
        list), backends whose prepared weights would take more than this beyond the layer's own
        are excluded (``Backend.extra_weight_bytes``: Winograd's transforms hold 4x a 3x3 layer's
        weights, FFT's spectra far more), and ``explain`` says so; a backend named explicitly
        runs regardless. The default, :data:`DEFAULT_MAX_EXTRA_WEIGHT_BYTES`, keeps a network's
        prepared weights near the size of its own; ``None`` admits every backend.
    tune_budget_s:
        Time allowed to measure all candidates for one problem (each runs at least once).
    registry:
        The backend registry (tests pass their own); by default every installed plugin.
    """

    def __init__(
        self,
        policy: Policy = "auto",
        *,
        max_rel_error: Optional[float] = None,
        max_extra_weight_bytes: Optional[int] = DEFAULT_MAX_EXTRA_WEIGHT_BYTES,
        tuning_cache=None,
        tune_budget_s: float = 1.0,
        registry: Optional[Registry] = None,
    ):
        self.policy = _check_policy(policy)
        if max_rel_error is not None and not _positive_number(max_rel_error):
            raise ValueError(f"max_rel_error must be a positive number or None, got {max_rel_error!r}")
        if max_extra_weight_bytes is not None and (isinstance(max_extra_weight_bytes, bool)
                                                   or not isinstance(max_extra_weight_bytes, (int, np.integer))
                                                   or max_extra_weight_bytes < 0):
            raise ValueError("max_extra_weight_bytes must be a number of bytes (an int >= 0) or None, "
                             f"got {max_extra_weight_bytes!r}")
        self.max_extra_weight_bytes = None if max_extra_weight_bytes is None else int(max_extra_weight_bytes)
        if not _positive_number(tune_budget_s):
            raise ValueError(f"tune_budget_s must be a positive number of seconds, got {tune_budget_s!r}")
        self.max_rel_error = None if max_rel_error is None else float(max_rel_error)
        self.tune_budget_s = float(tune_budget_s)
        self._registry = registry
        self._tuning_cache_arg = tuning_cache
        self._tuning_cache = None
        self._decisions: dict[tuple[ConvProblem, Optional[str], Optional[str]], Decision] = {}  # + CONVENGINE_BACKEND

    def __repr__(self) -> str:
        return (f"Engine(policy={self.policy!r}, max_rel_error={self.max_rel_error!r}, "
                f"max_extra_weight_bytes={self.max_extra_weight_bytes!r})")

    def chooses(self) -> bool:
        """Whether this engine picks backends itself (the ``auto`` or ``tune`` policy, or a preference list that
        falls back), rather than running the one its policy or ``CONVENGINE_BACKEND`` names."""
        return not os.environ.get(ENV_BACKEND) and (isinstance(self.policy, tuple)
                                                     or self.policy in selection.NAMED_POLICIES)

    def narrowed(self, max_rel_error: float) -> "Engine":
        """An engine with this one's policy, tuning cache and registry, and an accuracy budget of at most
        ``max_rel_error`` (this one's if that is smaller): for the layers of a network that must run exact."""
        budget = max_rel_error if self.max_rel_error is None else min(self.max_rel_error, max_rel_error)
        return Engine(self.policy, max_rel_error=budget, max_extra_weight_bytes=self.max_extra_weight_bytes,
                      tuning_cache=self._tuning_cache_arg, tune_budget_s=self.tune_budget_s, registry=self._registry)

    # -- public API --------------------------------------------------------------------------
    @property
    def registry(self) -> Registry:
        return self._registry if self._registry is not None else default_registry()

    def conv2d(self, x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
               backend: Optional[str] = None, residual=None, activation=None) -> np.ndarray:
        """2-D cross-correlation with PyTorch's semantics; see :func:`convengine.conv2d`."""
        x, weight, bias, unbatched = conv_arrays(x, weight, bias)
        epilogue = Epilogue(residual=residual is not None, activation=activation)
        problem = ConvProblem.from_shapes(x.shape, weight.shape, bias=bias is not None, stride=stride,
                                          padding=padding, dilation=dilation, groups=groups, dtype=x.dtype)
        if unbatched and residual is not None:
            residual = as_float_array(residual, "residual")
            if residual.ndim != 3:
                raise ValueError(f"residual must be 3-D (C_out, H_out, W_out) like the unbatched output, "
                                 f"got shape {residual.shape}")
            residual = residual[None]
        y = PreparedConv(self, lambda: (weight, bias), problem, backend, epilogue, first=(weight, bias))(x, residual)
        return y[0] if unbatched else y

    def prepare(self, weight, bias=None, *, input_shape: Sequence[int], stride=1, padding=0, dilation=1, groups=1,
                backend: Optional[str] = None, residual: bool = False,
                activation=None, input_layout: str = NCHW, output_layout: str = NCHW) -> PreparedConv:
        """Fix the weights and hyper-parameters now; run on inputs later with ``prepared(x)``.

        ``residual=True`` prepares ``y = conv(x) + residual`` (then call ``prepared(x, residual)``);
        ``activation`` (``"relu"``, ``"silu"``, ``("clip", 0, 6)``... as in :func:`convengine.conv2d`)
        is applied last. Backends that can fuse these do so.

        ``input_layout`` and ``output_layout`` (``"NCHW"``, ``"NCHW16c"``, ``"NHWC"``: see
        :mod:`convengine.core.layouts`) say how the input array and the output array (and the
        residual) hold their tensors; ``input_shape`` stays ``(N, C, H, W)``. Only backends
        that take those layouts are candidates (``explain`` lists the others as declining).
        """
        epilogue = Epilogue(residual=residual, activation=activation)
        weight, bias = _checked_weights(weight, bias, input_shape)
        held = (weight.copy(), None if bias is None else bias.copy())  # the caller's arrays may change later
        return self._prepare_conv(lambda: held, held, input_shape, stride, padding, dilation, groups, backend, epilogue,
                                  (input_layout, output_layout))

    def prepare_deferred(self, weights: Callable[[], tuple], *, input_shape: Sequence[int], stride=1, padding=0,
                         dilation=1, groups=1, backend: Optional[str] = None, residual: bool = False,
                         activation=None, input_layout: str = NCHW, output_layout: str = NCHW) -> PreparedConv:
        """:meth:`prepare` with ``weights() -> (weight, bias)`` asked for the arrays whenever a batch
        size is prepared, instead of the engine holding a copy of them.

        Why: a model's weights are then held once, in the backends' own layouts (the graph executor
        folds batch norm into each convolution's weights this way, from the graph's parameters,
        so the folded copies do not outlive their preparation). ``weights`` must return arrays
        nobody modifies afterwards (fresh ones, copies, or views of arrays nobody modifies), the
        same ones each time: a backend that takes weight views (``Backend.weight_views``) may read
        a view in place for as long as it runs; the others are given C-contiguous copies.
        """
        epilogue = Epilogue(residual=residual, activation=activation)
        first = _checked_weights(*weights(), input_shape)
        return self._prepare_conv(weights, first, input_shape, stride, padding, dilation, groups, backend, epilogue,
                                  (input_layout, output_layout))

    def _prepare_conv(self, weights, first: tuple, input_shape, stride, padding, dilation, groups,
                      backend: Optional[str], epilogue: Epilogue, layouts: tuple = (NCHW, NCHW)) -> PreparedConv:
        weight, bias = first
        input_layout, output_layout = layouts
        problem = ConvProblem.from_shapes(input_shape, weight.shape, bias=bias is not None, stride=stride,
                                          padding=padding, dilation=dilation, groups=groups, dtype=weight.dtype,
                                          input_layout=input_layout, output_layout=output_layout)
        prepared = PreparedConv(self, weights, problem, backend, epilogue, first=first)
        if problem.batch:
            _ = prepared.backend  # choose and prepare now, so errors surface here
        return prepared

    def explain(self, x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                backend: Optional[str] = None, dtype=None) -> Decision:
        """Which backend would run this problem, and why. ``x``/``weight`` may be arrays or shapes."""
        x_shape, x_dtype = _shape_and_dtype(x)
        w_shape, w_dtype = _shape_and_dtype(weight)
        problem = ConvProblem.from_shapes(x_shape, w_shape, bias=bias is not None, stride=stride, padding=padding,
                                          dilation=dilation, groups=groups,
                                          dtype=dtype or x_dtype or w_dtype or "float32")
        return self.select(problem, backend)

    def select(self, problem: ConvProblem, backend: Optional[str] = None) -> Decision:
        """Decide (or recall) the backend for ``problem``; ``backend`` overrides the policy."""
        key = (problem, backend, os.environ.get(ENV_BACKEND))
        if key not in self._decisions:
            self._decisions[key] = self._decide(problem, backend)
        return self._decisions[key]

    # -- internals ---------------------------------------------------------------------------
    def _decide(self, problem: ConvProblem, backend: Optional[str]) -> Decision:
        forced = os.environ.get(ENV_BACKEND)
        policy: Policy = forced or backend or self.policy
        explicit = bool(forced or backend) or (isinstance(policy, str) and policy not in selection.NAMED_POLICIES)
        decision = Decision(problem=problem, policy=selection.describe_policy(policy), explicit=explicit)
        selection.screen(problem, self.registry, self.max_rel_error, decision,
                         None if explicit else self.max_extra_weight_bytes)
        if forced:
            decision.notes.append(f"forced by {ENV_BACKEND}={forced}")
            selection.choose_explicit(decision, forced, f"set by {ENV_BACKEND}", self.registry)
        elif backend is not None:
            selection.choose_explicit(decision, backend, "backend= argument", self.registry)
        elif policy == "auto":
            from .costmodel import machine_profile

            selection.choose_by_cost(decision, self.registry, machine_profile(self.tuning_cache))
        elif policy == "tune":
            from .tuning import tune

            tune(self, decision)
        elif isinstance(policy, str):
            selection.choose_explicit(decision, policy, "engine policy", self.registry)
        else:
            selection.choose_preferred(decision, policy, self.registry)
        return decision

    @property
    def tuning_cache(self):
        """The persistent cache, or ``None`` when persistence is switched off."""
        if self._tuning_cache is None and self._tuning_cache_arg is not False:
            from .tuning_cache import TuningCache

            arg = self._tuning_cache_arg
            self._tuning_cache = arg if isinstance(arg, TuningCache) else TuningCache(arg)
        return self._tuning_cache

    def _prepare(self, problem: ConvProblem, weight, bias, backend: Optional[str],
                 epilogue: Epilogue = NO_EPILOGUE) -> _Prepared:
        """Select and prepare, falling back past backends whose prepare() raises (unless explicit).

        The epilogue goes to the backend only if it says it fuses it; otherwise the caller applies it.
        """
        while True:
            decision = self.select(problem, backend)
            chosen = self.registry.get(decision.chosen).backend
            try:
                fuses = getattr(chosen, "supports_epilogue", None)  # optional for backends not built on Backend
                fused = bool(epilogue) and fuses is not None and fuses(problem, epilogue) is None
                w = weight if getattr(chosen, "weight_views", False) is True else np.ascontiguousarray(weight)
                if fused:
                    execute = chosen.prepare(problem, w, bias, epilogue=epilogue)
                else:
                    execute = chosen.prepare(problem, w, bias)
                in_place = fused and epilogue.residual and getattr(chosen, "residual_in_place", False) is True
                asks = getattr(chosen, "supports_output_slice", None)
                # an epilogue the engine applies would run after the backend: only where it wrote nothing
                slices = (None if asks is None or (epilogue and not fused)
                          else functools.partial(asks, problem, epilogue if fused else NO_EPILOGUE))
                return _Prepared(problem, decision, execute, fused, in_place, slices)
            except Exception as exc:
                self._exclude(decision, f"prepare() raised {type(exc).__name__}: {exc}", exc)

    def _run_checked(self, prepared: _Prepared, args: tuple, in_place: bool = False, out: Optional[OutputSlice] = None):
        """Run the executor; a backend that raises or returns a wrong output is excluded and the call retried.

        Except after ``in_place``: the residual may be half overwritten, so no other backend can
        redo the call; it fails with a :class:`BackendFailedError` instead (the next call goes elsewhere).
        With ``out``, the output must be ``out.view`` itself.
        """
        decision = prepared.decision
        try:
            if out is not None:
                y = prepared.execute(*args, out=out)
            else:
                y = prepared.execute(*args, in_place=True) if in_place else prepared.execute(*args)
        except Exception as exc:
            self._exclude(decision, f"execute() raised {type(exc).__name__}: {exc}", exc)
            if in_place:
                reason = f"execute() raised {type(exc).__name__}: {exc}"
                raise BackendFailedError(f"backend {decision.chosen!r} failed writing over the residual: {reason}",
                                         backend=decision.chosen, reason=reason) from exc
            raise _Retry from exc
        violation = output_violation(y, prepared.problem)
        if out is not None and not violation and y is not out.view and not _same_view(y, out.view):
            violation = "was given out= but returned another array than out.view"
        if violation:
            self._exclude(decision, violation, None)
            if in_place:
                raise BackendFailedError(f"backend {decision.chosen!r} failed writing over the residual: {violation}",
                                         backend=decision.chosen, reason=violation)
            raise _Retry
        return y

    def _exclude(self, decision: Decision, reason: str, exc: Optional[BaseException]) -> None:
        """Mark a misbehaving backend broken; raise if the caller insisted on it."""
        self.registry.mark_broken(decision.chosen, reason)
        self._decisions.clear()
        if decision.explicit:
            raise BackendFailedError(f"backend {decision.chosen!r} failed: {reason}", backend=decision.chosen,
                                     reason=reason) from exc


def _checked_weights(weight, bias, input_shape) -> tuple:
    """``(weight, bias)`` of one float dtype, checked against ``input_shape``; ``weight`` as given
    (a view stays a view: :attr:`~convengine.core.contract.Backend.weight_views`), ``bias`` C-contiguous."""
    weight = as_float_array(weight, "weight")
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (N, C_in, H, W), got {tuple(input_shape)}")
    # checked on an empty slice of the kernel width where that keeps the shape's meaning: no copy of a view
    probe = weight[..., :0] if weight.ndim == 4 else weight
    _, _, bias, _ = conv_arrays(np.empty((0, *input_shape[1:]), weight.dtype), probe, bias)
    return weight, bias


def _same_view(a: np.ndarray, b: np.ndarray) -> bool:
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.strides == b.strides


def _shape_and_dtype(value) -> tuple[tuple[int, ...], Optional[str]]:
    if isinstance(value, np.ndarray):
        return value.shape, value.dtype.name
    if isinstance(value, (tuple, list)):
        return tuple(value), None
    array = np.asarray(value)
    return array.shape, array.dtype.name


def _positive_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and value > 0


def _check_policy(policy: Policy) -> Policy:
    if isinstance(policy, str) and policy:
        return policy
    if isinstance(policy, (list, tuple)) and policy and all(isinstance(p, str) and p for p in policy):
        return tuple(policy)
    raise ValueError(f"policy must be 'auto', 'tune', a backend name, or a non-empty list of backend names; got {policy!r}")


_default_engine: Optional[Engine] = None


def default_engine() -> Engine:
    """The engine behind :func:`convengine.conv2d`: ``policy="auto"``, no accuracy budget."""
    global _default_engine
    if _default_engine is None:
        _default_engine = Engine()
    return _default_engine
