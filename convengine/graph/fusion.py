"""Which elementwise nodes after a convolution become its epilogue.

A convolution (with its batch norm already folded in) whose output only feeds an ``Add``
of a same-shaped tensor, and/or then only an activation, can apply those itself: the ResNet
block's ``conv -> bn -> relu`` and ``conv -> bn -> add(shortcut) -> relu``, and MobileNet's
and EfficientNet's activations as ONNX writes them (:data:`ACTIVATION_NODES`):

- ``Relu``; ``Clip`` (ReLU6 is ``Clip(0, 6)``); ``HardSwish``; ``HardSigmoid``; ``Sigmoid``
  (squeeze-and-excitation's gate);
- SiLU, ``x * sigmoid(x)``: a ``Sigmoid`` of the output and a ``Mul`` of the output by it,
  the output read by those two nodes and nothing else.

An intermediate tensor that another node reads too, or that the graph returns, stops the
pattern: it must exist. The absorbed nodes disappear from the schedule; the fused
convolution runs where the last of them was, so the shortcut tensor is always computed by then.

Squeeze-and-excitation blocks (EfficientNet, MobileNetV3, RegNetY) become one step too
(:func:`squeeze_excitations`): ``GlobalAveragePool -> 1x1 Conv -> activation -> 1x1 Conv ->
Sigmoid or HardSigmoid -> Mul`` by the block's input. Its two convolutions act on one pixel
per image: as convolutions they cost a backend call each (and a parallel kernel start) for a
few hundred multiply-adds; here they are two small matrix products on the channel means, and
the scaling multiplies the input in place when nothing reads it after.

Two elementwise chains become one compiled pass each (:func:`pointwise_chains`), in place
when nothing reads their input after: the exact GELU as PyTorch exports it (ConvNeXt's 18:
five passes over memory, one of them ``erf``), and a batch norm that no convolution
absorbs followed by ``Relu`` (DenseNet's pre-activation before each convolution: two passes).
ConvNeXt's block end, ``Add(bias) -> Transpose(0, 3, 1, 2) -> Mul(layer scale) -> Add(shortcut)``,
becomes one tiled pass too (:func:`layer_scale_residuals`): four passes, one of them a strided
copy, three of them allocating. :func:`fused_blocks` gathers every such block for the executor.

A ``MatMul`` of channels-last rows by a constant matrix (ConvNeXt's pointwise ``Linear``
layers) is a 1x1 convolution on an NHWC array; :func:`channels_last_linears` hands it to the
engine as one (``input_layout="NHWC"``), with the bias and GELU after it as its epilogue when
a GELU follows: a GEMM on weights packed once instead of a BLAS call that repacks them each
time, and no pass over memory for the GELU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Union

import numpy as np

from ..core.epilogue import Epilogue, apply_activation
from ..core.layouts import BLOCK
from .folding import foldable_batchnorms
from .ir import Node
from .ops import GELU_SCALE, KERNELS, OPS, batchnorm_affine

if TYPE_CHECKING:  # annotations only: the Graph class sits above this module
    from .network import Graph


#: Single activation nodes, by operator: the epilogue activation (``Engine.prepare``'s
#: ``activation``, see :mod:`convengine.core.epilogue`) each one is, given the node.
ACTIVATION_NODES = {
    "Relu": lambda node: "relu",
    "Clip": lambda node: ("clip", float(node.attrs.get("min", -math.inf)), float(node.attrs.get("max", math.inf))),
    "HardSwish": lambda node: "hardswish",
    "HardSigmoid": lambda node: ("hardsigmoid", float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))),
    "Sigmoid": lambda node: "sigmoid",
}


@dataclass(frozen=True)
class EpilogueFusion:
    """The nodes a convolution absorbs: an optional residual ``Add``, then an optional activation's nodes."""

    absorbed: tuple[Node, ...]
    residual: Optional[str] = None  # the tensor the Add adds to the convolution's output
    activation: Union[None, str, tuple] = None  # as Engine.prepare takes it: "relu", ("clip", 0.0, 6.0), ...

    @property
    def output(self) -> str:
        """The tensor the fused convolution produces (the last absorbed node's output)."""
        return self.absorbed[-1].outputs[0]

    def describe(self) -> str:
        return "+".join(node.op for node in self.absorbed)


def _reading(graph: Graph, consumers: dict[str, list[Node]]) -> Callable[[str], list[Node]]:
    """``readers(tensor)``: the nodes that read ``tensor``, none for a graph output (which must stay as it is)."""
    return lambda tensor: [] if tensor in graph.outputs else consumers.get(tensor, [])


