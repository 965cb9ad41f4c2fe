"""Shape inference: every tensor's shape, computed once from the inputs and parameters.

Graph inputs have a free batch dimension; inference runs with batch 1, and the executor
checks real inputs against the fixed dimensions. Errors name the node and the op, so a
malformed model fails when it is built or loaded, never in the middle of a run.
"""

from __future__ import annotations

from .ir import GraphError
from .ops import OPS


def infer_shapes(graph) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {name: tuple(p.shape) for name, p in graph.params.items()}
    for spec in graph.inputs:
        shapes[spec.name] = tuple(1 if d is None else int(d) for d in spec.shape)
    for node in graph.nodes:
        if node.op not in OPS:
            raise GraphError(f"node {node.name!r}: unsupported operator {node.op!r}; supported: {', '.join(sorted(OPS))}")
        in_shapes = [shapes[name] for name in node.inputs if name]
        try:
            out_shapes = OPS[node.op].infer(node, in_shapes)
        except GraphError:
            raise
        except Exception as exc:
            raise GraphError(f"node {node.name!r} ({node.op}): cannot infer shapes from inputs {in_shapes}: {exc}") from exc
        for name, shape in zip(node.outputs, out_shapes):
            shapes[name] = tuple(int(d) for d in shape)
    missing = [name for name in graph.outputs if name not in shapes]
    if missing:
        raise GraphError(f"graph outputs {missing} are produced by no node")
    return shapes
