"""The model zoo: classic CNNs as convengine graphs, with PyTorch-compatible parameter names.

Every factory has the signature ``(num_classes=..., in_channels=..., *, seed=0,
dtype="float32") -> Graph`` (LeNet adds ``activation=``); ``get_model(name, **kwargs)``
looks one up by name.
"""

from __future__ import annotations

from typing import Callable

from ..graph import Graph
from .alexnet import alexnet
from .densenet import densenet121
from .lenet import lenet
from .mobilenet import mobilenet_v2
from .resnet import resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d, wide_resnet50_2
from .shufflenet import shufflenet_v2_x1_0
from .squeezenet import squeezenet1_1

#: Model name -> factory.
MODELS: dict[str, Callable[..., Graph]] = {
    "lenet": lenet,
    "alexnet": alexnet,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet152": resnet152,
    "densenet121": densenet121,
    "resnext50_32x4d": resnext50_32x4d,
    "wide_resnet50_2": wide_resnet50_2,
    "squeezenet1_1": squeezenet1_1,
    "shufflenet_v2_x1_0": shufflenet_v2_x1_0,
    "mobilenet_v2": mobilenet_v2,
}


def get_model(name: str, **kwargs) -> Graph:
    """Build the model called ``name`` (see :data:`MODELS`), passing ``kwargs`` to its factory."""
    try:
        factory = MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    return factory(**kwargs)


__all__ = ["MODELS", "alexnet", "densenet121", "get_model", "lenet", "mobilenet_v2", "resnet18", "resnet34", "resnet50",
           "resnet101", "resnet152", "resnext50_32x4d", "shufflenet_v2_x1_0", "squeezenet1_1", "wide_resnet50_2"]
