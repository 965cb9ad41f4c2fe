"""DenseNet-121 (Huang, Liu, van der Maaten & Weinberger 2016) with torchvision's ``state_dict`` names.

Stem: 7x7 stride-2 convolution (padding 3, no bias) -> 64 (``features.conv0``), batch norm
(``features.norm0``), ReLU, 3x3 stride-2 max-pool (padding 1). Then four dense blocks of
6, 12, 24 and 16 layers; every layer sees the concatenation of all earlier feature maps of
its block and adds ``growth_rate`` = 32 new ones through the pre-activation bottleneck
BN-ReLU-1x1 conv (to ``bn_size`` x 32 = 128 channels)-BN-ReLU-3x3 conv (to 32). Between
blocks, a transition halves channels (compression 0.5) and resolution: BN-ReLU-1x1 conv-2x2
average pool. A final batch norm (``features.norm5``), ReLU, global average pooling and the
``classifier`` layer end the network.

Because normalisation comes *before* each convolution inside dense layers, those batch
norms cannot be folded into a convolution; the executor runs them on their own. (The 1x1
convolution's *output* batch norm, ``norm2``, does follow a convolution and is folded.)
Parameter names match ``torchvision.models.densenet121().state_dict()`` less the
``num_batches_tracked`` counters.
"""

from __future__ import annotations

from typing import Sequence

from ..graph import Graph, GraphBuilder

__all__ = ["densenet121"]


def _dense_layer(b: GraphBuilder, x: str, growth_rate: int, bn_size: int, prefix: str) -> str:
    """BN-ReLU-1x1 conv-BN-ReLU-3x3 conv; returns the ``growth_rate`` new feature maps."""
    y = b.activation(b.batchnorm(x, name=f"{prefix}.norm1"), name=f"{prefix}.relu1")
    y = b.conv(y, bn_size * growth_rate, 1, bias=False, name=f"{prefix}.conv1")
    y = b.activation(b.batchnorm(y, name=f"{prefix}.norm2"), name=f"{prefix}.relu2")
    return b.conv(y, growth_rate, 3, padding=1, bias=False, name=f"{prefix}.conv2")


def _transition(b: GraphBuilder, x: str, out_channels: int, prefix: str) -> str:
    """BN-ReLU-1x1 conv-2x2/2 average pool."""
    y = b.activation(b.batchnorm(x, name=f"{prefix}.norm"), name=f"{prefix}.relu")
    y = b.conv(y, out_channels, 1, bias=False, name=f"{prefix}.conv")
    return b.avgpool(y, 2, 2, name=f"{prefix}.pool")


def _densenet(name: str, growth_rate: int, block_config: Sequence[int], num_init_features: int, bn_size: int,
              compression: float, num_classes: int, in_channels: int, seed: int, dtype: str, input_size=224) -> Graph:
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    b = GraphBuilder(name, (in_channels, h, w), seed=seed, dtype=dtype)
    x = b.conv(b.input.name, num_init_features, 7, stride=2, padding=3, bias=False, name="features.conv0")
    x = b.activation(b.batchnorm(x, name="features.norm0"), name="features.relu0")
    x = b.maxpool(x, 3, 2, padding=1, name="features.pool0")
    for i, layers in enumerate(block_config, start=1):
        for j in range(1, layers + 1):
            prefix = f"features.denseblock{i}.denselayer{j}"
            x = b.concat([x, _dense_layer(b, x, growth_rate, bn_size, prefix)], name=f"{prefix}.concat")
        if i != len(block_config):
            x = _transition(b, x, int(b.channels(x) * compression), f"features.transition{i}")
    x = b.activation(b.batchnorm(x, name="features.norm5"), name="features.relu5")
    x = b.flatten(b.global_avgpool(x, name="avgpool"), name="flatten")
    return b.build(b.dense(x, num_classes, name="classifier"))


def densenet121(num_classes: int = 1000, in_channels: int = 3, *, seed: int = 0, dtype: str = "float32",
                input_size=224) -> Graph:
    """DenseNet-121 (BC) on 224x224 (or ``input_size``): growth 32, blocks (6, 12, 24, 16); 8.0M parameters, 2.9 GMACs."""
    return _densenet("densenet121", 32, (6, 12, 24, 16), 64, 4, 0.5, num_classes, in_channels, seed, dtype, input_size)