def _sole(users: list[Node], *ops: str) -> Optional[Node]:
    """The one node of ``users``, when there is just one and it is one of ``ops`` (any op when none is named)."""
    return users[0] if len(users) == 1 and (not ops or users[0].op in ops) else None


def fusible_epilogues(graph: Graph, conv_outputs: dict[str, str],
                      consumers: dict[str, list[Node]]) -> dict[str, EpilogueFusion]:
    """``{conv name: fusion}`` for convolutions (``{name: output tensor}``) whose epilogue can be absorbed.

    ``consumers`` is :func:`.ir.consumers` of the graph's nodes, the map batch-norm folding
    (:mod:`.folding`) reads too; a folded batch norm's output is its convolution's output here.
    """

    readers = _reading(graph, consumers)
    fusions = {}
    claimed: set[str] = set()  # an Add of two convolutions' outputs is absorbed by one of them only
    for conv, tensor in conv_outputs.items():
        absorbed: list[Node] = []
        residual = None
        node = _sole(readers(tensor))
        if node is not None and node.op == "Add" and len(node.inputs) == 2 and all(node.inputs) and node.name not in claimed:
            other = node.inputs[1] if node.inputs[0] == tensor else node.inputs[0]
            if other != tensor and graph.shapes.get(other) == graph.shapes.get(tensor) == graph.shapes.get(node.outputs[0]):
                residual = other
                absorbed.append(node)
                tensor = node.outputs[0]
        nodes, activation = _activation_after(tensor, readers)
        absorbed += nodes
        if absorbed:
            fusions[conv] = EpilogueFusion(tuple(absorbed), residual, activation)
            claimed.update(n.name for n in absorbed)
    return fusions


def _activation_after(tensor: str, readers) -> tuple[list[Node], Union[None, str, tuple]]:
    """The activation nodes that alone read ``tensor``, and the epilogue activation they make (``[], None``: none).

    ``readers(tensor)`` lists the nodes reading a tensor (none for a graph output).
    """
    users = readers(tensor)
    if len(users) == 1 and users[0].op in ACTIVATION_NODES and users[0].inputs[:1] == [tensor]:
        node = users[0]
        if node.op == "Clip" and len(node.inputs) > 1 and any(node.inputs[1:]):  # bounds from tensors: not constants
            return [], None
        return [node], ACTIVATION_NODES[node.op](node)
    if len(users) == 2:  # SiLU: Sigmoid(t), then Mul(t, Sigmoid(t)) in either order
        sigmoid = next((n for n in users if n.op == "Sigmoid" and n.inputs == [tensor]), None)
        mul = next((n for n in users if n.op == "Mul" and n is not sigmoid), None)
        if sigmoid is not None and mul is not None and sorted(mul.inputs) == sorted([tensor, sigmoid.outputs[0]]):
            if [n.name for n in readers(sigmoid.outputs[0])] == [mul.name]:
                return [sigmoid, mul], "silu"
    return [], None


#: The gates a squeeze-and-excitation block ends with.
GATES = ("Sigmoid", "HardSigmoid")


@dataclass(frozen=True)
class FusedBlock:
    """Nodes that run as one executor step over the block's input ``x``, where the last of ``absorbed`` was."""

    x: str
    absorbed: tuple[Node, ...]

    @property
    def output(self) -> str:
        return self.absorbed[-1].outputs[0]

    @property
    def inputs(self) -> tuple[str, ...]:
        """The tensors ``run`` reads: ``x``, then any others it takes after ``in_place``."""
        return (self.x,)

    def describe(self) -> str:
        return "+".join(node.op for node in self.absorbed)


