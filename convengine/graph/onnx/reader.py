"""Reading an ONNX model: the file, bytes, stream or ``ModelProto`` parsed and checked.

A file that does not parse, or parses into something that is not a model (no graph, no
outputs, no default-domain opset), is one :class:`~convengine.graph.GraphError` naming the
source, before any node is looked at. ``onnx`` itself is imported here, on first use.
"""

from __future__ import annotations

import os
import sys

import numpy as np

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
    """``(ModelProto, label for messages, initializers)``; parse errors become GraphError naming the source.

    ``initializers`` yields each initializer's ``(name, array)``, once. From a file
    they are parsed one at a time as the importer converts them (:func:`_stream_file`), so
    loading holds one copy of the weights, not the file's bytes, the parsed protobuf and the
    arrays at once (three copies: AlexNet's 233 MB file had peaked at 711 MiB).
    """
    if isinstance(source, (str, os.PathLike)):
        label = f"ONNX file {os.fspath(source)!r}"
        base_dir = os.path.dirname(os.path.abspath(os.fspath(source)))
        streamed = _stream_file(onnx, source)  # a missing file is FileNotFoundError, not GraphError
        if streamed is not None:
            proto, tensors = streamed
            _check(proto, label)
            return proto, label, _initializers_from_file(onnx, source, tensors, base_dir, label)
        with open(source, "rb") as f:
            data = f.read()
        proto = _parse(onnx, data, label, base_dir)
    elif isinstance(source, onnx.ModelProto):
        proto, label = source, f"model {source.graph.name or '<unnamed>'!r}"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label = "ONNX model bytes"
        proto = _parse(onnx, bytes(source), label, None)
    elif hasattr(source, "read"):
        label = f"ONNX stream {getattr(source, 'name', '<stream>')!r}"
        proto = _parse(onnx, source.read(), label, None)
    else:
        raise TypeError(f"load_onnx needs a path, bytes, a file object or an onnx.ModelProto, "
                        f"got {type(source).__name__}")
    _check(proto, label)
    return proto, label, _initializers_in(onnx, proto, label)


def _parse(onnx, data: bytes, label: str, base_dir):
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
    return proto


def _check(proto, label: str) -> None:
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


# -- reading a file's weights one at a time ---------------------------------------------------------
# The protobuf wire format (https://protobuf.dev/programming-guides/encoding/): a message is a
# sequence of fields, each a varint key (field number << 3 | wire type) and a payload. Only the
# two levels that hold the weights are walked here: ModelProto's field 7 (graph) and, in it,
# GraphProto's field 5 (initializer). Everything else is copied as it is and parsed by onnx.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _stream_file(onnx, path):
    """``(ModelProto without initializers, [(offset, size) of each initializer])``, reading the
    file's fields in order; ``None`` when it is not walkable that way (the caller then parses it
    whole and reports what is wrong with it)."""
    from google.protobuf.message import DecodeError  # (protobuf comes with onnx, imported by now)

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            model_rest, graph_rest, tensors = bytearray(), bytearray(), []
            graph_seen = False
            for field, wire, key, payload_at, length in _fields(f, 0, size):
                if field == _MODEL_GRAPH and wire == _LENGTH and not graph_seen:
                    graph_seen = True
                    for g_field, g_wire, g_key, g_at, g_length in _fields(f, payload_at, payload_at + length):
                        if g_field == _GRAPH_INITIALIZER and g_wire == _LENGTH:
                            tensors.append((g_at, g_length))
                        else:
                            graph_rest += g_key + _read_at(f, g_at, g_length)
                else:
                    model_rest += key + _read_at(f, payload_at, length)
        if not graph_seen:
            return None
        model_rest += _varint_bytes(_MODEL_GRAPH << 3 | _LENGTH) + _varint_bytes(len(graph_rest)) + graph_rest
        proto = onnx.ModelProto()
        proto.ParseFromString(bytes(model_rest))
        return proto, tensors
    except (ValueError, EOFError, DecodeError):  # not walkable: the whole-file parse reports what is wrong
        return None


