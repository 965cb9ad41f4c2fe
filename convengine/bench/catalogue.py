"""The convolution layers that matter, by name: what benchmarks and ``convengine bench`` run.

Every distinct convolution shape of ResNet-50 and of AlexNet at a 224x224 input, plus the
course's worked examples, each as a :class:`LayerSpec` (a shape without the batch size) that
makes a :class:`~convengine.ConvProblem` for any batch and dtype:

>>> from convengine.bench.catalogue import layer
>>> layer("resnet50.layer1.conv2").problem(batch=1).output_shape
(1, 64, 56, 56)

Names
-----
``course.*``
    The three worked examples of the course (a 3x3 input, a 2x2 kernel): no padding,
    padding 1, padding 1 with stride (3, 2). Tiny: they measure per-call overhead.
``resnet50.*``
    ResNet-50 as :func:`convengine.models.resnet50` builds it by default: the paper's
    (a down-sampling bottleneck strides on its first 1x1 convolution; 3.8 GMACs), with
    torchvision's layer names. ``conv1`` is the 7x7 stem; ``layerK.conv1/conv2/conv3`` are
    the 1x1, 3x3 and 1x1 convolutions of the repeated bottlenecks of stage K; ``layerK.0.*``
    the shapes that only the first bottleneck of a stage has (its 1x1 on the stage's input,
    strided from stage 2 on, and the ``downsample`` projection). A shape that recurs is
    listed once, under its most frequent name, and :attr:`LayerSpec.count` says how often
    the network runs it (the counts add up to ResNet-50's 53 convolutions).
``alexnet.*``
    AlexNet as in the course: ``conv1`` 11x11 stride 4 padding 1 -> 96 channels on
    3x224x224 (54x54 out), 3x3/2 max-pool (26x26), ``conv2`` 5x5 padding 2 -> 256, 3x3/2
    max-pool (12x12), then ``conv3``-``conv5``: 3x3 padding 1 -> 384, 384, 256.
``mobilenet_v2.*``, ``efficientnet_b0.*``, ``resnext50_32x4d.*``, ``regnet_y_400mf.*``
    Only the grouped convolutions of these networks (224x224 input, torchvision's
    definitions and module names): the depthwise 3x3 (and EfficientNet's 5x5) layers at
    stride 1 and 2, ResNeXt's 32-group 3x3 layers (4 to 32 channels per group, stride on the
    3x3) and RegNetY-400MF's 3x3 layers of group width 8. ``count`` as above.

Sets (:data:`SETS`): ``course``, ``resnet50``, ``alexnet``, ``grouped`` (the four networks'
grouped layers), ``all``, and ``quick``: a few small but representative layers (a tiny
example, a strided 11x11, a 1x1, a 3x3) that tests and smoke runs use.

The model zoo (:mod:`convengine.models`) and these specs are checked against each other by
the tests: the specs of a model are exactly the distinct convolutions of its graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

from ..core.problem import ConvProblem, Padding


@dataclass(frozen=True)
class LayerSpec:
    """A named convolution layer: everything but the batch size and dtype."""

    name: str
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: Union[int, tuple[int, int]] = 1
    padding: Padding = 0
    dilation: Union[int, tuple[int, int]] = 1
    groups: int = 1
    bias: bool = False
    #: How many times the model runs a convolution of this shape (for model totals).
    count: int = 1

    @property
    def model(self) -> str:
        """The part of the name before the first dot: ``resnet50``, ``alexnet``, ``course``."""
        return self.name.split(".", 1)[0]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.height, self.width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    def problem(self, batch: int = 1, dtype="float32") -> ConvProblem:
        """The :class:`ConvProblem` of this layer for ``batch`` images of ``dtype``."""
        return ConvProblem.from_shapes((batch, *self.input_shape), self.weight_shape, bias=self.bias,
                                       stride=self.stride, padding=self.padding, dilation=self.dilation,
                                       groups=self.groups, dtype=dtype)

    def conv_kwargs(self) -> dict:
        """Keyword arguments for ``conv2d``/``Engine.prepare`` (``stride``, ``padding``, ...)."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)