@dataclass(frozen=True)
class SqueezeExcitation(FusedBlock):
    """``y = x * gate(W2 @ act(W1 @ mean(x) + b1) + b2)``, per image and channel; the nodes it replaces.

    ``x`` is the block's input; ``absorbed`` its nodes, the ``Mul`` last (the block runs there).
    ``reduce``/``expand`` are the two 1x1 ``Conv`` nodes, ``activation`` and ``gate`` the
    epilogue activations after them (as :class:`~convengine.core.epilogue.Epilogue` takes them).
    """

    reduce: Node
    expand: Node
    activation: Union[str, tuple]
    gate: Union[str, tuple]

    op = "SqueezeExcitation"  # the executor's name for the step

    def kernels(self, x_shape, dtype: str, params) -> list:
        """The compiled kernels ``run`` calls on an input of ``x_shape`` (its global pool's, then its own)."""
        pool = self.absorbed[0]
        own = []
        if dtype in ("float32", "float64"):
            from ._squeeze_kernels import precompile_kernels

            own = precompile_kernels(dtype)
        return KERNELS[pool.op](pool, [x_shape], dtype, params) + own

    def _stages(self, params, dtype) -> list:
        """``[(matrix (in, out), bias or None, epilogue)]`` of the two dense layers, in ``dtype``."""
        stages = []
        for conv, spec in ((self.reduce, self.activation), (self.expand, self.gate)):
            weight = params[conv.inputs[1]]
            matrix = np.ascontiguousarray(weight.reshape(weight.shape[0], -1).T, dtype=dtype)  # (in, out)
            bias = params[conv.inputs[2]].astype(dtype) if len(conv.inputs) > 2 and conv.inputs[2] else None
            stages.append((matrix, bias, Epilogue(activation=spec)))
        return stages

    def prepare(self, params, dtype) -> Callable[[np.ndarray, bool], np.ndarray]:
        """``run(x, in_place) -> y``, the weights laid out once. ``in_place``: ``y`` may be written over ``x``.

        float32 and float64: the dense part in one compiled call and the scaling in parallel
        (:mod:`._squeeze_kernels`); other types: numpy."""
        stages = self._stages(params, dtype)
        pool = OPS["GlobalAveragePool"].run
        pool_node = self.absorbed[0]
        if np.dtype(dtype) in (np.float32, np.float64):
            return self._compiled(stages, pool, pool_node, np.dtype(dtype))

        def run(x: np.ndarray, in_place: bool) -> np.ndarray:
            n, c = x.shape[:2]
            scale = pool(pool_node, [x])[0].reshape(n, c)
            for matrix, bias, epilogue in stages:
                scale = scale @ matrix
                if bias is not None:
                    scale += bias
                apply_activation(scale, epilogue.activation, epilogue.params)
            return np.multiply(x, scale.reshape(n, c, *(1,) * (x.ndim - 2)), out=x if in_place else None)

        return run

    @staticmethod
    def _compiled(stages, pool, pool_node, dtype: np.dtype) -> Callable[[np.ndarray, bool], np.ndarray]:
        from ._squeeze_kernels import channel_scale

        excite = SqueezeExcitation._excite(stages, dtype)

        def run(x: np.ndarray, in_place: bool) -> np.ndarray:
            n, c = x.shape[:2]
            return channel_scale(x, excite(np.ascontiguousarray(pool(pool_node, [x])[0].reshape(n, c))), in_place)

        return run

    @staticmethod
    def _excite(stages, dtype: np.dtype) -> Callable[[np.ndarray], np.ndarray]:
        """``means (N, C) -> scale (N, C)``: the two dense layers and their activations in one compiled call."""
        from ._squeeze_kernels import excite

        (w1, b1, first), (w2, b2, second) = stages
        b1 = np.zeros(w1.shape[1], dtype) if b1 is None else np.ascontiguousarray(b1.reshape(-1))
        b2 = np.zeros(w2.shape[1], dtype) if b2 is None else np.ascontiguousarray(b2.reshape(-1))
        act, gate = first.kernel_activation(), second.kernel_activation()

        def run(means: np.ndarray) -> np.ndarray:
            scale = np.empty(means.shape, dtype)
            excite(means, w1, b1, *act, w2, b2, *gate, np.empty(w1.shape[1], dtype), scale)  # (scratch per call)
            return scale

        return run

    def prepare_blocked(self, params, dtype) -> Callable[[np.ndarray, bool], np.ndarray]:
        """:meth:`prepare` for a channel-blocked ``(N, C/16, H, W, 16)`` input and output (float32 and float64).

        Why: the executor then keeps EfficientNet's and MobileNetV3's blocks blocked from the
        depthwise layer through the excitation to the projecting 1x1 layer (:mod:`.blocking`)."""
        from ._pool_kernels import blocked_plane_means
        from ._squeeze_kernels import channel_scale_of_blocks

        excite = self._excite(self._stages(params, dtype), np.dtype(dtype))
        channels = params[self.reduce.inputs[1]].shape[1]

        def run(x: np.ndarray, in_place: bool) -> np.ndarray:
            n, blocks, h, w, lanes = x.shape
            means = np.empty((n * blocks, lanes), x.dtype)
            blocked_plane_means(np.ascontiguousarray(x).reshape(n * blocks, -1), means)
            scale = excite(np.ascontiguousarray(means.reshape(n, blocks * lanes)[:, :channels]))
            return channel_scale_of_blocks(x, scale, in_place)

        return run

    def blocked_kernels(self, dtype: str) -> list:
        """The compiled kernels :meth:`prepare_blocked`'s ``run`` calls."""
        from ._squeeze_kernels import precompile_blocked_kernels

        return precompile_blocked_kernels(dtype)


