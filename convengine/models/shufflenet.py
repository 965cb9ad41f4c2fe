"""ShuffleNet V2 1.0x (Ma, Zhang, Zheng & Sun 2018) with torchvision's structure and ``state_dict`` names.

Built for speed measured on devices rather than for MAC counts: every unit keeps its
convolutions' input and output widths equal, uses no grouped 1x1 convolution and few
branches. A stride-1 unit splits its input's channels in two halves (``x.chunk(2, dim=1)``, an
ONNX ``Split``), passes one through unchanged and the other through ``branch2`` (1x1 conv, BN,
ReLU, 3x3 depthwise conv, BN, 1x1 conv, BN, ReLU), concatenates both and *shuffles* the channels
(two groups interleaved: ``Reshape``-``Transpose``-``Reshape``) so information crosses the halves in
the next unit. A stride-2 unit feeds its whole input to ``branch1`` (3x3 depthwise stride 2, BN,
1x1 conv, BN, ReLU) and to ``branch2`` (strided), doubling the channels.

Stem: 3x3 stride-2 conv to 24 channels, BN, ReLU (``conv1.0``, ``conv1.1``), 3x3 stride-2 max-pool;
stages ``stage2``-``stage4`` of 4, 8 and 4 units (116, 232, 464 channels, each starting with a
stride-2 unit); ``conv5`` (1x1 to 1024, BN, ReLU); global average pooling and ``fc``.
Parameter names match ``torchvision.models.shufflenet_v2_x1_0().state_dict()`` less the
``num_batches_tracked`` counters (``stage2.0.branch1.0.weight``, ``stage2.1.branch2.3.weight``...).
"""

from __future__ import annotations

from ..graph import Graph, GraphBuilder

__all__ = ["shufflenet_v2_x1_0"]


def _conv_bn(b: GraphBuilder, x: str, out_channels: int, kernel: int, prefix: str, conv: int, *, stride: int = 1,
             depthwise: bool = False, relu: bool = False) -> str:
    """Conv (``prefix.conv``) and BN (``prefix.conv+1``), optionally ReLU: one step of a torchvision Sequential."""
    y = b.conv(x, out_channels, kernel, stride=stride, padding=kernel // 2, groups=out_channels if depthwise else 1,
               bias=False, name=f"{prefix}.{conv}")
    y = b.batchnorm(y, name=f"{prefix}.{conv + 1}")
    return b.activation(y, name=f"{prefix}.{conv + 2}") if relu else y


def _branch2(b: GraphBuilder, x: str, channels: int, stride: int, prefix: str) -> str:
    y = _conv_bn(b, x, channels, 1, prefix, 0, relu=True)
    y = _conv_bn(b, y, channels, 3, prefix, 3, stride=stride, depthwise=True)
    return _conv_bn(b, y, channels, 1, prefix, 5, relu=True)


def _unit(b: GraphBuilder, x: str, out_channels: int, stride: int, prefix: str) -> str:
    """torchvision's ``InvertedResidual``: split (stride 1) or two branches (stride 2), concat, shuffle."""
    half = out_channels // 2
    if stride == 1:
        kept, x2 = b.split(x, 2, name=f"{prefix}.chunk")
        halves = [kept, _branch2(b, x2, half, 1, f"{prefix}.branch2")]
    else:
        y = _conv_bn(b, x, b.channels(x), 3, f"{prefix}.branch1", 0, stride=2, depthwise=True)
        halves = [_conv_bn(b, y, half, 1, f"{prefix}.branch1", 2, relu=True),
                  _branch2(b, x, half, 2, f"{prefix}.branch2")]
    return b.channel_shuffle(b.concat(halves, name=f"{prefix}.concat"), 2, name=f"{prefix}.shuffle")


def _shufflenet_v2(name: str, repeats, channels, num_classes: int, in_channels: int, seed: int, dtype: str,
                   input_size) -> Graph:
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    b = GraphBuilder(name, (in_channels, h, w), seed=seed, dtype=dtype)
    x = _conv_bn(b, b.input.name, channels[0], 3, "conv1", 0, stride=2, relu=True)
    x = b.maxpool(x, 3, 2, padding=1, name="maxpool")
    for stage, (units, width) in enumerate(zip(repeats, channels[1:]), start=2):
        for i in range(units):
            x = _unit(b, x, width, 2 if i == 0 else 1, f"stage{stage}.{i}")
    x = _conv_bn(b, x, channels[-1], 1, "conv5", 0, relu=True)
    x = b.flatten(b.global_avgpool(x, name="mean"), name="flatten")
    return b.build(b.dense(x, num_classes, name="fc"))


def shufflenet_v2_x1_0(num_classes: int = 1000, in_channels: int = 3, *, seed: int = 0, dtype: str = "float32",
                       input_size=224) -> Graph:
    """ShuffleNet V2 1.0x on 224x224 (or ``input_size``): units (4, 8, 4); 2.28M parameters, 0.15 GMACs."""
    return _shufflenet_v2("shufflenet_v2_x1_0", (4, 8, 4), (24, 116, 232, 464, 1024), num_classes, in_channels,
                          seed, dtype, input_size)
