"""SqueezeNet 1.1 (Iandola et al. 2016; v1.1 from the authors' repository) with torchvision's ``state_dict`` names.

AlexNet-level accuracy from 1.2M parameters: *fire* modules squeeze the channels with 1x1
convolutions (``squeeze``) and expand them again with 1x1 and 3x3 convolutions side by side
(``expand1x1``, ``expand3x3``), whose ReLU outputs are concatenated. Version 1.1 starts with
a 3x3 stride-2 convolution to 64 channels and pools earlier than 1.0, for 2.4x fewer MACs at
the same accuracy. There are no fully connected layers and no batch norm: the classifier is
dropout, a 1x1 convolution to ``num_classes`` channels (with ReLU) and global average
pooling, so the logits are non-negative. Max-pools use ``ceil_mode``.

Parameter names match ``torchvision.models.squeezenet1_1().state_dict()``: ``features.0``
(stem), fire modules ``features.3, 4, 6, 7, 9, 10, 11, 12`` (each ``.squeeze``,
``.expand1x1``, ``.expand3x3``, all with bias) and ``classifier.1``.
"""

from __future__ import annotations

from ..graph import Graph, GraphBuilder

__all__ = ["squeezenet1_1"]

#: features index -> (squeeze, expand1x1, expand3x3) channels; max-pools at 2, 5 and 8.
FIRES = {3: (16, 64, 64), 4: (16, 64, 64), 6: (32, 128, 128), 7: (32, 128, 128),
         9: (48, 192, 192), 10: (48, 192, 192), 11: (64, 256, 256), 12: (64, 256, 256)}


def _fire(b: GraphBuilder, x: str, squeeze: int, expand1x1: int, expand3x3: int, prefix: str) -> str:
    """1x1 squeeze, ReLU, then [1x1 expand, ReLU | 3x3 expand (padding 1), ReLU] concatenated on channels."""
    s = b.activation(b.conv(x, squeeze, 1, name=f"{prefix}.squeeze"), name=f"{prefix}.squeeze_activation")
    e1 = b.activation(b.conv(s, expand1x1, 1, name=f"{prefix}.expand1x1"), name=f"{prefix}.expand1x1_activation")
    e3 = b.activation(b.conv(s, expand3x3, 3, padding=1, name=f"{prefix}.expand3x3"),
                      name=f"{prefix}.expand3x3_activation")
    return b.concat([e1, e3], name=f"{prefix}.concat")


def squeezenet1_1(num_classes: int = 1000, in_channels: int = 3, *, seed: int = 0, dtype: str = "float32",
                  input_size=224) -> Graph:
    """SqueezeNet 1.1 on 224x224 (or ``input_size``, at least 17x17); 1.24M parameters, 0.35 GMACs."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    b = GraphBuilder("squeezenet1_1", (in_channels, h, w), seed=seed, dtype=dtype)
    x = b.activation(b.conv(b.input.name, 64, 3, stride=2, name="features.0"), name="features.1")
    for index in range(2, 13):
        if index in FIRES:
            x = _fire(b, x, *FIRES[index], prefix=f"features.{index}")
        else:
            x = b.maxpool(x, 3, 2, ceil_mode=True, name=f"features.{index}")
    x = b.dropout(x, name="classifier.0")
    x = b.activation(b.conv(x, num_classes, 1, name="classifier.1"), name="classifier.2")
    return b.build(b.flatten(b.global_avgpool(x, name="classifier.3"), name="flatten"))
