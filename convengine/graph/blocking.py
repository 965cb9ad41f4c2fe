"""Which tensors stay channel-blocked (NCHW16c) between the convolutions that write and read them.

Why: inside a network a convolution reads what the previous one wrote. In NCHW a register
tile reads one short run of each of C planes (more streams than the hardware prefetcher
follows) and its store transposes the tile into 16-32 planes; in NCHW16c a pixel's 16
channels are one vector, so a tile reads and writes contiguous runs. ONNX Runtime keeps
ResNet's activations blocked from the first convolution to the global pool for this reason.
Measured on ResNet-50's bottleneck stages run by ``direct`` back to back (2-vCPU Xeon):
0.87-0.94x the NCHW time at batch 1, 0.75x at batch 32 on the 56x56 stage.

The rule: a convolution's output is blocked when a convolution reads it as its input (or adds
it to a blocked output: ResNet's downsampled shortcut) and the engine would choose the same
backend for every convolution with the layouts that follow (``chooses_same``: a backend that
takes NCHW16c natively, so blocking never changes the choice). Graph outputs, tensors written
into a concatenation's buffer that cannot be held blocked (below) and tensors whose channels
would grow by more than an eighth when padded to whole blocks stay NCHW (:func:`pads_little`):
padded, MobileNetV3's 24- and 40-channel tensors made its 1x1 layers compute up to a third
more (whole model 1.05-1.07x the NCHW time). MNASNet's and MobileNetV3's 72-, 120-, 184- and
200-channel ones (the depthwise layers' own: ``grouped`` takes NCHW16c there) are held blocked,
the last block partly padding (in-process, interleaved: 0.976-0.992x the time of holding
whole blocks only). A convolution whose fused residual is NCHW
writes NCHW (a blocked copy of the residual would cost what blocking saves: MobileNetV3's
112x112 stem). Any other reader of a blocked tensor, and a convolution adding a blocked
residual to an NCHW output (ResNet's last block, whose output goes to the global pool), get
an NCHW copy (:class:`Conversion`), made once, before the first step that needs it.

A pool between two convolutions passes the layout through: its output is blocked when its
input is and a convolution (or another such pool) reads it blocked, and it then runs on the
blocked tensor (``graph._pool_kernels.blocked_pool``). ResNet's and SqueezeNet's stems
(convolution -> max pool -> convolution) then stay blocked, where the stem used to write
NCHW for the pool and the next convolution read NCHW.

A batch norm + ReLU step (:class:`.fusion.PointwiseChain`) passes the layout through the same way,
writing a new blocked array: DenseNet's, between each dense layer's concatenation and its 1x1
layer, so that its block's buffer is held blocked, its 3x3 layers write their slots there and its
1x1 layers read blocked (in-process, interleaved: DenseNet-121 0.953x at batch 1, 0.985-1.013x at
batch 32, 1.022x at batch 8, the time of holding the buffer NCHW with a copy per concatenation).

A squeeze-and-excitation block (:class:`.fusion.SqueezeExcitation`, one step) passes the layout
through the same way: the channel means of the blocked tensor, the two dense layers, and each
lane scaled in place (``SqueezeExcitation.prepare_blocked``), so that EfficientNet's and
MobileNetV3's blocks stay blocked from the depthwise layer to the projecting one (in-process,
interleaved: EfficientNet-B0 0.934-0.936x, MobileNetV3-L 0.966-0.986x, MobileNetV3-S
0.957-0.985x the time of running the excitation on NCHW).

A concatenation's buffer (:mod:`.placement`) is held blocked when every tensor that lives in
it is blocked, each in whole blocks of 16 channels, and a convolution or pool reads the
concatenation blocked: its convolutions then write their blocks of the buffer directly
(Inception's and GoogLeNet's branches, SqueezeNet's expand layers), and the layers after it
read it blocked. The tensors of one buffer are blocked all or none (``together``).

A global average pool reads a blocked tensor as it is (``sinks``): its ``(N, C, 1, 1)``
result is the same memory in both layouts, so a network's last convolution (ResNet's last
block, Inception's last concatenation) writes blocked and needs no NCHW copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from ..core.layouts import BLOCK, NCHW, NCHW16C

#: The name a blocked tensor goes by in the executor's steps (its NCHW name stays for NCHW readers).
BLOCKED_SUFFIX = "@NCHW16c"


#: The most a tensor's channels may grow when padded to whole blocks for it to be held blocked.
PADDING_LIMIT = 1 / 8


def pads_little(channels: int) -> bool:
    """Whether ``channels`` padded to whole blocks of 16 grow by at most :data:`PADDING_LIMIT`
    (MNASNet's and MobileNetV3's 72, 120, 184 and 200 do; their 24 and 40 do not)."""
    return -(-channels // BLOCK) * BLOCK <= channels * (1 + PADDING_LIMIT)


@dataclass(frozen=True)
class ConvTensors:
    """What one convolution step reads and writes, by tensor name (``residual`` ``None`` without one)."""

    x: str
    residual: Optional[str]
    output: str


@dataclass(frozen=True)
class Conversion:
    """An NCHW copy of the blocked ``source`` under the name ``target`` (the tensor's own), made before step ``before``."""

    source: str
    target: str
    before: int


@dataclass(frozen=True)
class LayoutPlan:
    """``layouts``: each convolution step's ``(input, output)`` layouts, by step index, and those of each pool,
    concatenation and global pool that runs on blocked tensors; ``blocked``: the tensors held blocked;
    ``conversions``: the copies other readers need."""

    layouts: dict[int, tuple[str, str]]
    blocked: frozenset
    conversions: tuple[Conversion, ...]

    def name(self, tensor: str, layout: str) -> str:
        """The executor's name of ``tensor`` in ``layout``."""
        return tensor + BLOCKED_SUFFIX if layout == NCHW16C else tensor


def plan_layouts(convs: dict[int, ConvTensors], reads: dict[str, list[int]], keep_nchw: set[str],
                 channels: dict[str, int], chooses_same: Callable[[int, str, str], bool],
                 pools: Optional[dict[int, tuple[str, str]]] = None,
                 gathers: Optional[dict[int, tuple[tuple[str, ...], str]]] = None,
                 together: Sequence[frozenset] = (), sinks: Optional[dict[int, str]] = None) -> LayoutPlan:
    """Decide the layouts (see the module docstring).

    ``convs``: the convolution steps, by index; ``reads``: every step that reads each tensor, by
    index (convolutions included); ``keep_nchw``: tensors that must stay NCHW (graph outputs, the
    slots of a concatenation that cannot be blocked); ``channels``: each convolution's, pool's and
    gather's output channel count (only multiples of 16 are blocked); ``chooses_same(step,
    input_layout, output_layout)``: whether the engine keeps its choice of backend for that
    convolution with those layouts; ``pools``: the pool steps that can run blocked, by index, as
    ``(input, output)``; ``gathers``: the concatenations whose buffer may be held blocked, as
    ``(inputs, output)``; ``together``: groups of tensors blocked all or none (the tensors that
    live in one such buffer); ``sinks``: steps that read their input (given) blocked as well as
    NCHW and write NCHW (a global average pool, whose ``(N, C, 1, 1)`` result is the same memory in
    both layouts).
    """
    pools, gathers, sinks = pools or {}, gathers or {}, sinks or {}
    outputs = [c.output for c in convs.values()] + [out for _, out in pools.values()] + [out for _, out in gathers.values()]
    blocked = {out for out in outputs if out not in keep_nchw and pads_little(channels[out])}

    def layouts_of(c: ConvTensors) -> tuple[str, str]:
        return NCHW16C if c.x in blocked else NCHW, NCHW16C if c.output in blocked else NCHW

    def reads_blocked(j: int, tensor: str) -> bool:  # step j reads ``tensor`` blocked
        if j in pools:  # a pool passing the layout through
            return pools[j][1] in blocked
        if j in gathers:  # a concatenation into a blocked buffer
            return gathers[j][1] in blocked
        if j in sinks:
            return True
        # a convolution, as its input or as a residual added to a blocked output
        return j in convs and (convs[j].x == tensor or (convs[j].residual == tensor and convs[j].output in blocked))

    changed = True
    while changed:  # only shrinks: a tensor no convolution reads blocked, a pool's output whose input is
        changed = False  # not blocked, and the neighbours of a convolution whose backend would change go back to NCHW
        for tensor in sorted(blocked):
            if not any(reads_blocked(j, tensor) for j in reads.get(tensor, [])):
                blocked.discard(tensor)
                changed = True
        for x, out in pools.values():
            if out in blocked and x not in blocked:
                blocked.discard(out)
                changed = True
        for inputs, out in gathers.values():
            if out in blocked and not blocked.issuperset(inputs):
                blocked.discard(out)
                changed = True
        for group in together:
            if not group <= blocked and group & blocked:
                blocked -= group
                changed = True
        for i, c in convs.items():
            if c.output in blocked and c.residual is not None and c.residual not in blocked:
                blocked.discard(c.output)  # its residual would need a blocked copy: not worth one
                changed = True
            layouts = layouts_of(c)
            if layouts != (NCHW, NCHW) and not chooses_same(i, *layouts):
                blocked -= {c.x, c.output}
                changed = True
    layouts = {i: layouts_of(c) for i, c in convs.items()}
    layouts.update({i: (NCHW16C, NCHW16C) for i, (_, out) in [*pools.items(), *gathers.items()] if out in blocked})
    layouts.update({i: (NCHW16C, NCHW) for i, x in sinks.items() if x in blocked})
    needs: dict[str, int] = {}  # blocked tensor -> the first step that reads it NCHW
    for tensor in blocked:
        for j in reads.get(tensor, []):
            if j in sinks:
                continue
            if j in pools or j in gathers:
                nchw = (pools[j] if j in pools else gathers[j])[1] not in blocked  # a pool or concatenation on NCHW
            else:  # another op; an NCHW sum's residual
                nchw = j not in convs or (convs[j].residual == tensor and layouts[j][1] == NCHW)
            if nchw:
                needs[tensor] = min(j, needs.get(tensor, j))
    conversions = tuple(Conversion(tensor + BLOCKED_SUFFIX, tensor, step)
                        for tensor, step in sorted(needs.items(), key=lambda item: item[1]))
    return LayoutPlan(layouts, frozenset(blocked), conversions)