def _resnet50() -> tuple[LayerSpec, ...]:
    specs = [LayerSpec("resnet50.conv1", 3, 224, 224, 64, (7, 7), stride=2, padding=3)]
    # (stage, bottleneck width, blocks, input channels of block 0, spatial size at the stage's input)
    stages = ((1, 64, 3, 64, 56), (2, 128, 4, 256, 56), (3, 256, 6, 512, 28), (4, 512, 3, 1024, 14))
    for stage, width, blocks, first_in, size_in in stages:
        out = 4 * width
        stride = 1 if stage == 1 else 2
        size = size_in // stride
        p = f"resnet50.layer{stage}"
        # the repeated bottlenecks (blocks 1..n-1); block 0 runs conv2 and conv3 too, and in
        # stage 1 the projection shortcut (1x1, 64 -> 256, stride 1) has conv3's shape as well
        specs.append(LayerSpec(f"{p}.conv1", out, size, size, width, (1, 1), count=blocks - 1))
        specs.append(LayerSpec(f"{p}.conv2", width, size, size, width, (3, 3), padding=1, count=blocks))
        specs.append(LayerSpec(f"{p}.conv3", width, size, size, out, (1, 1), count=blocks + (stride == 1)))
        # what only block 0 has: its 1x1 on the stage's input (strided, as in the paper), the projection
        specs.append(LayerSpec(f"{p}.0.conv1", first_in, size_in, size_in, width, (1, 1), stride=stride))
        if stride != 1:
            specs.append(LayerSpec(f"{p}.0.downsample", first_in, size_in, size_in, out, (1, 1), stride=stride))
    return tuple(specs)


_ALEXNET = (
    LayerSpec("alexnet.conv1", 3, 224, 224, 96, (11, 11), stride=4, padding=1),
    LayerSpec("alexnet.conv2", 96, 26, 26, 256, (5, 5), padding=2),
    LayerSpec("alexnet.conv3", 256, 12, 12, 384, (3, 3), padding=1),
    LayerSpec("alexnet.conv4", 384, 12, 12, 384, (3, 3), padding=1),
    LayerSpec("alexnet.conv5", 384, 12, 12, 256, (3, 3), padding=1),
)

