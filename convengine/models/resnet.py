"""ResNets (He, Zhang, Ren & Sun 2015), ResNeXt and Wide ResNet with torchvision's structure and ``state_dict`` names.

Stem: 7x7 stride-2 convolution (padding 3) -> 64, batch norm, ReLU, 3x3 stride-2 max-pool
(padding 1). Then four stages (``layer1``-``layer4``, 64/128/256/512 base channels, the
first block of stages 2-4 halving the resolution) of *basic* blocks (two 3x3 convolutions;
ResNet-18/34) or *bottleneck* blocks (1x1 reduce, 3x3, 1x1 expand by 4; ResNet-50/101/152),
global average pooling, flatten and the ``fc`` layer. As in the paper, a strided bottleneck
strides on its first 1x1 convolution (3.8 GMACs for ResNet-50, the paper's Table 1);
``stride_in_1x1=False`` strides on the 3x3 instead, as torchvision does ("ResNet v1.5",
4.1 GMACs, slightly more accurate), for running torchvision-trained weights. A block whose input and
output differ in shape adds a projection shortcut: 1x1 strided convolution
(``downsample.0``) and batch norm (``downsample.1``). No convolution has a bias: each is
followed by batch norm, which the executor folds into it.

ResNeXt-50 32x4d (Xie, Girshick, Dollar, Tu & He 2017) and Wide ResNet-50-2 (Zagoruyko &
Komodakis 2016, in torchvision's bottleneck form) are ResNet-50 with another bottleneck
*width* (the channels of its 1x1 reduction and 3x3 convolution): ``planes x width_per_group / 64
x groups``. ResNeXt splits a 3x3 of twice ResNet's width into 32 groups of 4 channels (a grouped
convolution, ``groups=32``); Wide ResNet-50-2 doubles the width without groups. Both stride on
the 3x3 convolution, as their reference implementations and torchvision do.

Every factory takes ``input_size`` (an int or ``(h, w)``, 224 by default): global average
pooling makes the network valid for any size of at least 32x32.

Parameter names match ``torchvision.models.resnetNN().state_dict()`` (less the
``num_batches_tracked`` counters), so trained torchvision weights load by name.
"""

from __future__ import annotations

from typing import Sequence

from ..graph import Graph, GraphBuilder

__all__ = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2"]


def _basic_block(b: GraphBuilder, x: str, planes: int, stride: int, prefix: str, stride_in_1x1: bool) -> str:
    """3x3 conv (stride), BN, ReLU, 3x3 conv, BN, + shortcut, ReLU; output ``planes`` channels."""
    out = b.relu(b.batchnorm(b.conv(x, planes, 3, stride=stride, padding=1, bias=False, name=f"{prefix}.conv1"),
                             name=f"{prefix}.bn1"))
    out = b.batchnorm(b.conv(out, planes, 3, padding=1, bias=False, name=f"{prefix}.conv2"), name=f"{prefix}.bn2")
    return b.relu(b.add(out, _shortcut(b, x, planes, stride, prefix), name=f"{prefix}.add"))


def _bottleneck(b: GraphBuilder, x: str, planes: int, stride: int, prefix: str, stride_in_1x1: bool, *,
                groups: int = 1, width_per_group: int = 64) -> str:
    """1x1 conv to width, BN, ReLU, 3x3 conv (``groups``), BN, ReLU, 1x1 conv to 4 x planes, BN, + shortcut, ReLU.

    The width is ``planes`` for ResNet, ``planes * width_per_group // 64 * groups`` in general
    (torchvision's formula). The block's stride goes on the first 1x1 (paper) or on the 3x3
    (torchvision v1.5).
    """
    width = planes * width_per_group // 64 * groups
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    out = b.relu(b.batchnorm(b.conv(x, width, 1, stride=s1, bias=False, name=f"{prefix}.conv1"), name=f"{prefix}.bn1"))
    out = b.relu(b.batchnorm(b.conv(out, width, 3, stride=s3, padding=1, groups=groups, bias=False,
                                    name=f"{prefix}.conv2"), name=f"{prefix}.bn2"))
    out = b.batchnorm(b.conv(out, 4 * planes, 1, bias=False, name=f"{prefix}.conv3"), name=f"{prefix}.bn3")
    return b.relu(b.add(out, _shortcut(b, x, 4 * planes, stride, prefix), name=f"{prefix}.add"))


def _shortcut(b: GraphBuilder, x: str, channels: int, stride: int, prefix: str) -> str:
    """Identity, or a 1x1 strided projection + BN when the block changes shape."""
    if stride == 1 and b.channels(x) == channels:
        return x
    return b.batchnorm(b.conv(x, channels, 1, stride=stride, bias=False, name=f"{prefix}.downsample.0"),
                       name=f"{prefix}.downsample.1")


