"""The graph executor: an IR for CNNs, shape inference, per-layer backend choice, execution."""

from .builder import GraphBuilder
from .executor import CompiledGraph
from .ir import GraphError, Node, TensorSpec
from .network import Graph

__all__ = ["CompiledGraph", "Graph", "GraphBuilder", "GraphError", "Node", "TensorSpec"]