def _initializers_from_file(onnx, path, tensors, base_dir, label):
    """``(name, array)`` of each initializer, read when asked for (a generator). A tensor's
    ``raw_data`` is read from the file straight into its array: one copy, where parsing the
    TensorProto and converting it would hold three of the tensor at once (AlexNet's first
    fully-connected weight alone is 151 MB)."""
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    with open(path, "rb") as f:
        for at, length in tensors:
            tensor, raw = onnx.TensorProto(), None
            try:
                rest = bytearray()
                for field, _, key, payload_at, size in _fields(f, at, at + length):
                    if field == _TENSOR_RAW_DATA and sys.byteorder == "little":
                        raw = (payload_at, size)
                    else:
                        rest += key + _read_at(f, payload_at, size)
                tensor.ParseFromString(bytes(rest))
                if raw is not None:
                    yield tensor.name, _raw_array(onnx, f, tensor, *raw)
                    continue
                if uses_external_data(tensor):
                    load_external_data_for_tensor(tensor, base_dir)
                yield tensor.name, onnx.numpy_helper.to_array(tensor)
            except GraphError:
                raise
            except Exception as exc:
                name = tensor.name or f"at bytes {at}-{at + length}"
                raise GraphError(f"{label}: cannot read initializer {name!r}: {type(exc).__name__}: {exc}") from None


def _raw_array(onnx, f, tensor, at: int, size: int):
    """The array a TensorProto's little-endian ``raw_data`` (``size`` bytes at ``at``) holds."""
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    shape = tuple(tensor.dims)
    if dtype.kind not in "fciub" or dtype.itemsize * int(np.prod(shape, dtype=np.int64)) != size:
        tensor.raw_data = _read_at(f, at, size)  # (bfloat16, float8...: onnx knows how to widen them)
        return onnx.numpy_helper.to_array(tensor)
    array = np.empty(shape, dtype)
    f.seek(at)
    if f.readinto(memoryview(array.reshape(-1)).cast("B")) != size:
        raise EOFError("the file ends inside a tensor")
    return array


def _initializers_in(onnx, proto, label):
    """``(name, array)`` of each initializer of a parsed model."""
    for t in proto.graph.initializer:
        try:
            value = onnx.numpy_helper.to_array(t)
        except Exception as exc:
            raise GraphError(f"{label}: cannot read initializer {t.name!r}: {type(exc).__name__}: {exc}") from None
        yield t.name, value


def _fields(f, start: int, end: int):
    """``(field number, wire type, key bytes, payload offset, payload length)`` of each field in
    ``[start, end)``; a varint or fixed-size payload is returned as its bytes' span too."""
    at = start
    while at < end:
        f.seek(at)
        key, key_size = _read_varint(f)
        field, wire = key >> 3, key & 7
        payload_at = at + key_size
        if wire == _VARINT:
            _, length = _read_varint(f)
        elif wire == _LENGTH:
            length, size = _read_varint(f)
            payload_at += size
            key_bytes = _varint_bytes(key) + _varint_bytes(length)
            if payload_at + length > end:
                raise EOFError("a field runs past its message")
            yield field, wire, key_bytes, payload_at, length
            at = payload_at + length
            continue
        elif wire in (_FIXED64, _FIXED32):
            length = 8 if wire == _FIXED64 else 4
        else:
            raise ValueError(f"wire type {wire} (groups) is not walked")
        if field == 0 or payload_at + length > end:
            raise ValueError("not a protobuf field")
        yield field, wire, _varint_bytes(key), payload_at, length
        at = payload_at + length


def _read_varint(f) -> tuple[int, int]:
    """``(value, bytes read)`` of the varint at the file's position."""
    value = shift = count = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise EOFError("the file ends inside a varint")
        count += 1
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value, count
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_at(f, at: int, length: int) -> bytes:
    f.seek(at)
    data = f.read(length)
    if len(data) != length:
        raise EOFError("the file ends inside a field")
    return data


def _uses_external_data(proto) -> bool:
    return any(t.data_location == 1 for t in proto.graph.initializer)  # TensorProto.EXTERNAL

