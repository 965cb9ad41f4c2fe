"""Execution plans: which backend runs each convolution of a model, saved for reuse.

A plan is tuned once (``convengine tune MODEL``) and loaded by later runs on the same
hardware. It records a digest of the model's convolutions (names, ops, shapes) and of the
host, and loading refuses a plan made for another model, edited into inconsistency, or
made on other hardware (the latter unless ``force=True``), before any work is done.

A fleet of different machines needs one plan per kind of machine: a *plans file*
(:class:`PlanSet`, written by ``convengine tune MODEL --scheduler ADDRESS``) holds one plan
per hardware fingerprint, and whoever loads it takes the plan tuned on hardware like its
own. A machine the file does not know runs without a plan (the engine's policy, ``auto``
by default, chooses) and a :class:`PlanWarning` says so: a fleet that grew a new kind of
machine keeps running, only not tuned, where a one-plan file for other hardware is an error.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Optional, Union

from ..core.costmodel import refresh_machine_profile
from ..core.engine import Engine
from ..runtime.hardware import fingerprint_digest, host_fingerprint
from .executor import CompiledGraph
from .ir import GraphError

if TYPE_CHECKING:  # annotations only: the Graph class sits above this module
    from .network import Graph

FORMAT = "convengine-plan"
PLANS_FORMAT = "convengine-plans"
VERSION = 1


class PlanWarning(UserWarning):
    """A plans file has no plan for this machine's hardware: the model runs untuned."""


def graph_digest(graph: Graph) -> str:
    convs = [(n.name, [list(graph.shapes[i]) for i in n.inputs if i], n.attrs) for n in graph.nodes if n.op == "Conv"]
    return fingerprint_digest(convs)


