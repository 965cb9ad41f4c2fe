"""AlexNet (Krizhevsky, Sutskever & Hinton 2012) as in the course, with torchvision's parameter names."""

from __future__ import annotations

from ..graph import Graph, GraphBuilder


def alexnet(num_classes: int = 1000, in_channels: int = 3, *, seed: int = 0, dtype: str = "float32") -> Graph:
    """The course's single-tower AlexNet on 224x224 inputs.

    conv 11x11 stride 4 padding 1 -> 96, ReLU, 3x3/2 max-pool; conv 5x5 padding 2 -> 256,
    ReLU, 3x3/2 max-pool; three 3x3 padding 1 convs -> 384, 384, 256 with ReLU, 3x3/2
    max-pool; flatten (256 x 5 x 5 = 6400); dense 4096, ReLU, dropout; dense 4096, ReLU,
    dropout; dense ``num_classes``. There is no LRN and no adaptive pooling.

    The architecture is the course's (96 first-layer channels, padding 1 on the first conv,
    a fixed 5x5 final map), which differs from torchvision's ``alexnet`` (64/192 channels,
    6x6 map after adaptive pooling); only torchvision's *naming scheme* is borrowed:
    ``features.0``, ``features.3``, ``features.6``, ``features.8``, ``features.10`` for
    the convolutions and ``classifier.1``, ``classifier.4``, ``classifier.6`` for the dense
    layers, so a ``torch.nn.Sequential`` laid out like torchvision's (dropout, linear, ReLU,
    dropout, linear, ReLU, linear) has the same ``state_dict`` keys. Dropout is the identity
    at inference, so its position relative to the ReLU does not change the outputs.
    """
    b = GraphBuilder("alexnet", (in_channels, 224, 224), seed=seed, dtype=dtype)
    x = b.activation(b.conv(b.input.name, 96, 11, stride=4, padding=1, name="features.0"), name="features.1")
    x = b.maxpool(x, 3, 2, name="features.2")
    x = b.activation(b.conv(x, 256, 5, padding=2, name="features.3"), name="features.4")
    x = b.maxpool(x, 3, 2, name="features.5")
    x = b.activation(b.conv(x, 384, 3, padding=1, name="features.6"), name="features.7")
    x = b.activation(b.conv(x, 384, 3, padding=1, name="features.8"), name="features.9")
    x = b.activation(b.conv(x, 256, 3, padding=1, name="features.10"), name="features.11")
    x = b.maxpool(x, 3, 2, name="features.12")
    x = b.flatten(x, name="flatten")
    x = b.activation(b.dense(x, 4096, name="classifier.1"), name="classifier.2")
    x = b.dropout(x)
    x = b.activation(b.dense(x, 4096, name="classifier.4"), name="classifier.5")
    x = b.dropout(x)
    return b.build(b.dense(x, num_classes, name="classifier.6"))