def _grouped() -> tuple[LayerSpec, ...]:
    """The grouped convolutions of MobileNetV2, EfficientNet-B0, ResNeXt-50 (32x4d) and RegNetY-400MF."""
    specs = []

    def depthwise(name, channels, size, kernel, stride, count=1):
        specs.append(LayerSpec(name, channels, size, size, channels, (kernel, kernel), stride=stride, padding=kernel // 2,
                               groups=channels, count=count))

    # MobileNetV2: (block, channels, input size, stride, blocks of that shape)
    for block, channels, size, stride, count in ((1, 32, 112, 1, 1), (2, 96, 112, 2, 1), (3, 144, 56, 1, 1),
                                                 (4, 144, 56, 2, 1), (5, 192, 28, 1, 2), (7, 192, 28, 2, 1),
                                                 (8, 384, 14, 1, 4), (12, 576, 14, 1, 2), (14, 576, 14, 2, 1),
                                                 (15, 960, 7, 1, 3)):
        depthwise(f"mobilenet_v2.features.{block}.conv.{0 if block == 1 else 1}.0", channels, size, 3, stride, count)
    # EfficientNet-B0: (stage, block, channels, input size, kernel, stride, blocks of that shape)
    for stage, block, channels, size, kernel, stride, count in (
            (1, 0, 32, 112, 3, 1, 1), (2, 0, 96, 112, 3, 2, 1), (2, 1, 144, 56, 3, 1, 1), (3, 0, 144, 56, 5, 2, 1),
            (3, 1, 240, 28, 5, 1, 1), (4, 0, 240, 28, 3, 2, 1), (4, 1, 480, 14, 3, 1, 2), (5, 0, 480, 14, 5, 1, 1),
            (5, 1, 672, 14, 5, 1, 2), (6, 0, 672, 14, 5, 2, 1), (6, 1, 1152, 7, 5, 1, 3), (7, 0, 1152, 7, 3, 1, 1)):
        depthwise(f"efficientnet_b0.features.{stage}.{block}.block.{0 if stage == 1 else 1}.0", channels, size, kernel,
                  stride, count)
    # ResNeXt-50 32x4d: each stage's 3x3 (32 groups), strided in its first block
    for stage, width, size, blocks in ((1, 128, 56, 3), (2, 256, 56, 4), (3, 512, 28, 6), (4, 1024, 14, 3)):
        stride = 1 if stage == 1 else 2
        if stride == 2:
            specs.append(LayerSpec(f"resnext50_32x4d.layer{stage}.0.conv2", width, size, size, width, (3, 3),
                                   stride=2, padding=1, groups=32))
        specs.append(LayerSpec(f"resnext50_32x4d.layer{stage}.{1 if stride == 2 else 0}.conv2", width, size // stride,
                               size // stride, width, (3, 3), padding=1, groups=32, count=blocks - (stride == 2)))
    # RegNetY-400MF: widths 48, 104, 208, 440 in 1, 3, 6, 6 blocks, group width 8, the first block strided
    for stage, width, size, blocks in ((1, 48, 112, 1), (2, 104, 56, 3), (3, 208, 28, 6), (4, 440, 14, 6)):
        prefix = f"regnet_y_400mf.trunk_output.block{stage}.block{stage}"
        specs.append(LayerSpec(f"{prefix}-0.f.b", width, size, size, width, (3, 3), stride=2, padding=1,
                               groups=width // 8))
        if blocks > 1:
            specs.append(LayerSpec(f"{prefix}-1.f.b", width, size // 2, size // 2, width, (3, 3), padding=1,
                                   groups=width // 8, count=blocks - 1))
    return tuple(specs)


_COURSE = (
    LayerSpec("course.example1", 1, 3, 3, 1, (2, 2)),
    LayerSpec("course.example2", 1, 3, 3, 1, (2, 2), padding=1),
    LayerSpec("course.example3", 1, 3, 3, 1, (2, 2), padding=1, stride=(3, 2)),
)

_GROUPED = _grouped()

#: Every named layer, in a fixed order (course, ResNet-50, AlexNet, the grouped layers).
LAYERS: tuple[LayerSpec, ...] = _COURSE + _resnet50() + _ALEXNET + _GROUPED

_BY_NAME = {spec.name: spec for spec in LAYERS}
assert len(_BY_NAME) == len(LAYERS), "duplicate layer names"

#: Small, representative layers: a tiny example, a strided 11x11, a 1x1 and a wide 3x3 at 7x7.
QUICK = ("course.example2", "alexnet.conv1", "resnet50.layer4.conv1", "resnet50.layer4.conv2")

#: Named selections of layer names.
SETS: dict[str, tuple[str, ...]] = {
    "course": tuple(s.name for s in _COURSE),
    "resnet50": tuple(s.name for s in LAYERS if s.model == "resnet50"),
    "alexnet": tuple(s.name for s in _ALEXNET),
    "grouped": tuple(s.name for s in _GROUPED),
    "quick": QUICK,
    "all": tuple(s.name for s in LAYERS),
}


def layer(name: str) -> LayerSpec:
    """The spec named ``name``; ``KeyError`` listing close names when there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _BY_NAME, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known sets: {', '.join(SETS)}"
        raise KeyError(f"no layer named {name!r}{hint}") from None


def select(names: Optional[Iterable[str]] = None, sets: Optional[Iterable[str]] = None) -> tuple[LayerSpec, ...]:
    """The specs named in ``names`` and in the sets ``sets``, in order, without repeats."""
    chosen: list[str] = []
    for set_name in sets or ():
        if set_name not in SETS:
            raise KeyError(f"no layer set named {set_name!r}; known sets: {', '.join(SETS)}")
        chosen.extend(SETS[set_name])
    chosen.extend(names or ())
    return tuple(layer(name) for name in dict.fromkeys(chosen))


def names(specs: Sequence[LayerSpec]) -> tuple[str, ...]:
    return tuple(spec.name for spec in specs)
