"""LeNet-5 (LeCun et al. 1998) as in the course: the first convolutional network."""

from __future__ import annotations

from ..graph import Graph, GraphBuilder


def lenet(num_classes: int = 10, in_channels: int = 1, *, activation: str = "sigmoid", seed: int = 0,
          dtype: str = "float32") -> Graph:
    """conv 1->6 5x5 pad 2, pool, conv 6->16 5x5, pool, dense 400->120->84->num_classes on 28x28.

    ``activation`` is ``"sigmoid"`` as in 1998, or ``"relu"``/``"tanh"``/...; pooling is
    2x2 average pooling with stride 2, as in the original. Parameter names follow the
    course's PyTorch class (``conv1``, ``conv2``, ``fc1``-``fc3``).
    """
    b = GraphBuilder("lenet", (in_channels, 28, 28), seed=seed, dtype=dtype)
    x = b.activation(b.conv(b.input.name, 6, 5, padding=2, name="conv1"), activation)
    x = b.avgpool(x, 2, 2)
    x = b.activation(b.conv(x, 16, 5, name="conv2"), activation)
    x = b.avgpool(x, 2, 2)
    x = b.flatten(x)
    x = b.activation(b.dense(x, 120, name="fc1"), activation)
    x = b.activation(b.dense(x, 84, name="fc2"), activation)
    return b.build(b.dense(x, num_classes, name="fc3"))
