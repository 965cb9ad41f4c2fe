"""convengine: 2-D convolution with a choice of backends, and the means to choose well.

>>> import numpy as np, convengine as ce
>>> x = np.arange(9.0).reshape(1, 1, 3, 3)
>>> k = np.array([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 1, 2, 2)
>>> ce.conv2d(x, k)[0, 0]
array([[19., 25.],
       [37., 43.]])
"""

from __future__ import annotations

from typing import Optional

# isort: off
from .runtime import threads as _threads  # noqa: F401  (first: sets thread-pool variables before numpy loads BLAS)
# isort: on
from . import _moved
from ._version import __version__  # noqa: F401  (public: convengine.__version__)
from .core.contract import EXACT, LOSSY, Backend
from .core.engine import Engine, PreparedConv, default_engine
from .core.epilogue import Epilogue
from .core.errors import BackendDeclinedError, BackendError, BackendFailedError, BackendUnavailableError, PluginWarning
from .core.hookspecs import hookimpl
from .core.problem import ConvProblem
from .core.registry import BackendInfo, default_registry, list_backends  # noqa: F401  (default_registry: public, for plugin tooling)
from .core.selection import Decision
from .runtime.threads import ThreadingWarning, get_num_threads, set_num_threads

_moved.install()

__all__ = [
    "Backend", "BackendDeclinedError", "BackendError", "BackendFailedError", "BackendInfo", "BackendUnavailableError",
    "ConvProblem", "Decision", "EXACT",
    "Engine", "Epilogue", "LOSSY", "PluginWarning", "PreparedConv", "conv2d", "explain", "get_num_threads", "hookimpl",
    "list_backends", "load_onnx", "set_num_threads", "ThreadingWarning", "to_onnx",
]


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, backend: Optional[str] = None,
           residual=None, activation=None):
    """2-D cross-correlation with the semantics of ``torch.nn.functional.conv2d``.

    ``x`` is ``(N, C_in, H, W)`` (or unbatched ``(C_in, H, W)``), ``weight`` is
    ``(C_out, C_in/groups, kH, kW)``, ``bias`` is ``(C_out,)`` or ``None``; float32 or float64,
    all of one dtype, which the output keeps. ``stride`` and ``dilation`` are an int or a pair;
    ``padding`` an int, a pair, a 4-tuple ``(top, bottom, left, right)``, ``"valid"`` or
    ``"same"``. ``backend`` names one backend; otherwise the default engine (policy ``"auto"``)
    chooses. Inputs are never modified.

    Epilogue (what ResNet and MobileNet blocks do after a convolution): ``residual``, an array
    of the output's shape, is added, then ``activation`` applied: ``"relu"``, ``"relu6"``,
    ``"sigmoid"``, ``"silu"``, ``"hardswish"``, ``"hardsigmoid"``, or a tuple with parameters,
    ``("clip", min, max)``, ``("hardsigmoid", alpha, beta)`` (see :mod:`convengine.core.epilogue`);
    backends that can fuse these into the convolution do.
    """
    return default_engine().conv2d(x, weight, bias, stride=stride, padding=padding, dilation=dilation,
                                   groups=groups, backend=backend, residual=residual, activation=activation)


def load_onnx(source):
    """A :class:`convengine.graph.Graph` from an ONNX file, bytes or ``ModelProto`` (needs ``onnx``)."""
    from .graph.onnx import load_onnx as _load

    return _load(source)


def to_onnx(graph, *, opset: int = 17):
    """An ``onnx.ModelProto`` of a :class:`convengine.graph.Graph` (needs ``onnx``)."""
    from .graph.onnx_export import to_onnx as _export

    return _export(graph, opset=opset)


def explain(x, weight, bias=None, **params) -> Decision:
    """The default engine's decision for a problem; see :meth:`Engine.explain`."""
    return default_engine().explain(x, weight, bias, **params)
