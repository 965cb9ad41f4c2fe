"""Reading an ONNX model: the file, bytes, stream or ``ModelProto`` parsed and checked.

A file that does not parse, or parses into something that is not a model (no graph, no
outputs, no default-domain opset), is one :class:`~convengine.graph.GraphError` naming the
source, before any node is looked at. ``onnx`` itself is imported here, on first use.
"""

from __future__ import annotations

import os

from ..ir import GraphError

INSTALL_HINT = "pip install convengine[onnx]"

def import_onnx():
    """The ``onnx`` module, or an ImportError saying how to install it."""
    try:
        import onnx
        from onnx import helper, numpy_helper  # noqa: F401  (loads the submodules read as onnx.helper, onnx.numpy_helper)
    except ImportError as exc:  # pragma: no cover - exercised only without onnx
        raise ImportError(f"loading ONNX models needs the 'onnx' package: {INSTALL_HINT}") from exc
    return onnx


def read_model(onnx, source):
    """``(ModelProto, label for messages)``; parse errors become GraphError naming the source."""
    if isinstance(source, onnx.ModelProto):
        proto, label = source, f"model {source.graph.name or '<unnamed>'!r}"
    else:
        if isinstance(source, (str, os.PathLike)):
            label = f"ONNX file {os.fspath(source)!r}"
            with open(source, "rb") as f:  # a missing file is FileNotFoundError, not GraphError
                data = f.read()
            base_dir = os.path.dirname(os.path.abspath(os.fspath(source)))
        elif isinstance(source, (bytes, bytearray, memoryview)):
            data, label, base_dir = bytes(source), "ONNX model bytes", None
        elif hasattr(source, "read"):
            data = source.read()
            label, base_dir = f"ONNX stream {getattr(source, 'name', '<stream>')!r}", None
        else:
            raise TypeError(f"load_onnx needs a path, bytes, a file object or an onnx.ModelProto, "
                            f"got {type(source).__name__}")
        if not data:
            raise GraphError(f"cannot parse {label}: it is empty")
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(data)
        except Exception as exc:
            raise GraphError(f"cannot parse {label} ({len(data)} bytes): the protobuf does not decode "
                             f"({type(exc).__name__}: {exc}); the file is truncated or not an ONNX model") from None
        if base_dir is not None:
            try:
                from onnx.external_data_helper import load_external_data_for_model

                if _uses_external_data(proto):
                    load_external_data_for_model(proto, base_dir)
            except Exception as exc:
                raise GraphError(f"cannot load the external weights of {label}: {type(exc).__name__}: {exc}") from None
    problems = []
    if proto.ir_version <= 0:
        problems.append("no ir_version")
    if not proto.HasField("graph"):
        problems.append("no graph")
    elif not proto.graph.output:
        problems.append("the graph has no outputs")
    if not any(o.domain in ("", "ai.onnx") for o in proto.opset_import):
        problems.append("no opset_import for the default ONNX domain")
    if problems:
        raise GraphError(f"cannot parse {label}: not a valid ONNX model ({'; '.join(problems)}); "
                         f"the file is truncated or corrupt")
    return proto, label


def _uses_external_data(proto) -> bool:
    return any(t.data_location == 1 for t in proto.graph.initializer)  # TensorProto.EXTERNAL

