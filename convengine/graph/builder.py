"""A small builder for writing CNNs as graphs, used by the model zoo.

Each method appends one node, names its parameters like PyTorch's ``state_dict`` (``name +
".weight"``), initialises them reproducibly (He-normal for conv and dense weights, as for
ReLU networks; identity statistics for batch norm) and returns the output tensor's name,
so a model reads like its PyTorch ``forward``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .ir import Node, TensorSpec
from .network import Graph
from .ops import OPS


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _onnx_pads(padding) -> list[int]:
    """int, pair or (top, bottom, left, right) -> ONNX [top, left, bottom, right]."""
    if isinstance(padding, int):
        return [padding] * 4
    if len(padding) == 2:
        return [padding[0], padding[1], padding[0], padding[1]]
    top, bottom, left, right = padding
    return [top, left, bottom, right]


class GraphBuilder:
    def __init__(self, name: str, input_shape: Sequence[int], *, seed: int = 0, dtype: str = "float32",
                 input_name: str = "input"):
        self.name = name
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)
        self.input = TensorSpec(input_name, (None,) + tuple(input_shape), dtype)
        self.nodes: list[Node] = []
        self.params: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple[int, ...]] = {input_name: (1,) + tuple(input_shape)}
        self._count = 0

    # -- plumbing ------------------------------------------------------------------------------
    def node(self, op: str, inputs: list[str], name: Optional[str] = None, **attrs) -> str:
        """Append a node with one output (named after the node) and return that output."""
        return self.multi_node(op, inputs, 1, name, **attrs)[0]

    def multi_node(self, op: str, inputs: list[str], outputs: int, name: Optional[str] = None, **attrs) -> list[str]:
        """Append a node with ``outputs`` outputs (``name``, or ``name:0``, ``name:1``... when several) and return them."""
        self._count += 1
        name = name or f"{op.lower()}_{self._count}"
        wanted = [name] if outputs == 1 else [f"{name}:{i}" for i in range(outputs)]
        outs = [out if out not in self.shapes else f"{out}:{self._count}" for out in wanted]
        node = Node(name, op, list(inputs), outs, attrs)
        self.nodes.append(node)
        self.shapes.update(zip(outs, OPS[op].infer(node, [self.shapes[i] for i in inputs if i])))
        return outs

    def param(self, name: str, value: np.ndarray) -> str:
        self.params[name] = np.ascontiguousarray(value, dtype=self.dtype)
        self.shapes[name] = value.shape
        return name

    def channels(self, x: str) -> int:
        return self.shapes[x][1]

    def build(self, outputs: Sequence[str] | str) -> Graph:
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        return Graph(self.name, [self.input], outputs, self.nodes, self.params)

    # -- layers --------------------------------------------------------------------------------
    def conv(self, x: str, out_channels: int, kernel, *, name: str, stride=1, padding=0, dilation=1, groups=1,
             bias: bool = True) -> str:
        kh, kw = _pair(kernel)
        c_in = self.channels(x)
        fan_in = c_in // groups * kh * kw
        scale = math.sqrt(2.0 / fan_in)
        w = self.param(f"{name}.weight", self.rng.standard_normal((out_channels, c_in // groups, kh, kw)) * scale)
        inputs = [x, w]
        if bias:
            inputs.append(self.param(f"{name}.bias", np.zeros(out_channels)))
        return self.node("Conv", inputs, name, kernel_shape=[kh, kw], strides=list(_pair(stride)),
                         pads=_onnx_pads(padding), dilations=list(_pair(dilation)), group=groups)

    def batchnorm(self, x: str, *, name: str, eps: float = 1e-5) -> str:
        c = self.channels(x)
        inputs = [x, self.param(f"{name}.weight", np.ones(c)), self.param(f"{name}.bias", np.zeros(c)),
                  self.param(f"{name}.running_mean", np.zeros(c)), self.param(f"{name}.running_var", np.ones(c))]
        return self.node("BatchNormalization", inputs, name, epsilon=eps)

    def dense(self, x: str, out_features: int, *, name: str) -> str:
        in_features = self.shapes[x][1]
        w = self.param(f"{name}.weight", self.rng.standard_normal((out_features, in_features)) * math.sqrt(2.0 / in_features))
        b = self.param(f"{name}.bias", np.zeros(out_features))
        return self.node("Gemm", [x, w, b], name, transB=1)

    def activation(self, x: str, kind: str = "relu", name: Optional[str] = None) -> str:
        ops = {"relu": ("Relu", {}), "sigmoid": ("Sigmoid", {}), "tanh": ("Tanh", {}),
               "leaky_relu": ("LeakyRelu", {"alpha": 0.01}), "relu6": ("Clip", {"min": 0.0, "max": 6.0})}
        if kind not in ops:
            raise ValueError(f"activation must be one of {sorted(ops)}, got {kind!r}")
        op, attrs = ops[kind]
        return self.node(op, [x], name, **attrs)

    def relu(self, x: str) -> str:
        return self.activation(x, "relu")

    def relu6(self, x: str, name: Optional[str] = None) -> str:
        """min(max(x, 0), 6) as ONNX ``Clip`` (MobileNetV2's activation)."""
        return self.activation(x, "relu6", name)

    def maxpool(self, x: str, kernel, stride=None, padding=0, *, ceil_mode: bool = False, name: Optional[str] = None) -> str:
        return self.node("MaxPool", [x], name, kernel_shape=list(_pair(kernel)), strides=list(_pair(stride or kernel)),
                         pads=_onnx_pads(padding), ceil_mode=int(ceil_mode))

    def avgpool(self, x: str, kernel, stride=None, padding=0, *, ceil_mode: bool = False,
                count_include_pad: bool = True, name: Optional[str] = None) -> str:
        return self.node("AveragePool", [x], name, kernel_shape=list(_pair(kernel)), strides=list(_pair(stride or kernel)),
                         pads=_onnx_pads(padding), ceil_mode=int(ceil_mode), count_include_pad=int(count_include_pad))

    def global_avgpool(self, x: str, name: Optional[str] = None) -> str:
        return self.node("GlobalAveragePool", [x], name)

    def flatten(self, x: str, name: Optional[str] = None) -> str:
        return self.node("Flatten", [x], name, axis=1)

    def add(self, a: str, b: str, name: Optional[str] = None) -> str:
        return self.node("Add", [a, b], name)

    def concat(self, xs: Sequence[str], axis: int = 1, name: Optional[str] = None) -> str:
        return self.node("Concat", list(xs), name, axis=axis)

    def split(self, x: str, parts: int, axis: int = 1, name: Optional[str] = None) -> list[str]:
        """``x`` in ``parts`` equal pieces along ``axis`` (``torch.chunk``), as one ONNX ``Split`` node."""
        size = self.shapes[x][axis]
        if parts < 1 or size % parts:
            raise ValueError(f"split: {size} elements on axis {axis} of {x!r} do not make {parts} equal parts")
        return self.multi_node("Split", [x], parts, name, axis=axis % len(self.shapes[x]), split=[size // parts] * parts)

    def channel_shuffle(self, x: str, groups: int, name: str) -> str:
        """ShuffleNet's channel shuffle: (N, g, C/g, H, W) -> swap the two channel axes -> (N, C, H, W).

        Three nodes, as ``torch.onnx.export`` writes torchvision's ``view``-``transpose``-``view``:
        ``Reshape`` (0 keeps the free batch size), ``Transpose``, ``Reshape``.
        """
        _, c, h, w = self.shapes[x]
        if c % groups:
            raise ValueError(f"channel_shuffle: {c} channels of {x!r} do not make {groups} groups")
        y = self.node("Reshape", [x], f"{name}.split_groups", shape=[0, groups, c // groups, h, w])
        y = self.node("Transpose", [y], f"{name}.transpose", perm=[0, 2, 1, 3, 4])
        return self.node("Reshape", [y], name, shape=[0, c, h, w])

    def dropout(self, x: str, name: Optional[str] = None) -> str:
        return self.node("Dropout", [x], name)

    def lrn(self, x: str, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, bias: float = 2.0,
            name: Optional[str] = None) -> str:
        return self.node("LRN", [x], name, size=size, alpha=alpha, beta=beta, bias=bias)
