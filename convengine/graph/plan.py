"""Execution plans: which backend runs each convolution of a model, saved for reuse.

A plan is tuned once (``convengine tune MODEL``) and loaded by later runs on the same
hardware. It records a digest of the model's convolutions (names, ops, shapes) and of the
host, and loading refuses a plan made for another model, edited into inconsistency, or
made on other hardware (the latter unless ``force=True``), before any work is done.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ..runtime.hardware import fingerprint_digest, host_fingerprint
from .ir import GraphError

if TYPE_CHECKING:  # annotations only: the Graph class sits above this module
    from .network import Graph

FORMAT = "convengine-plan"
VERSION = 1


def graph_digest(graph: Graph) -> str:
    convs = [(n.name, [list(graph.shapes[i]) for i in n.inputs if i], n.attrs) for n in graph.nodes if n.op == "Conv"]
    return fingerprint_digest(convs)


@dataclass
class Plan:
    model: str
    graph_digest: str
    hardware: str
    layers: dict[str, str]
    host: dict = field(default_factory=dict)

    @classmethod
    def from_compiled(cls, compiled) -> "Plan":
        host = host_fingerprint()
        return cls(compiled.graph.name, graph_digest(compiled.graph), fingerprint_digest(host),
                   compiled.layer_backends, host)

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump({"format": FORMAT, "version": VERSION, **asdict(self)}, f, indent=2)

    @classmethod
    def load(cls, path, graph: Graph, *, force: bool = False, backends=None) -> "Plan":
        """Read and validate a plan for ``graph``; ``backends`` are the registered names to check against."""
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise GraphError(f"plan {path}: cannot read it as JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise GraphError(f"plan {path}: not a convengine plan (format {FORMAT!r} version {VERSION})")
        try:
            plan = cls(data["model"], data["graph_digest"], data["hardware"], dict(data["layers"]), data.get("host", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise GraphError(f"plan {path}: malformed ({type(exc).__name__}: {exc})") from None
        convs = {n.name for n in graph.nodes if n.op == "Conv"}
        if plan.model != graph.name or plan.graph_digest != graph_digest(graph):
            raise GraphError(f"plan {path} was made for model {plan.model!r} with other layers; "
                             f"it does not fit {graph.name!r} (tune this model to make a new plan)")
        wrong_layers = sorted(set(plan.layers) ^ convs)
        if wrong_layers:
            raise GraphError(f"plan {path}: layers do not match the model's convolutions: {', '.join(wrong_layers)}")
        bad = sorted(f"{layer}: {b!r}" for layer, b in plan.layers.items() if not isinstance(b, str) or
                     (backends is not None and b not in backends))
        if bad:
            raise GraphError(f"plan {path}: unknown backends for layers {', '.join(bad)}")
        if plan.hardware != fingerprint_digest(host_fingerprint()) and not force:
            raise GraphError(f"plan {path} was tuned on other hardware ({plan.host.get('cpu_model', '?')}); "
                             "tune again here, or force it (--force / force=True)")
        return plan
