"""A model from what a user types: a zoo name or the path of an ONNX file."""

from __future__ import annotations

import os


def is_model_file(spec: str) -> bool:
    """Whether ``spec`` names a file (an ``.onnx`` path, or anything with a separator or on disk), not a zoo model."""
    return spec.endswith(".onnx") or os.path.sep in spec or os.path.exists(spec)


def load_model(spec: str, input_shape=None):
    """A zoo name (``resnet18``) or a path to an ``.onnx`` file; ``input_shape`` (C, H, W) for zoo models."""
    if is_model_file(spec):
        from ..graph.onnx import load_onnx

        if not os.path.exists(spec):
            raise ValueError(f"model file {spec!r} does not exist")
        return load_onnx(spec)
    import inspect

    from . import MODELS, get_model

    if input_shape is None:
        return get_model(spec)
    c, h, w = input_shape
    factory = MODELS.get(spec)
    if factory is not None and "input_size" in inspect.signature(factory).parameters:
        return get_model(spec, in_channels=c, input_size=(h, w))
    graph = get_model(spec, in_channels=c)
    natural = tuple(graph.inputs[0].shape[2:])
    if natural != (h, w):
        raise ValueError(f"model {spec!r} is defined for {natural[0]}x{natural[1]} inputs only; got {h}x{w}")
    return graph
