"""Which batch normalisations fold into the convolution before them, and the folded weights.

Inference-mode ``BatchNormalization`` is a per-channel affine map, so a convolution whose
output only feeds one can absorb it into its weights and bias at compile time: the batch
norm then costs nothing per run and its node leaves the schedule. This runs before epilogue
fusion (:mod:`.fusion`), which then sees the batch norm's output as the convolution's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

from .ir import Node

if TYPE_CHECKING:  # annotations only: the Graph class sits above this module
    from .network import Graph


def foldable_batchnorms(graph: Graph, consumers: dict[str, list[Node]]) -> dict[str, tuple[Node, Node]]:
    """``{conv name: (conv, bn)}`` for BatchNormalization nodes that alone consume a Conv's output.

    ``consumers`` is :func:`.ir.consumers` of the graph's nodes, shared with epilogue fusion.
    The batch norm's statistics must be parameters (constants), or there is nothing to fold.
    """
    folds = {}
    for node in graph.nodes:
        if node.op != "Conv":
            continue
        users = consumers.get(node.outputs[0], [])
        if (len(users) == 1 and users[0].op == "BatchNormalization" and node.outputs[0] not in graph.outputs
                and all(name in graph.params for name in users[0].inputs[1:5])):
            folds[node.name] = (node, users[0])
    return folds


def fold_batchnorm(weight: np.ndarray, bias: Optional[np.ndarray], bn: Node, params) -> tuple[np.ndarray, np.ndarray]:
    """Conv followed by BN == conv with weight * s and bias (b - mean) * s + beta, s = gamma / sqrt(var + eps).

    Computed in float64 and rounded once to the weight's dtype, so folding adds one rounding,
    not the several a float32 computation would. New arrays: ``params`` is never modified.
    """
    gamma, beta, mean, var = (params[name].astype(np.float64) for name in bn.inputs[1:5])
    scale = gamma / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
    b = np.zeros_like(mean) if bias is None else bias.astype(np.float64)
    new_weight = (weight.astype(np.float64) * scale[:, None, None, None]).astype(weight.dtype)
    new_bias = ((b - mean) * scale + beta).astype(weight.dtype)
    return new_weight, new_bias


class ConvWeights:
    """A convolution node's ``(weight, bias)`` from the graph's parameters, batch norm folded in:
    what :meth:`convengine.core.engine.Engine.prepare_deferred` asks for at each preparation.

    Computed when asked, never kept: the graph holds its parameters once and each backend its
    own layout of them, so a folded copy (ResNet-50: 98 MiB) lives only while a layer is being
    prepared. Returns fresh arrays, so a backend may keep them.
    """

    def __init__(self, params, conv: Node, bn: Optional[Node] = None):
        self.params, self.conv, self.bn = params, conv, bn

    @property
    def has_bias(self) -> bool:
        """Whether the weights come with a bias: the node's own, or the folded batch norm's shift."""
        return self.bn is not None or self._own_bias is not None

    @property
    def _own_bias(self) -> Optional[str]:
        inputs = self.conv.inputs
        return inputs[2] if len(inputs) > 2 and inputs[2] else None

    def __call__(self) -> tuple[np.ndarray, Optional[np.ndarray]]:
        weight = self.params[self.conv.inputs[1]]
        bias = self.params[self._own_bias] if self._own_bias else None
        if self.bn is not None:
            return fold_batchnorm(weight, bias, self.bn, self.params)
        return weight.copy(), None if bias is None else bias.copy()