def this_hardware() -> str:
    """The digest plans are keyed by: this process's :func:`host_fingerprint`."""
    return fingerprint_digest(host_fingerprint())


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

    def describe(self) -> str:
        """``"the plan for <cpu model> (hardware <digest>)"``: which plan, in words."""
        return f"the plan for {self.host.get('cpu_model', 'unknown CPU')} (hardware {self.hardware})"

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=2)

    @classmethod
    def load(cls, path, graph: Graph, *, force: bool = False, backends=None) -> Optional["Plan"]:
        """Read and validate a plan for ``graph``; ``backends`` are the registered names to check against.

        ``path`` is a one-plan file or a plans file (one plan per hardware); see
        :meth:`PlanSet.choose` for which plan comes back, and when ``None`` does.
        """
        return PlanSet.read(path).choose(graph, force=force, backends=backends).plan

    @classmethod
    def _parse(cls, data, where: str) -> "Plan":
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise GraphError(f"{where}: not a convengine plan (format {FORMAT!r} version {VERSION})")
        try:
            return cls(data["model"], data["graph_digest"], data["hardware"], dict(data["layers"]), dict(data.get("host", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise GraphError(f"{where}: malformed ({type(exc).__name__}: {exc})") from None

    def check(self, graph: Graph, where: str, backends=None) -> None:
        """Raise :class:`GraphError` unless this plan was made for ``graph`` and names only ``backends``."""
        convs = {n.name for n in graph.nodes if n.op == "Conv"}
        if self.model != graph.name or self.graph_digest != graph_digest(graph):
            raise GraphError(f"{where} was made for model {self.model!r} with other layers; "
                             f"it does not fit {graph.name!r} (tune this model to make a new plan)")
        wrong_layers = sorted(set(self.layers) ^ convs)
        if wrong_layers:
            raise GraphError(f"{where}: layers do not match the model's convolutions: {', '.join(wrong_layers)}")
        bad = sorted(f"{layer}: {b!r}" for layer, b in self.layers.items() if not isinstance(b, str) or
                     (backends is not None and b not in backends))
        if bad:
            raise GraphError(f"{where}: unknown backends for layers {', '.join(bad)}")


@dataclass(frozen=True)
class PlanChoice:
    """What :meth:`PlanSet.choose` picked: ``plan`` (``None``: run without one) and, in words, which and why."""

    plan: Optional[Plan]
    message: str


@dataclass
class PlanSet:
    """Plans for one model, one per hardware fingerprint (``{hardware digest: plan}``).

    ``single`` marks a set read from a one-plan file, whose plan is for one machine only:
    there, other hardware is an error (unless forced), not a fallback.
    """

    plans: dict[str, Plan]
    source: str = "plans"
    single: bool = False

    @classmethod
    def of(cls, plans, source: str = "plans") -> "PlanSet":
        """A set of ``plans`` tuned on different hardware for the same model (checked)."""
        plans = list(plans)
        if not plans:
            raise GraphError(f"{source}: no plans")
        models = {(p.model, p.graph_digest) for p in plans}
        if len(models) != 1:
            raise GraphError(f"{source}: plans for different models {sorted(m for m, _ in models)}")
        by_hardware = {p.hardware: p for p in plans}
        if len(by_hardware) != len(plans):
            raise GraphError(f"{source}: two plans for the same hardware")
        return cls(by_hardware, source)

    def to_json(self) -> dict:
        if self.single:
            return next(iter(self.plans.values())).to_json()
        first = next(iter(self.plans.values()))
        return {"format": PLANS_FORMAT, "version": VERSION, "model": first.model, "graph_digest": first.graph_digest,
                "plans": {digest: plan.to_json() for digest, plan in sorted(self.plans.items())}}

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=2)

    @classmethod
    def read(cls, source: Union[str, os.PathLike, dict]) -> "PlanSet":
        """A plans file or a one-plan file, from its path or its JSON already read (a ``dict``)."""
        where = f"plan {source}" if not isinstance(source, dict) else "plan"
        if isinstance(source, dict):
            data = source
        else:
            try:
                with open(source) as f:
                    data = json.load(f)
            except (OSError, ValueError) as exc:
                raise GraphError(f"{where}: cannot read it as JSON ({exc})") from None
        if isinstance(data, dict) and data.get("format") == PLANS_FORMAT and data.get("version") == VERSION:
            entries = data.get("plans")
            if not isinstance(entries, dict) or not entries:
                raise GraphError(f"{where}: malformed (no 'plans' object)")
            plans = {}
            for digest, entry in entries.items():
                plan = Plan._parse(entry, f"{where}, entry {digest}")
                if plan.hardware != digest:
                    raise GraphError(f"{where}: entry {digest} holds a plan for hardware {plan.hardware}")
                plans[digest] = plan
            return cls(plans, where)
        plan = Plan._parse(data, where)
        return cls({plan.hardware: plan}, where, single=True)

    def check(self, graph: Graph) -> None:
        """Raise :class:`GraphError` unless every plan was made for ``graph`` (backends are checked on choosing)."""
        for plan in self.plans.values():
            plan.check(graph, self.source)

    def choose(self, graph: Graph, *, force: bool = False, backends=None) -> PlanChoice:
        """The plan for this machine (:func:`this_hardware`), checked against ``graph``.

        A plans file without one for this hardware gives ``PlanChoice(None, why)`` and a
        :class:`PlanWarning`; a one-plan file for other hardware raises :class:`GraphError`
        unless ``force`` (then its plan is used anyway).
        """
        self.check(graph)
        here = this_hardware()
        plan = self.plans.get(here)
        if plan is None and self.single:
            plan = next(iter(self.plans.values()))
            if not force:
                raise GraphError(f"{self.source} was tuned on other hardware ({plan.host.get('cpu_model', '?')}); "
                                 "tune again here, or force it (--force / force=True)")
            message = f"{self.source}: {plan.describe()}, forced onto this hardware ({here})"
        elif plan is None:
            known = ", ".join(f"{p.hardware} ({p.host.get('cpu_model', '?')})" for p in self.plans.values())
            message = (f"{self.source} has no plan for this hardware ({here}); it holds plans for {known}. "
                       "Running without a plan: the engine's policy chooses")
            warnings.warn(message, PlanWarning, stacklevel=2)
            return PlanChoice(None, message)
        else:
            of = f", one of {len(self.plans)}" if len(self.plans) > 1 else ""
            message = f"{self.source}: {plan.describe()}{of}, matching this hardware"
        plan.check(graph, self.source, backends)
        return PlanChoice(plan, message)


def tune_plan(graph: Graph, *, batch: int = 1, budget_s: float = 1.0, max_rel_error: Optional[float] = None,
              progress: bool = False) -> Plan:
    """Measure every backend on each convolution of ``graph`` here, at ``batch``; the winners as a :class:`Plan`.

    ``budget_s`` is the measuring time per layer. The machine profile (the cost model's
    rates, which prune hopeless candidates) is measured again first, so that a profile
    taken on a loaded machine does not stand.
    """
    engine = Engine(policy="tune", max_rel_error=max_rel_error, tune_budget_s=budget_s)
    refresh_machine_profile(engine.tuning_cache)
    return Plan.from_compiled(CompiledGraph(graph, engine, progress=progress, batch=batch))