def squeeze_excitations(graph: Graph, consumers: dict[str, list[Node]]) -> dict[str, SqueezeExcitation]:
    """``{Mul node name: block}`` for every squeeze-and-excitation block whose intermediates nothing else reads.

    Both convolutions must be 1x1, unpadded, stride 1, ungrouped, with constant weights; the
    reduction's activation any one :func:`fusible_epilogues` recognises; the gate a
    ``Sigmoid`` or ``HardSigmoid``; the ``Mul`` of the block's input by the gate, either order.
    """
    producer = {out: node for node in graph.nodes for out in node.outputs}

    readers = _reading(graph, consumers)

    def pointwise(conv: Optional[Node]) -> bool:
        if conv is None or conv.op != "Conv" or conv.inputs[1] not in graph.params:
            return False
        if len(conv.inputs) > 2 and conv.inputs[2] and conv.inputs[2] not in graph.params:
            return False
        attrs = conv.attrs
        return (graph.params[conv.inputs[1]].shape[2:] == (1, 1) and int(attrs.get("group", 1)) == 1
                and tuple(attrs.get("strides", (1, 1))) == (1, 1) and not any(attrs.get("pads", ()))
                and tuple(attrs.get("dilations", (1, 1))) == (1, 1))

    blocks = {}
    for mul in graph.nodes:
        if mul.op != "Mul" or len(mul.inputs) != 2:
            continue
        for gate_out, x in (mul.inputs, mul.inputs[::-1]):
            gate = producer.get(gate_out)
            if gate is None or gate.op not in GATES or _sole(readers(gate_out), "Mul") is not mul:
                continue
            expand = producer.get(gate.inputs[0])
            if not pointwise(expand) or _sole(readers(expand.outputs[0]), *GATES) is not gate:
                continue
            reduce, act_nodes, activation = _reduction_before(expand.inputs[0], producer, readers)
            if not pointwise(reduce) or _sole(readers(expand.inputs[0]), "Conv") is not expand:
                continue
            pool = producer.get(reduce.inputs[0])
            if (pool is None or pool.op != "GlobalAveragePool" or pool.inputs[0] != x
                    or _sole(readers(pool.outputs[0]), "Conv") is not reduce
                    or graph.shapes.get(x) != graph.shapes.get(mul.outputs[0])):
                continue
            gate_spec = ACTIVATION_NODES[gate.op](gate)
            blocks[mul.name] = SqueezeExcitation(x, (pool, reduce, *act_nodes, expand, gate, mul), reduce, expand,
                                                 activation, gate_spec)
            break
    return blocks


def _reduction_before(hidden: str, producer: dict[str, Node],
                      readers) -> tuple[Optional[Node], list[Node], Union[None, str, tuple]]:
    """The node whose output an activation turned into ``hidden``, the activation's nodes and spec (``None, [], None``: none)."""
    last = producer.get(hidden)
    if last is None:
        return None, [], None
    if last.op in ACTIVATION_NODES:
        source = last.inputs[0]
    elif last.op == "Mul" and len(last.inputs) == 2:  # SiLU: Mul(t, Sigmoid(t))
        source = next((t for t in last.inputs if getattr(producer.get(t), "op", "") != "Sigmoid"), last.inputs[0])
    else:
        return None, [], None
    nodes, activation = _activation_after(source, readers)
    if not nodes or nodes[-1] is not last:
        return None, [], None
    return producer.get(source), nodes, activation