def _resnet(name: str, block, layers: Sequence[int], num_classes: int, in_channels: int, seed: int,
            dtype: str, stride_in_1x1: bool = True, input_size=224, **block_args) -> Graph:
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    b = GraphBuilder(name, (in_channels, h, w), seed=seed, dtype=dtype)
    x = b.batchnorm(b.conv(b.input.name, 64, 7, stride=2, padding=3, bias=False, name="conv1"), name="bn1")
    x = b.maxpool(b.activation(x, name="relu"), 3, 2, padding=1, name="maxpool")
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for i in range(blocks):
            stride = 2 if stage > 1 and i == 0 else 1
            x = block(b, x, planes, stride, f"layer{stage}.{i}", stride_in_1x1, **block_args)
    x = b.flatten(b.global_avgpool(x, name="avgpool"), name="flatten")
    return b.build(b.dense(x, num_classes, name="fc"))


def resnet18(num_classes: int = 1000, in_channels: int = 3, *, seed: int = 0, dtype: str = "float32",
             input_size=224) -> Graph:
    """ResNet-18 on 224x224: basic blocks [2, 2, 2, 2]; 11.7M parameters, 1.8 GMACs."""
    return _resnet("resnet18", _basic_block, (2, 2, 2, 2), num_classes, in_channels, seed, dtype, input_size=input_size)


def resnet34(num_classes: int = 1000, in_channels: int = 3, *, seed: int = 0, dtype: str = "float32",
             input_size=224) -> Graph:
    """ResNet-34 on 224x224: basic blocks [3, 4, 6, 3]; 21.8M parameters, 3.6 GMACs."""
    return _resnet("resnet34", _basic_block, (3, 4, 6, 3), num_classes, in_channels, seed, dtype, input_size=input_size)


def resnet50(num_classes: int = 1000, in_channels: int = 3, *, seed: int = 0, dtype: str = "float32",
             stride_in_1x1: bool = True, input_size=224) -> Graph:
    """ResNet-50 on 224x224: bottlenecks [3, 4, 6, 3]; 25.6M parameters, 3.8 GMACs (4.1 with stride_in_1x1=False)."""
    return _resnet("resnet50", _bottleneck, (3, 4, 6, 3), num_classes, in_channels, seed, dtype,
                   stride_in_1x1, input_size)


def resnet101(num_classes: int = 1000, in_channels: int = 3, *, seed: int = 0, dtype: str = "float32",
              stride_in_1x1: bool = True, input_size=224) -> Graph:
    """ResNet-101 on 224x224: bottlenecks [3, 4, 23, 3]; 44.5M parameters, 7.6 GMACs (7.8 with stride_in_1x1=False)."""
    return _resnet("resnet101", _bottleneck, (3, 4, 23, 3), num_classes, in_channels, seed, dtype,
                   stride_in_1x1, input_size)


def resnet152(num_classes: int = 1000, in_channels: int = 3, *, seed: int = 0, dtype: str = "float32",
              stride_in_1x1: bool = True, input_size=224) -> Graph:
    """ResNet-152 on 224x224: bottlenecks [3, 8, 36, 3]; 60.2M parameters, 11.3 GMACs (11.5 with stride_in_1x1=False)."""
    return _resnet("resnet152", _bottleneck, (3, 8, 36, 3), num_classes, in_channels, seed, dtype,
                   stride_in_1x1, input_size)


def resnext50_32x4d(num_classes: int = 1000, in_channels: int = 3, *, seed: int = 0, dtype: str = "float32",
                    stride_in_1x1: bool = False, input_size=224) -> Graph:
    """ResNeXt-50 (32x4d) on 224x224: ResNet-50 with 3x3 convolutions in 32 groups; 25.0M parameters, 4.2 GMACs."""
    return _resnet("resnext50_32x4d", _bottleneck, (3, 4, 6, 3), num_classes, in_channels, seed, dtype,
                   stride_in_1x1, input_size, groups=32, width_per_group=4)


def wide_resnet50_2(num_classes: int = 1000, in_channels: int = 3, *, seed: int = 0, dtype: str = "float32",
                    stride_in_1x1: bool = False, input_size=224) -> Graph:
    """Wide ResNet-50-2 on 224x224: ResNet-50 with bottlenecks twice as wide (outputs unchanged); 68.9M parameters, 11.4 GMACs."""
    return _resnet("wide_resnet50_2", _bottleneck, (3, 4, 6, 3), num_classes, in_channels, seed, dtype,
                   stride_in_1x1, input_size, width_per_group=128)
