"""Running a graph: prepare every layer once, then execute nodes in order, freeing as we go.

Convolutions go through the engine (``Engine.prepare``), which picks a backend per layer
under its policy; this module knows no backend. Batch normalisation that directly follows a
convolution is folded into that convolution's weights and bias at compile time (unless
``fold_batchnorm=False``), a following residual ``Add`` and activation become the
convolution's epilogue, and a squeeze-and-excitation block runs as one step (both unless
``fuse_epilogues=False``; see :mod:`.folding` and :mod:`.fusion`). A channel ``Concat``
binds its output to a buffer its inputs were written into by their producers, and a channel
shuffle after it costs nothing (unless ``concat_in_place=False``; see :mod:`.placement`). Each
intermediate tensor is dropped as soon as its last consumer has run, so peak memory follows
the widest point of the graph, not its length. The weights are held once: each backend keeps
its own layout of a layer's weights, the graph its parameters; ConvNeXt's channels-last Linear
matrices, re-laid out in the graph's ``params`` (equal values, one buffer:
:mod:`convengine.runtime.strides`), are read there in place by a backend that takes weight
views (``direct``), since they are most of that model's weights. Before the first run, the Numba kernels the
layers will call are compiled in parallel processes where they are not cached yet
(:mod:`convengine.runtime.precompile`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..core.arrays import kernel_ready
from ..core.contract import ERROR_BOUNDS, EXACT, OutputSlice
from ..core.engine import default_engine
from ..core.layouts import BLOCK, NCHW, NCHW16C, NHWC, to_nchw
from ..core.problem import ConvProblem
from ..runtime.allocator import keep_large_buffers
from ..runtime.precompile import precompile as precompile_kernels
from ..runtime.strides import spread_rows
from ..runtime.threads import get_num_threads
from .blocking import BLOCKED_SUFFIX, ConvTensors, LayoutPlan, plan_layouts
from .folding import ConvWeights, foldable_batchnorms
from .fusion import (
    ChannelsLastLinear,
    EpilogueFusion,
    PointwiseChain,
    SqueezeExcitation,
    channels_last_linears,
    fused_blocks,
    fusible_epilogues,
)
from .ir import GraphError, Node, consumers
from .ops import (
    INPLACE,
    KERNELS,
    OPS,
    blocked_global_avgpool,
    blocked_global_avgpool_kernels,
    blocked_pool_kernels,
    blocked_pool_step,
    conv_problem_args,
    pools_blocked,
)
from .placement import Gather, Placement, Slot, plan_placement

if TYPE_CHECKING:  # annotations only: the Graph class sits above this module
    from .network import Graph

#: Convolutions with fewer input channels than this run on exact backends whatever the engine's budget
#: (where the engine chooses; a named backend runs): a lossy backend's gain is small there, and such layers sit
#: near a network's input, where every later layer amplifies their error. Inception-v3's two
#: 32-channel 3x3 layers after its stem on Winograd took the model from 5.9e-5 to 1.2e-4 of ONNX
#: Runtime's output (normwise), past the 1e-4 the ONNX families are held to; ResNet's, GoogLeNet's
#: and DenseNet's Winograd layers all have 64 and more.
LOSSY_MIN_CHANNELS = 64

#: Operators whose output may share memory with their first input.
VIEW_OPS = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Transpose", "Split", "Slice"}


@dataclass
class Step:
    node: Node
    conv: Any = None  # PreparedConv for Conv nodes
    fusion: Optional[EpilogueFusion] = None  # the Add and activation nodes a Conv step absorbed
    squeeze: Optional[SqueezeExcitation] = None  # the block this step runs (squeeze-and-excitation, a pointwise chain)
    block: Any = None  # its prepared run(x, in_place) -> y
    linear: Optional[ChannelsLastLinear] = None  # the MatMul (and bias, GELU) a conv step on NHWC arrays runs
    layouts: tuple = (NCHW, NCHW)  # a conv or pool step's input and output layouts (see .blocking)
    inputs: list[str] = field(default_factory=list)
    release: list[str] = field(default_factory=list)  # tensors whose last consumer is this step
    inplace: bool = False  # may overwrite its first input (an intermediate nothing reads later)
    consume_residual: bool = False  # a conv whose fused residual (an intermediate nothing reads later) may hold its output
    gather: Optional[Gather] = None  # a Concat (and shuffle) whose output is a view of a buffer
    copies: list[tuple[str, Slot]] = field(default_factory=list)  # the gather's inputs it copies into the buffer
    homes: list[tuple[int, Slot]] = field(default_factory=list)  # outputs (by index) that live in a buffer slot


class CompiledGraph:
    """A graph with every convolution prepared; ``run`` may be called many times."""

    def __init__(self, graph: Graph, engine=None, *, fold_batchnorm: bool = True, fuse_epilogues: bool = True,
                 plan=None, progress: bool = False, batch: int = 1, precompile: bool = True, concat_in_place: bool = True,
                 blocked_layouts: bool = True):
        self.graph = graph
        self.batch = batch
        self.engine = engine or default_engine()
        self.plan = plan
        self._exact_engines: dict = {}  # dtype -> the engine of the narrow layers (see _engine_for)
        self.steps: list[Step] = []
        layers = dict(plan.layers) if plan is not None else {}
        readers = consumers(graph.nodes)  # one map, for folding and fusion alike
        folded = foldable_batchnorms(graph, readers) if fold_batchnorm else {}
        skipped = {bn.name for _, bn in folded.values()}
        blocks = fused_blocks(graph, readers) if fuse_epilogues else {}  # squeeze-excitation, GELU, BN+ReLU
        # channels-last MatMuls by constant weights: 1x1 convolutions on NHWC arrays, where a backend takes them
        linears, candidates = {}, channels_last_linears(graph, readers, blocks) if fuse_epilogues else {}
        # their matrices re-laid in the graph (equal values, each old array released) so that a backend
        # reading weight views (direct) reads them in place as fast as a packed copy: held once, not twice
        spread_rows(graph.params, [linear.weight for linear in candidates.values()])
        for name, linear in candidates.items():
            prepared = self._prepare_linear(linear)
            if prepared is not None:
                linears[name] = (linear, prepared)
                absorbed = {n.name for n in linear.absorbed}
                blocks = {k: b for k, b in blocks.items() if not absorbed & {n.name for n in b.absorbed}}
        in_blocks = {n.name for b in blocks.values() for n in b.absorbed}
        conv_outputs = {n.name: (folded[n.name][1] if n.name in folded else n).outputs[0]
                        for n in graph.nodes if n.op == "Conv" and n.name not in in_blocks}
        fusions = fusible_epilogues(graph, conv_outputs, readers) if fuse_epilogues else {}
        # A fused convolution runs where its last absorbed node was (the residual exists by then),
        # a squeeze-and-excitation block where its Mul was.
        runs_at = {f.absorbed[-1].name: conv for conv, f in fusions.items()}
        runs_at.update({linear.absorbed[-1].name: name for name, (linear, _) in linears.items()})
        skipped |= {n.name for f in fusions.values() for n in f.absorbed} | set(fusions) | (in_blocks - set(blocks))
        skipped |= {n.name for linear, _ in linears.values() for n in linear.absorbed}
        by_name = {n.name: n for n in graph.nodes}
        nodes = [by_name[runs_at[n.name]] if n.name in runs_at else n
                 for n in graph.nodes if n.name not in skipped or n.name in runs_at]
        pending = {}  # conv step -> what preparing it needs, once its layouts are known
        for node in nodes:
            step = Step(node=node, inputs=[name for name in node.inputs if name])
            if node.op == "Conv":
                fusion = fusions.get(node.name)
                pending[id(step)] = (node, folded.get(node.name), layers.get(node.name), fusion)
                step.fusion = fusion
                step.inputs = [node.inputs[0]] + ([fusion.residual] if fusion and fusion.residual else [])
                outputs = [fusion.output] if fusion else [conv_outputs[node.name]]
                step.node = Node(node.name, node.op, node.inputs, outputs, node.attrs)
            elif node.name in linears:
                linear, step.conv = linears[node.name]
                step.inputs = [linear.x]
                step.node = Node(node.name, node.op, [linear.x], [linear.output])
                step.linear = linear
            elif node.name in blocks:
                block = step.squeeze = blocks[node.name]
                step.block = block.prepare(graph.params, graph.inputs[0].dtype if graph.inputs else "float32")
                step.inputs = list(block.inputs)
                step.node = Node(node.name, block.op, list(block.inputs), [block.output])
            self.steps.append(step)
        produced = {out for s in self.steps if s.linear is None for out in s.node.outputs}  # (NHWC: not a channel slice)
        self.blocked_layouts = blocked_layouts
        self.placement = (plan_placement(graph, produced, readers, self._overwritten_alone()) if concat_in_place
                          else Placement({}, {}, {}))
        self.blocked_buffers: set[str] = set()  # the placement's buffers held channel-blocked (see .blocking)
        self._place()
        layouts = self._plan_layouts(pending) if blocked_layouts else LayoutPlan({}, frozenset(), ())
        convs = [s for s in self.steps if id(s) in pending]
        if progress:
            from tqdm import tqdm

            convs = tqdm(convs, desc=f"preparing {graph.name}", unit="layer", leave=False)
        for step in convs:
            node, fold, backend, fusion = pending[id(step)]
            step.conv = self._prepare_conv(node, fold, backend, fusion, step.layouts)
        self._convert_layouts(layouts)
        self._plan_releases()
        #: what compiling the kernels ahead did (None when ``precompile=False``)
        self.precompiled = (precompile_kernels(self.kernels(), processes=get_num_threads(), progress=progress)
                            if precompile else None)

    # -- preparation -------------------------------------------------------------------------
    def _engine_for(self, node: Node, backend: Optional[str]):
        """The engine that chooses ``node``'s backend: exact backends only for a layer of fewer than
        :data:`LOSSY_MIN_CHANNELS` input channels, where the engine chooses (not where a plan, the
        engine's policy or ``CONVENGINE_BACKEND`` names the backend)."""
        if (backend is not None or self.graph.shapes[node.inputs[0]][1] >= LOSSY_MIN_CHANNELS
                or not self.engine.chooses()):
            return self.engine
        dtype = str(self.graph.params[node.inputs[1]].dtype)
        if dtype not in self._exact_engines:
            self._exact_engines[dtype] = self.engine.narrowed(ERROR_BOUNDS[EXACT].get(dtype, ERROR_BOUNDS[EXACT]["float32"]))
        return self._exact_engines[dtype]

    def _prepare_conv(self, node: Node, fold, backend: Optional[str], fusion: Optional[EpilogueFusion],
                      layouts: tuple = (NCHW, NCHW)):
        try:
            engine = self._engine_for(node, backend)
            return engine.prepare_deferred(ConvWeights(self.graph.params, node, fold[1] if fold else None),
                                           input_shape=self._input_shape(node), backend=backend,
                                           residual=fusion is not None and fusion.residual is not None,
                                           activation=fusion.activation if fusion else None,
                                           input_layout=layouts[0], output_layout=layouts[1],
                                           **conv_problem_args(node))
        except (ValueError, TypeError) as exc:
            raise GraphError(f"node {node.name!r} (Conv): {exc}") from exc

    def _input_shape(self, node: Node) -> tuple:
        """A Conv node's input shape at the compiled batch size."""
        return (self.batch,) + tuple(self.graph.shapes[node.inputs[0]][1:])

    def _plan_layouts(self, pending: dict) -> LayoutPlan:
        """Which convolutions, pools and concatenations read and write NCHW16c (see :mod:`.blocking`): sets each
        such step's ``layouts``, a blocked pool's (and a global average pool's) ``block`` that runs it, and
        ``blocked_buffers``."""
        convs = {i: ConvTensors(s.inputs[0], s.fusion.residual if s.fusion else None, s.node.outputs[0])
                 for i, s in enumerate(self.steps) if id(s) in pending}
        dtype = self._dtype()
        pools = {i: (s.inputs[0], s.node.outputs[0]) for i, s in enumerate(self.steps)
                 if s.node.op in ("MaxPool", "AveragePool") and s.conv is None and s.block is None and s.inputs
                 and s.inputs[0] in self.graph.shapes and pools_blocked(s.node, self._batch_shape(s.inputs[0]), dtype)}
        # a squeeze-and-excitation block passes the layout through as a pool does (its channels unchanged)
        excitations = {i: (s.inputs[0], s.node.outputs[0]) for i, s in enumerate(self.steps)
                       if isinstance(s.squeeze, SqueezeExcitation) and dtype in ("float32", "float64")
                       and len(self.graph.shapes.get(s.inputs[0], ())) == 4}
        pools.update(excitations)
        # so does a batch norm + ReLU (DenseNet's, between a block's concatenation and its 1x1 layer)
        chains = {i: (s.inputs[0], s.node.outputs[0]) for i, s in enumerate(self.steps) if self._blockable_chain(s, dtype)}
        pools.update(chains)
        sinks = {i: s.inputs[0] for i, s in enumerate(self.steps)
                 if s.node.op == "GlobalAveragePool" and s.block is None and not s.homes and len(s.inputs) == 1
                 and len(self.graph.shapes.get(s.inputs[0], ())) == 4 and dtype in ("float32", "float64")
                 and self.graph.shapes[s.inputs[0]][1] % BLOCK == 0}  # (its result: the same memory in whole blocks only)
        reads: dict[str, list[int]] = {}
        for i, step in enumerate(self.steps):
            for name in step.inputs:
                reads.setdefault(name, []).append(i)
        gathers, together = self._blockable_gathers()
        kept = set().union(*together) if together else set()
        keep = (set(self.graph.outputs) | set(self.placement.homes) | {s.gather.output for s in self.steps if s.gather}) - kept
        problems: dict[int, Any] = {}

        def chooses_same(i: int, input_layout: str, output_layout: str) -> bool:
            node, fold, backend, fusion = pending[id(self.steps[i])]
            try:
                if i not in problems:
                    weight = self.graph.params[node.inputs[1]]
                    has_bias = ConvWeights(self.graph.params, node, fold[1] if fold else None).has_bias
                    problems[i] = ConvProblem.from_shapes(self._input_shape(node), weight.shape, bias=has_bias,
                                                          dtype=weight.dtype, **conv_problem_args(node))
                base = problems[i]
                other = dataclasses.replace(base, input_layout=input_layout, output_layout=output_layout)
                engine = self._engine_for(node, backend)
                return engine.select(other, backend).chosen == engine.select(base, backend).chosen
            except Exception:  # no backend takes the layouts (or a plugin fails): NCHW
                return False

        channels = {out: self.graph.shapes[out][1] for out in [c.output for c in convs.values()]
                    + [out for _, out in pools.values()] + [out for _, out in gathers.values()]}
        plan = plan_layouts(convs, reads, keep, channels, chooses_same, pools, gathers, together, sinks)
        for i, step in enumerate(self.steps):
            if i in plan.layouts:
                step.layouts = plan.layouts[i]
            if (i in excitations or i in chains) and i in plan.layouts:
                step.block = step.squeeze.prepare_blocked(self.graph.params, dtype)
            elif i in pools and i in plan.layouts:
                step.block = blocked_pool_step(step.node, self._batch_shape(step.inputs[0]), dtype)
            if i in sinks and i in plan.layouts:
                step.block = blocked_global_avgpool
        self.blocked_buffers = {s.gather.slot.buffer for i, s in enumerate(self.steps) if i in gathers and i in plan.layouts}
        return plan

    def _blockable_gathers(self) -> tuple[dict[int, tuple[tuple[str, ...], str]], list[frozenset]]:
        """The gather steps whose buffer could be held blocked, as ``(inputs, output)`` by step index, and the
        tensors of each such buffer (blocked all or none): every slot in it whole blocks of 16 channels, no
        channel shuffle, no graph output, every input a tensor some step produces (see :mod:`.blocking`)."""
        members: dict[str, set[str]] = {}
        for tensor, slot in self.placement.homes.items():
            members.setdefault(slot.buffer, set()).add(tensor)
        bad = {slot.buffer for slot in self.placement.homes.values() if not slot.whole_blocks}
        produced = {out for s in self.steps for out in s.node.outputs}
        gathers = {}
        for i, step in enumerate(self.steps):
            gather = step.gather
            if gather is None:
                continue
            members.setdefault(gather.slot.buffer, set()).add(gather.output)
            if (gather.absorbed or gather.output in self.graph.outputs or not gather.slot.whole_blocks
                    or any(not slot.whole_blocks or t not in produced for t, slot in gather.inputs)):
                bad.add(gather.slot.buffer)
            gathers[i] = (tuple(step.inputs), gather.output)
        gathers = {i: g for i, g in gathers.items() if self.steps[i].gather.slot.buffer not in bad}
        return gathers, [frozenset(m) for b, m in members.items() if b not in bad]

    def _batch_shape(self, tensor: str) -> tuple:
        """``tensor``'s shape at the compiled batch size."""
        return (self.batch,) + tuple(self.graph.shapes[tensor][1:])

    def _convert_layouts(self, plan: LayoutPlan) -> None:
        """Rename blocked tensors in the steps that read and write them, and insert the planned conversions."""
        before: dict[int, list[Step]] = {}
        for conversion in plan.conversions:
            convert = functools.partial(_to_nchw, channels=self.graph.shapes[conversion.target][1])
            node = Node(f"{conversion.target} (NCHW)", "LayoutConversion", [conversion.source], [conversion.target])
            before.setdefault(conversion.before, []).append(Step(node=node, inputs=[conversion.source], block=convert))
        steps = []
        for i, step in enumerate(self.steps):
            steps += before.get(i, [])
            if step.layouts != (NCHW, NCHW):
                x_layout, out_layout = step.layouts
                step.inputs = [plan.name(step.inputs[0], x_layout)] + [plan.name(r, out_layout) for r in step.inputs[1:]]
                node = step.node
                inputs = step.inputs if step.gather is not None else [step.inputs[0], *node.inputs[1:]]
                step.node = Node(node.name, node.op, inputs, [plan.name(node.outputs[0], out_layout)], node.attrs)
                step.copies = [(plan.name(t, x_layout), slot) for t, slot in step.copies]
            steps.append(step)
        self.steps = steps

    def _prepare_linear(self, linear: ChannelsLastLinear):
        """The engine's 1x1 convolution for ``linear`` on NHWC arrays, or ``None`` where no backend takes it
        (the ``MatMul`` then runs as a node)."""
        n, h, w, c = self.graph.shapes[linear.x]
        try:
            return self.engine.prepare_deferred(functools.partial(linear.weights, self.graph.params),
                                                input_shape=(self.batch, c, h, w), activation=linear.activation,
                                                input_layout=NHWC, output_layout=NHWC)
        except Exception:  # no backend for the layout (or a plugin failing): the plain MatMul is always right
            return None

    def _overwritten_alone(self) -> set[str]:
        """Tensors read by one step only, one that may run in place over its first input (an elementwise
        operator, a fused block): DenseNet's batch norm + ReLU after each concatenation, unless that may run
        on blocked tensors (:meth:`_blockable_chain`), where it writes a new array anyway."""
        reads: dict[str, int] = {}
        for step in self.steps:
            for name in step.inputs:
                reads[name] = reads.get(name, 0) + 1
        dtype = self._dtype()
        return {s.inputs[0] for s in self.steps
                if s.inputs and (s.node.op in INPLACE or s.block is not None) and reads[s.inputs[0]] == 1
                and not (self.blocked_layouts and self._blockable_chain(s, dtype))}

    def _dtype(self) -> str:
        """The activations' dtype: the graph input's (float32 for a graph without inputs)."""
        return self.graph.inputs[0].dtype if self.graph.inputs else "float32"

    def _blockable_chain(self, step: Step, dtype: str) -> bool:
        """Whether ``step`` is a batch norm + ReLU that can pass the blocked layout through (as a pool does)."""
        return (isinstance(step.squeeze, PointwiseChain) and step.squeeze.kind == "batchnorm_relu" and dtype == "float32"
                and len(self.graph.shapes.get(step.inputs[0], ())) == 4)

    def _place(self) -> None:
        """Turn the planned ``Concat`` nodes into gathers, drop the shuffles they absorbed, mark placed outputs."""
        placement = self.placement
        absorbed = {n.name for g in placement.gathers.values() for n in g.absorbed}
        self.steps = [s for s in self.steps if s.node.name not in absorbed]
        for step in self.steps:
            gather = placement.gathers.get(step.node.name)
            if gather is not None:
                step.gather = gather
                step.node = Node(gather.node.name, gather.node.op, gather.node.inputs, [gather.output], gather.node.attrs)
                step.copies = [(t, slot) for t, slot in gather.inputs if placement.homes.get(t) != slot]
            else:
                step.homes = [(i, placement.homes[out]) for i, out in enumerate(step.node.outputs) if out in placement.homes]

    def kernels(self) -> list:
        """The compiled kernels the first run will call: each convolution's backend's and each operator's.

        :mod:`convengine.runtime.precompile` compiles them ahead, in parallel; a kernel listed by
        nobody compiles on first call instead.
        """
        params = self.graph.params
        dtype = self._dtype()
        kernels = []
        for step in self.steps:
            if step.conv is not None:
                kernels += step.conv.kernels()
            elif isinstance(step.squeeze, (SqueezeExcitation, PointwiseChain)) and step.layouts == (NCHW16C, NCHW16C):
                kernels += step.squeeze.blocked_kernels(dtype)
            elif step.squeeze is not None:
                kernels += step.squeeze.kernels((self.batch,) + tuple(self.graph.shapes[step.squeeze.x][1:]), dtype, params)
            elif step.layouts == (NCHW16C, NCHW16C) and step.node.op in ("MaxPool", "AveragePool"):  # on blocked tensors
                kernels += blocked_pool_kernels(dtype)
            elif step.layouts == (NCHW16C, NCHW):  # a global average pool of a blocked tensor
                kernels += blocked_global_avgpool_kernels(dtype)
            elif step.node.op in KERNELS:
                shapes = [params[n].shape if n in params else (self.batch,) + tuple(self.graph.shapes[n][1:])
                          for n in step.node.inputs if n]
                kernels += KERNELS[step.node.op](step.node, shapes, dtype, params)
        return kernels

    def _plan_releases(self) -> None:
        last_use: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            for name in step.inputs:
                last_use[name] = i
        keep = set(self.graph.outputs) | set(self.graph.params)
        for name, i in last_use.items():
            if name not in keep:
                self.steps[i].release.append(name)
        self._plan_inplace(last_use)

    def _plan_inplace(self, last_use: dict[str, int]) -> None:
        """Mark elementwise steps that may overwrite their first input, and convolutions their residual.

        Allowed only when no one can observe it: the buffer is not the caller's input or a
        parameter, and neither that tensor nor any view of the same memory (Flatten, Reshape,
        Identity... return views) is read after this step or returned.
        """
        # tensors in one buffer (a gather's output, its inputs' homes) are one memory for this purpose
        placed = {t: slot.buffer for t, slot in self.placement.homes.items()}
        placed.update({s.gather.output: s.gather.slot.buffer for s in self.steps if s.gather is not None})
        placed.update({t + BLOCKED_SUFFIX: buffer for t, buffer in placed.items()})  # (blocked buffers' tensors)
        root: dict[str, str] = {}
        for step in self.steps:
            node = step.node
            for out in node.outputs:
                root[out] = placed.get(out) or (root.get(node.inputs[0], node.inputs[0]) if node.op in VIEW_OPS else out)
        protected = {spec.name for spec in self.graph.inputs} | set(self.graph.params)
        group_end: dict[str, float] = {}
        for name, r in root.items():
            end = float("inf") if name in self.graph.outputs else last_use.get(name, -1)
            group_end[r] = max(group_end.get(r, -1), end)
        shapes = self.graph.shapes

        def expendable(name: str, i: int) -> bool:  # step i may overwrite tensor `name`
            r = root.get(name, name)
            return r not in protected and group_end.get(r) == i

        for i, step in enumerate(self.steps):
            first = step.node.inputs[0] if step.node.inputs else ""
            step.inplace = ((step.node.op in INPLACE or step.block is not None) and expendable(first, i)
                            and shapes.get(first) == shapes.get(step.node.outputs[0]))
            # the residual as the step reads it: a blocked one under its renamed tensor (``_convert_layouts``)
            residual = step.inputs[1] if step.fusion is not None and step.fusion.residual else None
            step.consume_residual = (bool(residual) and root.get(residual, residual) != root.get(first, first)
                                     and expendable(residual, i))

    @property
    def layer_backends(self) -> dict[str, str]:
        """``{conv node name: backend}`` for the batch size given at preparation."""
        return self.layer_backends_for(self.batch)

    def layer_backends_for(self, batch: int) -> dict[str, str]:
        return {s.node.name: s.conv.backend_for(batch) for s in self.steps if s.conv is not None and s.node.op == "Conv"}

    @property
    def layer_layouts(self) -> dict[str, tuple[str, str]]:
        """``{conv node name: (input layout, output layout)}``: which convolutions read or write NCHW16c (:mod:`.blocking`)."""
        return {s.node.name: s.layouts for s in self.steps if s.conv is not None and s.node.op == "Conv"}

    @property
    def gathered(self) -> dict[str, str]:
        """``{Concat node name: "Concat"}`` for every ``Concat`` whose output is a view of a buffer its inputs were
        placed in (``"Concat+Reshape+Transpose+Reshape"`` with the channel shuffle it absorbed); see :mod:`.placement`."""
        return {s.node.name: s.gather.describe() for s in self.steps if s.gather is not None}

    @property
    def fused(self) -> dict[str, str]:
        """``{conv node name: "Add+Relu"}``: the nodes each convolution absorbed as its epilogue, and
        ``{Mul node name: "GlobalAveragePool+Conv+Relu+Conv+Sigmoid+Mul"}`` for squeeze-and-excitation blocks."""
        return {s.node.name: (s.fusion or s.squeeze or s.linear).describe() for s in self.steps
                if s.fusion is not None or s.squeeze is not None or s.linear is not None}

    # -- execution ---------------------------------------------------------------------------
    def run(self, inputs, *, timings: Optional[dict] = None):
        """Outputs for ``inputs`` (an array, or ``{name: array}``): one array, or a dict if several.

        ``timings``, when given, receives ``{node name: seconds}`` for every step.
        """
        env = self._bind_inputs(inputs)
        params = self.graph.params
        # the placement's buffers, while a view of one lives (each tensor in one is alive until its gather has run)
        buffers: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        for step in self.steps:
            start = time.perf_counter() if timings is not None else 0.0
            if step.conv is not None:
                args = [env[n] if n in env else params[n] for n in step.inputs]
                out = None
                if step.homes:
                    slot = step.homes[0][1]
                    out = OutputSlice(self._buffer(buffers, slot.buffer, args[0]), slot.start, slot.channels, slot.step,
                                      step.layouts[1])
                outputs = [step.conv.run_validated(*args, consume_residual=step.consume_residual, out=out)]
            elif step.gather is not None:
                outputs = [self._gather(step, env, params, buffers)]
            elif step.block is not None:
                outputs = [step.block(env[step.inputs[0]], step.inplace, *(env[n] for n in step.inputs[1:]))]
            else:
                node = step.node
                args = [(env[n] if n in env else params[n]) if n else None for n in node.inputs]
                outputs = (INPLACE[node.op] if step.inplace else OPS[node.op].run)(node, args)
            if step.homes and step.conv is None:  # another producer's result goes to its place now
                for i, slot in step.homes:
                    view = slot.of(self._buffer(buffers, slot.buffer, outputs[i]))
                    view[...] = outputs[i]
                    outputs[i] = view
            for name, value in zip(step.node.outputs, outputs):
                env[name] = value
            for name in step.release:
                env.pop(name, None)
            if timings is not None:
                timings[step.node.name] = time.perf_counter() - start
        # Later runs free and allocate the same activations: from now on reuse them, do not map them
        # afresh. Not before the first run ends: the weights it prepared (batch norm folded, packed
        # layouts) leave temporaries that freed mappings hand back, a kept heap would not.
        keep_large_buffers()
        results = {name: env[name] for name in self.graph.outputs}
        return results[self.graph.outputs[0]] if len(results) == 1 else results

    def _buffer(self, buffers, name: str, like: np.ndarray) -> np.ndarray:
        """The buffer ``name`` of this run, allocated for ``like``'s batch and dtype on first use."""
        buffer = buffers.get(name)
        if buffer is None:
            shape = self.placement.buffers[name]
            if name in self.blocked_buffers:  # (N, C/16, H, W, 16): see .blocking
                shape = (shape[0] // BLOCK,) + tuple(shape[1:]) + (BLOCK,)
            buffer = buffers[name] = np.empty((like.shape[0],) + tuple(shape), like.dtype)
        return buffer

    def _gather(self, step: Step, env, params, buffers) -> np.ndarray:
        """A gather step: copy the inputs that do not live in their slot there; the output is the buffer's view."""
        first = step.inputs[0]  # (its blocked name where the buffer is blocked)
        buffer = self._buffer(buffers, step.gather.slot.buffer, env[first] if first in env else params[first])
        for tensor, slot in step.copies:
            slot.of(buffer)[...] = env[tensor] if tensor in env else params[tensor]
        return step.gather.slot.of(buffer)

    def _bind_inputs(self, inputs) -> dict[str, np.ndarray]:
        specs = {s.name: s for s in self.graph.inputs}
        if not isinstance(inputs, dict):
            if len(specs) != 1:
                raise GraphError(f"graph {self.graph.name!r} has inputs {sorted(specs)}; pass a dict {{name: array}}")
            inputs = {next(iter(specs)): inputs}
        unknown = sorted(set(inputs) - set(specs))
        missing = sorted(set(specs) - set(inputs))
        if unknown or missing:
            raise GraphError(f"graph {self.graph.name!r} inputs: unknown {unknown}, missing {missing}; expected {sorted(specs)}")
        env = {}
        batch = None
        for name, value in inputs.items():
            spec = specs[name]
            array = np.asarray(value)
            expected = "(" + ", ".join("N" if d is None else str(d) for d in spec.shape) + ")"
            if array.dtype.name != spec.dtype:
                raise GraphError(f"input {name!r} must be {spec.dtype}, got {array.dtype}")
            if array.ndim != len(spec.shape) or any(d is not None and d != a for d, a in zip(spec.shape, array.shape)):
                raise GraphError(f"input {name!r} must have shape {expected}, got {array.shape}")
            if batch is not None and array.shape[0] != batch:
                raise GraphError(f"inputs disagree on the batch size ({batch} vs {array.shape[0]} for {name!r})")
            batch = array.shape[0]
            env[name] = kernel_ready(array)
        return env


def _to_nchw(x: np.ndarray, in_place: bool, channels: int) -> np.ndarray:
    """A blocked tensor's NCHW copy, for the steps that read NCHW (a conversion step's run)."""
    return to_nchw(x, NCHW16C, channels)