# -- elementwise chains ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PointwiseChain(FusedBlock):
    """Elementwise nodes run as one pass over the block's input ``x``, where the last of ``absorbed`` was.

    ``kind`` is ``"gelu"`` (``Mul(x, c) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5)``, ``c`` the
    file's float32 ``1/sqrt(2)``, in ``constant``; with ``bias``, the parameter an ``Add``
    before them adds to ``x`` along its last axis) or ``"batchnorm_relu"`` (``absorbed[0]``
    the ``BatchNormalization``, its statistics parameters).
    """

    kind: str
    constant: Optional[float] = None
    bias: Optional[str] = None

    @property
    def op(self) -> str:
        return "Gelu" if self.kind == "gelu" else "BatchNormalization+Relu"

    def kernels(self, x_shape, dtype: str, params) -> list:
        """The compiled kernels ``run`` calls on an input of ``x_shape``."""
        if self.kind == "gelu" and dtype != "float32":
            return []
        from ._pointwise_kernels import precompile_kernels

        if self.kind == "gelu":
            return precompile_kernels("bias_gelu" if self.bias else "gelu", dtype)
        return precompile_kernels("scale_shift", dtype)

    def prepare(self, params, dtype) -> Callable[[np.ndarray, bool], np.ndarray]:
        """``run(x, in_place) -> y``; ``in_place``: ``y`` may be written over ``x``."""
        from ._pointwise_kernels import gelu, scale_shift

        if self.kind == "gelu":
            c = np.dtype(dtype).type(self.constant)
            bias = np.ascontiguousarray(params[self.bias].reshape(-1), dtype) if self.bias else None
            if np.dtype(dtype) == np.float32:
                return lambda x, in_place: gelu(x, c, out=x if in_place else None, bias=bias)
            erf = OPS["Erf"].run
            erf_node = self.absorbed[-4]

            def run(x, in_place):  # other dtypes: the chain's operations with numpy (and scipy's erf)
                x = x if bias is None else x + bias
                y = erf(erf_node, [x * c])[0]
                y += 1
                y *= x
                y *= 0.5
                return y

            return run
        factor, shift = self._batchnorm_affine(params, dtype)
        return lambda x, in_place: scale_shift(x, factor, shift, True, out=x if in_place else None)

    def _batchnorm_affine(self, params, dtype):
        """A ``batchnorm_relu`` chain's per-channel ``(factor, shift)``."""
        bn = self.absorbed[0]
        return batchnorm_affine(bn, [params[name] for name in bn.inputs[1:5]], dtype)

    def blocked_kernels(self, dtype: str) -> list:
        """The compiled kernels the run :meth:`prepare_blocked` returns calls."""
        from ._pointwise_kernels import precompile_kernels

        return precompile_kernels("scale_shift_lanes", dtype)

    def prepare_blocked(self, params, dtype) -> Callable[[np.ndarray, bool], np.ndarray]:
        """``run(x, in_place) -> y`` for a ``batchnorm_relu`` chain on NCHW16c tensors (see :mod:`.blocking`): a
        new blocked array (its input is a view of a concatenation's buffer, which later layers read)."""
        from ._pointwise_kernels import scale_shift_blocked

        factor, shift = self._batchnorm_affine(params, dtype)
        whole = -(-factor.size // BLOCK) * BLOCK  # zeros for the padding channels: they stay 0
        factor, shift = (np.concatenate([a, np.zeros(whole - a.size, a.dtype)]) for a in (factor, shift))
        return lambda x, in_place: scale_shift_blocked(x, factor, shift, True)


def _scalar(params, name: str, value) -> bool:
    """Whether ``name`` is a one-element floating parameter equal to ``value``; a float32 ``value`` is compared in
    float32 (a float64 model's ``1/sqrt(2)`` rounds to GELU's float32 one)."""
    p = params.get(name)
    if p is None or p.size != 1 or p.dtype.kind != "f":
        return False
    v = p.reshape(-1)[0]
    return bool(v == value or (isinstance(value, np.float32) and np.float32(v) == value))


def _last_axis_bias(p: Optional[np.ndarray], shape) -> bool:
    """Whether parameter ``p`` (None: not a parameter) is a floating vector along the last axis of ``shape``."""
    return (p is not None and p.dtype.kind == "f" and 1 <= p.ndim <= len(shape) and p.shape[-1] == shape[-1]
            and p.size == shape[-1])


def pointwise_chains(graph: Graph, consumers: dict[str, list[Node]]) -> dict[str, PointwiseChain]:
    """``{last node name: chain}`` for every GELU and batch norm + ReLU chain whose intermediates nothing else reads.

    GELU: the constants exactly ``1/sqrt(2)`` (as float32), ``1`` and ``0.5``, one element each,
    either operand order; the output of ``x``'s shape; an ``Add`` of a bias along the last axis
    that produces ``x`` for these two nodes alone is absorbed too. Batch norm + ReLU: a batch norm that
    :func:`.folding.foldable_batchnorms` leaves (its input not a convolution's sole output),
    statistics constant, read by a ``Relu`` alone.
    """
    params, shapes = graph.params, graph.shapes
    producer = {out: node for node in graph.nodes for out in node.outputs}

    readers = _reading(graph, consumers)

    def other(node: Node, tensor: str) -> Optional[str]:  # a binary node's operand that is not `tensor`
        if len(node.inputs) != 2 or tensor not in node.inputs:
            return None
        return node.inputs[1] if node.inputs[0] == tensor else node.inputs[0]

    chains: dict[str, PointwiseChain] = {}
    for scale in graph.nodes:
        if scale.op != "Mul" or len(scale.inputs) != 2:
            continue
        for x, c in (scale.inputs, scale.inputs[::-1]):
            if x in params or not _scalar(params, c, GELU_SCALE):
                continue
            erf = _sole(readers(scale.outputs[0]), "Erf")
            add = erf and _sole(readers(erf.outputs[0]), "Add")
            mul = add and _sole(readers(add.outputs[0]), "Mul")
            half = mul and _sole(readers(mul.outputs[0]), "Mul")
            if (half is None or not _scalar(params, other(add, erf.outputs[0]), 1.0)
                    or other(mul, add.outputs[0]) != x or not _scalar(params, other(half, mul.outputs[0]), 0.5)
                    or shapes.get(half.outputs[0]) != shapes.get(x)):
                continue
            absorbed, bias = (scale, erf, add, mul, half), None
            source = producer.get(x)  # MatMul -> Add(bias) -> GELU (ConvNeXt): the bias too, if along the last axis
            x_readers = consumers.get(x, [])
            if (source is not None and source.op == "Add" and x not in graph.outputs and len(x_readers) == 2
                    and {n.name for n in x_readers} == {scale.name, mul.name}):
                for a, b in (source.inputs, source.inputs[::-1]):
                    if a not in params and shapes.get(a) == shapes.get(x) and _last_axis_bias(params.get(b), shapes[x]):
                        absorbed, bias, x = (source, *absorbed), b, a
                        break
            chains[half.name] = PointwiseChain(x, absorbed, "gelu", float(params[c].reshape(-1)[0]), bias)
            break
    folded = {bn.name for _, bn in foldable_batchnorms(graph, consumers).values()}
    for bn in graph.nodes:
        if (bn.op != "BatchNormalization" or bn.name in folded or len(bn.outputs) != 1 or len(bn.inputs) < 5
                or not all(name in params for name in bn.inputs[1:5]) or len(shapes.get(bn.inputs[0], ())) < 2):
            continue
        relu = _sole(readers(bn.outputs[0]), "Relu")
        if relu is not None and relu.name not in chains:
            chains[relu.name] = PointwiseChain(bn.inputs[0], (bn, relu), "batchnorm_relu")
    return chains


@dataclass(frozen=True)
class LayerScaleResidual(FusedBlock):
    """``y = transpose(x + bias, (0, 3, 1, 2)) * gamma + residual``: ConvNeXt's block end (its second
    ``Linear``'s bias, the permute back to NCHW, the layer scale, the shortcut) as one pass.

    ``x`` is the ``(N, C, H, W)`` shortcut (first: the executor lets a block overwrite its first
    input when nothing reads it after), ``product`` the channels-last ``(N, H, W, C)`` tensor,
    ``bias`` and ``gamma`` parameters of ``C`` elements; ``absorbed`` the ``Add``, ``Transpose``,
    ``Mul`` and ``Add``. Four passes (three of them allocating, one a strided copy) become one.
    """

    product: str
    bias: str
    gamma: str

    op = "LayerScaleResidual"

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.x, self.product)

    def kernels(self, x_shape, dtype: str, params) -> list:
        if dtype not in ("float32", "float64"):
            return []
        from ._pointwise_kernels import precompile_kernels

        return precompile_kernels("layer_scale_residual", dtype)

    def prepare(self, params, dtype) -> Callable[..., np.ndarray]:
        """``run(x, in_place, product) -> y``; ``in_place``: ``y`` may be written over the shortcut ``x``."""
        bias, gamma = (np.ascontiguousarray(params[name].reshape(-1), dtype) for name in (self.bias, self.gamma))
        if np.dtype(dtype) not in (np.float32, np.float64):
            return lambda x, in_place, product: (np.ascontiguousarray((product + bias).transpose(0, 3, 1, 2))
                                                 * gamma.reshape(-1, 1, 1) + x)
        from ._pointwise_kernels import layer_scale_residual

        def run(x, in_place, product):
            out = x if in_place and x.flags.c_contiguous else None
            return layer_scale_residual(product, x, bias, gamma, out=out)

        return run


