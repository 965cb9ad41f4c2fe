"""The peer libraries convengine is timed against: ``torch.nn.functional.conv2d`` and ONNX Runtime.

Peers are used only when installed; they are baselines, never dependencies. In tables and
benchmark parameters they are named ``peer:torch`` and ``peer:onnxruntime`` (:data:`PEERS`),
apart from any backend (the ``torch`` plugin backend is a backend, not a peer). Each peer
runs with convengine's thread count, so that a ratio compares algorithms, not core counts.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..core.problem import ConvProblem
from ..runtime.threads import get_num_threads

#: The peer libraries, by the name they carry in tables and benchmark parameters.
PEERS = ("peer:torch", "peer:onnxruntime")


class PeerUnavailable(RuntimeError):
    """A peer cannot run here (not installed, or it has no kernel for the problem); says why."""


def make_peer(name: str, problem: ConvProblem, x, w, b) -> Callable[[], object]:
    """A warm-able call of peer ``name`` (one of :data:`PEERS`) on ``x`` with weights ``w``, ``b``.

    Building it is the peer's "prepare" (tensor wrapping, an ONNX Runtime session); calling
    it runs the convolution once. Raises :class:`PeerUnavailable` with the reason when the
    peer is not installed or cannot run the problem.
    """
    if name == "peer:torch":
        run = torch_peer(problem, x, w, b)
        if run is None:
            raise PeerUnavailable("torch is not installed (pip install torch)")
        return run
    if name == "peer:onnxruntime":
        return onnxruntime_peer(problem, x, w, b)
    raise KeyError(f"no peer named {name!r}; peers: {', '.join(PEERS)}")


def available_peers(problem: ConvProblem, x, w, b) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """Every peer that can run ``problem`` here, and why each other one cannot."""
    peers, reasons = {}, {}
    for name in PEERS:
        try:
            peers[name] = make_peer(name, problem, x, w, b)
        except PeerUnavailable as exc:
            reasons[name] = str(exc)
    return peers, reasons


def torch_peer(problem: ConvProblem, x, w, b) -> Optional[Callable[[], object]]:
    """A warm ``torch.nn.functional.conv2d`` call on the same data, or ``None`` without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(get_num_threads())
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    tb = None if b is None else torch.from_numpy(b)
    top, bottom, left, right = problem.padding
    if top == bottom and left == right:
        pad_args = dict(padding=(top, left))
    else:  # torch's conv2d takes symmetric padding only; pad explicitly, as a user would
        tx = F.pad(tx, (left, right, top, bottom))
        pad_args = dict(padding=0)

    def run():
        with torch.no_grad():
            return F.conv2d(tx, tw, tb, stride=problem.stride, dilation=problem.dilation, groups=problem.groups, **pad_args)

    return run


def onnx_conv_model(problem: ConvProblem, w, b):
    """A one-node ONNX model ``Y = Conv(X, W[, B])`` of ``problem``, with the weights as initializers.

    Opset 13 and IR version 7, which every ONNX Runtime of recent years loads.
    """
    from onnx import TensorProto, helper, numpy_helper

    elem = TensorProto.FLOAT if problem.dtype == "float32" else TensorProto.DOUBLE
    top, bottom, left, right = problem.padding
    initializers = [numpy_helper.from_array(np.ascontiguousarray(w), "W")]
    inputs = ["X", "W"]
    if b is not None:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(b), "B"))
        inputs.append("B")
    node = helper.make_node("Conv", inputs, ["Y"], kernel_shape=[problem.kernel_h, problem.kernel_w],
                            strides=list(problem.stride), pads=[top, left, bottom, right],
                            dilations=list(problem.dilation), group=problem.groups)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("X", elem, list(problem.input_shape))],
                              [helper.make_tensor_value_info("Y", elem, list(problem.output_shape))], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="convengine.bench")
    model.ir_version = 7
    return model


def onnxruntime_peer(problem: ConvProblem, x, w, b) -> Callable[[], object]:
    """ONNX Runtime (CPU provider) running the one-node Conv model on ``x``.

    Session options: :func:`onnxruntime_options` (convengine's thread count, sequential, no
    spinning workers, default graph optimizations). Raises :class:`PeerUnavailable` without
    onnx and onnxruntime, or when ONNX Runtime has no kernel for the problem (its CPU
    provider has no float64 Conv).
    """
    try:
        import onnx  # noqa: F401  (the model builder)
        import onnxruntime as ort
    except ImportError as exc:
        raise PeerUnavailable(f"onnx and onnxruntime are not both installed ({exc}); "
                              "pip install onnx onnxruntime") from None
    options = onnxruntime_options(ort)
    try:
        session = ort.InferenceSession(onnx_conv_model(problem, w, b).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # e.g. NOT_IMPLEMENTED: no float64 Conv kernel
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "NOT_IMPLEMENTED" in message:
            raise PeerUnavailable(f"onnxruntime has no {problem.dtype} Conv kernel (NOT_IMPLEMENTED)") from None
        raise PeerUnavailable(f"onnxruntime cannot run it: {message[:200]}") from None
    feeds = {"X": np.ascontiguousarray(x)}

    def run():
        return session.run(None, feeds)[0]

    return run


def onnxruntime_options(ort=None, threads: Optional[int] = None):
    """The ``SessionOptions`` every ONNX Runtime contender gets.

    ``intra_op_num_threads`` is convengine's thread count (or ``threads``), execution is
    sequential, idle workers do not spin (``session.intra_op.allow_spinning=0``, for the
    reason convengine sets ``OMP_WAIT_POLICY=PASSIVE``: spinning threads would steal the
    cores of whichever contender runs next in an interleaved round), and graph optimizations
    stay at ONNX Runtime's default, ``ORT_ENABLE_ALL``: what a user gets.
    """
    if ort is None:
        import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return options
