"""MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov & Chen 2018) with torchvision's structure and ``state_dict`` names.

Inverted residuals with linear bottlenecks: each block expands its narrow input ``t`` times
with a 1x1 convolution (BN, ReLU6), filters with a 3x3 *depthwise* convolution (one filter per
channel, ``groups = channels``; BN, ReLU6) and projects back to a narrow output with a 1x1
convolution and BN but no activation (the "linear bottleneck": a ReLU there would destroy
information in so few channels). Blocks of stride 1 whose input and output widths agree add
their input (the residual joins the narrow ends, the inverse of ResNet's bottleneck). ReLU6 is
``Clip(0, 6)``.

Layout (width multiplier 1.0): ``features.0`` = 3x3 stride-2 conv to 32, BN, ReLU6; then
``features.1``-``features.17``, the 17 blocks of the paper's Table 2 (t, c, n, s) = (1, 16, 1, 1),
(6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1);
``features.18`` = 1x1 conv to 1280, BN, ReLU6; global average pooling; ``classifier`` =
dropout (``classifier.0``) and the dense layer ``classifier.1``. No convolution has a bias.

Parameter names match ``torchvision.models.mobilenet_v2().state_dict()`` less the
``num_batches_tracked`` counters: a block is ``features.N.conv``, a Sequential of [expansion
``0.0``/``0.1`` (absent when t = 1),] depthwise ``k.0``/``k.1``, projection ``k+1`` and its BN
``k+2`` (``features.1.conv.0.0.weight``, ``features.2.conv.1.0.weight``, ``features.2.conv.3.bias``).
"""

from __future__ import annotations

from ..graph import Graph, GraphBuilder

__all__ = ["mobilenet_v2"]

#: The paper's Table 2: expansion t, output channels c, repeats n, first stride s.
INVERTED_RESIDUALS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                      (6, 320, 1, 1))


def _conv_bn_relu6(b: GraphBuilder, x: str, out_channels: int, kernel: int, prefix: str, *, stride: int = 1,
                   depthwise: bool = False) -> str:
    """torchvision's ``Conv2dNormActivation``: conv (``prefix.0``, padding k // 2, no bias), BN (``prefix.1``), ReLU6."""
    y = b.conv(x, out_channels, kernel, stride=stride, padding=kernel // 2, groups=out_channels if depthwise else 1,
               bias=False, name=f"{prefix}.0")
    return b.relu6(b.batchnorm(y, name=f"{prefix}.1"), name=f"{prefix}.2")


def _inverted_residual(b: GraphBuilder, x: str, out_channels: int, stride: int, expand_ratio: int, prefix: str) -> str:
    """[1x1 expand, BN, ReLU6,] 3x3 depthwise (stride), BN, ReLU6, 1x1 project, BN [, + x]."""
    in_channels = b.channels(x)
    hidden = int(round(in_channels * expand_ratio))
    step, y = 0, x
    if expand_ratio != 1:
        y = _conv_bn_relu6(b, y, hidden, 1, f"{prefix}.conv.0")
        step = 1
    y = _conv_bn_relu6(b, y, hidden, 3, f"{prefix}.conv.{step}", stride=stride, depthwise=True)
    y = b.conv(y, out_channels, 1, bias=False, name=f"{prefix}.conv.{step + 1}")
    y = b.batchnorm(y, name=f"{prefix}.conv.{step + 2}")
    if stride == 1 and in_channels == out_channels:
        y = b.add(x, y, name=f"{prefix}.add")
    return y


def mobilenet_v2(num_classes: int = 1000, in_channels: int = 3, *, seed: int = 0, dtype: str = "float32",
                 input_size=224) -> Graph:
    """MobileNetV2 (width 1.0) on 224x224 (or ``input_size``); 3.50M parameters, 0.30 GMACs."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    b = GraphBuilder("mobilenet_v2", (in_channels, h, w), seed=seed, dtype=dtype)
    x = _conv_bn_relu6(b, b.input.name, 32, 3, "features.0", stride=2)
    index = 1
    for t, c, n, s in INVERTED_RESIDUALS:
        for i in range(n):
            x = _inverted_residual(b, x, c, s if i == 0 else 1, t, f"features.{index}")
            index += 1
    x = _conv_bn_relu6(b, x, 1280, 1, f"features.{index}")
    x = b.flatten(b.global_avgpool(x, name="avgpool"), name="flatten")
    x = b.dropout(x, name="classifier.0")
    return b.build(b.dense(x, num_classes, name="classifier.1"))