def layer_scale_residuals(graph: Graph, consumers: dict[str, list[Node]]) -> dict[str, LayerScaleResidual]:
    """``{last Add's name: block}`` for every ``Add(bias) -> Transpose(0, 3, 1, 2) -> Mul(gamma) -> Add(shortcut)``
    whose intermediates nothing else reads; ``bias`` a parameter along ``x``'s last axis, ``gamma`` one of one
    value per channel (``(C, 1, 1)``, ``(1, C, 1, 1)`` or ``(C,)`` broadcasting that way), the shortcut a tensor
    of the output's shape; either operand order everywhere."""
    params, shapes = graph.params, graph.shapes

    readers = _reading(graph, consumers)

    def operands(node: Node, tensor: str) -> Optional[str]:  # the other operand of a binary node reading tensor
        if len(node.inputs) != 2 or node.inputs.count(tensor) != 1:
            return None
        return node.inputs[1] if node.inputs[0] == tensor else node.inputs[0]

    blocks = {}
    for add in graph.nodes:
        if add.op != "Add" or len(add.inputs) != 2:
            continue
        for x, bias in (add.inputs, add.inputs[::-1]):
            shape = shapes.get(x)
            if x in params or shape is None or len(shape) != 4 or not _last_axis_bias(params.get(bias), shape):
                continue
            transpose = _sole(readers(add.outputs[0]), "Transpose")
            if transpose is None or tuple(transpose.attrs.get("perm", ())) != (0, 3, 1, 2):
                continue
            mul = _sole(readers(transpose.outputs[0]), "Mul")
            gamma = mul and operands(mul, transpose.outputs[0])
            p = params.get(gamma) if gamma else None
            channels_first = (shape[0], shape[3], shape[1], shape[2])
            if (p is None or p.dtype.kind != "f" or p.ndim > 4 or (1,) * (4 - p.ndim) + p.shape != (1, shape[3], 1, 1)
                    or shapes.get(mul.outputs[0]) != channels_first):
                continue
            last = _sole(readers(mul.outputs[0]), "Add")
            residual = last and operands(last, mul.outputs[0])
            if (not residual or residual in params or shapes.get(residual) != channels_first
                    or shapes.get(last.outputs[0]) != channels_first):
                continue
            blocks[last.name] = LayerScaleResidual(residual, (add, transpose, mul, last), x, bias, gamma)
            break
    return blocks


@dataclass(frozen=True)
class TransposedLayerNorm(FusedBlock):
    """``LayerNormalization(Transpose(x, (0, 2, 3, 1)))`` over the channels: ConvNeXt's ``permute -> LayerNorm``
    read straight from the ``(N, C, H, W)`` tensor ``x`` (:func:`._layer_norm_kernels.channels_first_layer_norm`)
    instead of through a permuted copy. ``absorbed``: the ``Transpose`` and the ``LayerNormalization``, and a
    ``Transpose(0, 3, 1, 2)`` back when one alone reads the result (``LayerNorm2d``: the output is then NCHW)."""

    op = "TransposedLayerNorm"

    def kernels(self, x_shape, dtype: str, params) -> list:
        if dtype not in ("float32", "float64"):
            return []
        from ._layer_norm_kernels import precompile_kernels

        return precompile_kernels(dtype, channels_first=True)

    def prepare(self, params, dtype) -> Callable[[np.ndarray, bool], np.ndarray]:
        """``run(x, in_place) -> y``, a new array."""
        ln = self.absorbed[1]
        channels = params[ln.inputs[1]].size
        scale = np.ascontiguousarray(params[ln.inputs[1]].reshape(-1), dtype)
        has_bias = len(ln.inputs) > 2 and ln.inputs[2]
        bias = np.ascontiguousarray(params[ln.inputs[2]].reshape(-1), dtype) if has_bias else np.zeros(channels, dtype)
        epsilon = float(ln.attrs.get("epsilon", 1e-5))
        if np.dtype(dtype) not in (np.float32, np.float64):
            transpose, norm = OPS["Transpose"].run, OPS["LayerNormalization"].run

            def run(x, in_place):
                y = norm(ln, [transpose(self.absorbed[0], [x])[0], scale, bias])[0]
                return transpose(self.absorbed[2], [y])[0] if len(self.absorbed) > 2 else y

            return run
        from ._layer_norm_kernels import channels_first_layer_norm

        channels_last = len(self.absorbed) == 2
        return lambda x, in_place: channels_first_layer_norm(x, scale, bias, epsilon, channels_last)


def transposed_layer_norms(graph: Graph, consumers: dict[str, list[Node]]) -> dict[str, TransposedLayerNorm]:
    """``{last node's name: block}`` for every ``Transpose(0, 2, 3, 1)`` of a 4-D tensor read by a
    ``LayerNormalization`` alone, over the last axis, its scale (and bias) constant vectors of the channels,
    ``Y`` its one output; with the ``Transpose(0, 3, 1, 2)`` that alone reads ``Y``, if one does."""
    params, shapes = graph.params, graph.shapes
    readers = _reading(graph, consumers)
    blocks = {}
    for transpose in graph.nodes:
        x = transpose.inputs[0] if transpose.op == "Transpose" and transpose.inputs else None
        shape = shapes.get(x) if x else None
        if shape is None or len(shape) != 4 or tuple(transpose.attrs.get("perm", ())) != (0, 2, 3, 1):
            continue
        ln = _sole(readers(transpose.outputs[0]), "LayerNormalization")
        if (ln is None or ln.inputs[0] != transpose.outputs[0] or len(ln.outputs) != 1
                or int(ln.attrs.get("axis", -1)) % 4 != 3):
            continue
        constants = [name for name in ln.inputs[1:] if name]
        if not (all(name in params and params[name].size == shape[1] and params[name].dtype.kind == "f"
                    for name in constants) and constants[:1] == ln.inputs[1:2]):
            continue
        back = _sole(readers(ln.outputs[0]), "Transpose")
        if back is not None and tuple(back.attrs.get("perm", ())) == (0, 3, 1, 2):
            blocks[back.name] = TransposedLayerNorm(x, (transpose, ln, back))
        else:
            blocks[ln.name] = TransposedLayerNorm(x, (transpose, ln))
    return blocks


def fused_blocks(graph: Graph, consumers: dict[str, list[Node]]) -> dict:
    """Every multi-node block the executor runs as one step: ``{last node name: block}``, each with
    ``x``, ``absorbed``, ``output``, ``op``, ``describe()``, ``kernels(x_shape, dtype, params)`` and
    ``prepare(params, dtype) -> run(x, in_place, *other inputs)``. Squeeze-and-excitation first; a chain
    or layer-scale block that shares a node with an earlier block is left out."""
    blocks: dict = dict(squeeze_excitations(graph, consumers))
    claimed = {n.name for b in blocks.values() for n in b.absorbed}
    chains = {**pointwise_chains(graph, consumers), **layer_scale_residuals(graph, consumers),
              **transposed_layer_norms(graph, consumers)}
    for name, chain in chains.items():
        names = {n.name for n in chain.absorbed}
        if not names & claimed:
            blocks[name] = chain
            claimed |= names
    return blocks


# -- channels-last linear layers -------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelsLastLinear:
    """``MatMul(x, W)`` of a ``(N, H, W, C)`` tensor by a constant ``(C, O)`` matrix, run as a 1x1
    convolution on NHWC arrays; with ``bias`` and ``activation`` when the bias ``Add`` and the
    GELU chain after it are absorbed (``absorbed``: the ``MatMul``, then those nodes)."""

    absorbed: tuple[Node, ...]
    bias: Optional[str] = None
    activation: Optional[str] = None

    @property
    def x(self) -> str:
        return self.absorbed[0].inputs[0]

    @property
    def weight(self) -> str:
        return self.absorbed[0].inputs[1]

    @property
    def output(self) -> str:
        return self.absorbed[-1].outputs[0]

    def describe(self) -> str:
        return "MatMul" + ("+Add" if self.bias else "") + ("+Gelu" if self.activation else "")

    def weights(self, params) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """``(weight (O, C, 1, 1), bias)``: the convolution's form of ``W``, its transpose, as a view of
        the graph's ``(C, O)`` matrix (a backend that reads weight views keeps no copy of it: ConvNeXt-T's
        Linear layers are 104 MiB), and a fresh bias."""
        weight = params[self.weight].T[:, :, None, None]
        return weight, None if self.bias is None else np.array(params[self.bias].reshape(-1))


def channels_last_linears(graph: Graph, consumers: dict[str, list[Node]], blocks: dict) -> dict[str, ChannelsLastLinear]:
    """``{MatMul name: linear}`` for every ``MatMul`` of a 4-D activation by a 2-D floating parameter.

    A GELU chain of ``blocks`` (:func:`pointwise_chains`, with its bias along the last axis) whose
    input is the ``MatMul``'s output joins it: bias and GELU become the convolution's epilogue
    (the caller drops that chain from ``blocks``). Otherwise the ``MatMul`` stands alone (a bias
    ``Add`` after it stays a node, or ConvNeXt's block-end pass: :func:`layer_scale_residuals`).
    """
    params, shapes = graph.params, graph.shapes
    readers = _reading(graph, consumers)
    chains = {b.x: b for b in blocks.values() if isinstance(b, PointwiseChain) and b.kind == "gelu" and b.bias}
    linears = {}
    for node in graph.nodes:
        if node.op != "MatMul" or len(node.inputs) != 2 or node.inputs[0] in params:
            continue
        w, x_shape = params.get(node.inputs[1]), shapes.get(node.inputs[0], ())
        if w is None or w.ndim != 2 or w.dtype.kind != "f" or len(x_shape) != 4 or x_shape[-1] != w.shape[0]:
            continue
        chain = chains.get(node.outputs[0])
        if chain is not None and chain.constant == GELU_SCALE and _sole(readers(node.outputs[0]), "Add") is chain.absorbed[0]:
            linears[node.name] = ChannelsLastLinear((node, *chain.absorbed), chain.bias, "gelu")
        else:
            linears[node.name] = ChannelsLastLinear((node,))
    return linears
