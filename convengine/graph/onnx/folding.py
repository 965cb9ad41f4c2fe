"""Folders: ONNX nodes whose inputs are all constants, evaluated with numpy at load time.

Exporters compute reshape targets and the like from the input's shape (``Shape -> Gather ->
Unsqueeze -> Concat -> Reshape``, ``Div``, ``Cast``, ``Slice``...). Evaluated in both worlds
(:mod:`convengine.graph.onnx`), such arithmetic becomes a constant, or a value known to
depend on the batch size; either way no IR node is left for it.
"""

from __future__ import annotations

import math

import numpy as np

from .context import Unsupported, check_legacy_broadcast, folder, onnx_reshape


@folder("Constant", attrs=("value", "value_float", "value_floats", "value_int", "value_ints"))
def _fold_constant(ctx, values):
    attrs = ctx.attrs
    onnx = ctx.imp.onnx
    if "value" in attrs:
        return [onnx.numpy_helper.to_array(attrs["value"])]
    if "value_float" in attrs:
        return [np.array(attrs["value_float"], dtype=np.float32)]
    if "value_floats" in attrs:
        return [np.array(attrs["value_floats"], dtype=np.float32)]
    if "value_int" in attrs:
        return [np.array(attrs["value_int"], dtype=np.int64)]
    if "value_ints" in attrs:
        return [np.array(attrs["value_ints"], dtype=np.int64)]
    raise Unsupported("a Constant needs one of value, value_float(s), value_int(s)")


@folder("ConstantOfShape", attrs=("value",))
def _fold_constant_of_shape(ctx, values):
    fill = ctx.attr("value")
    fill = np.zeros(1, np.float32) if fill is None else ctx.imp.onnx.numpy_helper.to_array(fill).reshape(-1)
    return [np.full(tuple(int(d) for d in values[0].reshape(-1)), fill[0], dtype=fill.dtype)]


@folder("Identity")
def _fold_identity(ctx, values):
    return [values[0]]


@folder("Cast", attrs=("to", "saturate", "round_mode"))
def _fold_cast(ctx, values):
    dtype = ctx.imp.onnx.helper.tensor_dtype_to_np_dtype(int(ctx.attrs["to"]))
    return [values[0].astype(dtype)]


@folder("Gather", attrs=("axis",))
def _fold_gather(ctx, values):
    data, indices = values
    return [np.take(data, indices.astype(np.int64), axis=ctx.int_attr("axis", 0))]


@folder("Slice", attrs=("starts", "ends", "axes"))
def _fold_slice(ctx, values):
    data = values[0]
    if "starts" in ctx.attrs:
        starts, ends = ctx.ints_attr("starts"), ctx.ints_attr("ends")
        axes = ctx.ints_attr("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = [int(v) for v in values[1].reshape(-1)], [int(v) for v in values[2].reshape(-1)]
        axes = ([int(v) for v in values[3].reshape(-1)] if len(values) > 3 and values[3] is not None
                else list(range(len(starts))))
        steps = ([int(v) for v in values[4].reshape(-1)] if len(values) > 4 and values[4] is not None
                 else [1] * len(starts))
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a % data.ndim] = slice(s, e, st)
    return [data[tuple(index)]]


@folder("Concat", attrs=("axis",))
def _fold_concat(ctx, values):
    return [np.concatenate([v for v in values if v is not None], axis=int(ctx.attrs["axis"]))]


@folder("Unsqueeze", attrs=("axes",))
def _fold_unsqueeze(ctx, values):
    axes = ctx.ints_attr("axes") if "axes" in ctx.attrs else [int(v) for v in values[1].reshape(-1)]
    x = values[0]
    rank = x.ndim + len(axes)
    shape = list(x.shape)
    for a in sorted(a % rank for a in axes):
        shape.insert(a, 1)
    return [x.reshape(shape)]


@folder("Squeeze", attrs=("axes",))
def _fold_squeeze(ctx, values):
    x = values[0]
    if "axes" in ctx.attrs:
        axes = ctx.ints_attr("axes")
    elif len(values) > 1 and values[1] is not None:
        axes = [int(v) for v in values[1].reshape(-1)]
    else:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    return [np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]


@folder("Reshape", attrs=("shape", "allowzero", "consumed_inputs"))
def _fold_reshape(ctx, values):
    x = values[0]
    target = ctx.ints_attr("shape") if len(values) < 2 or values[1] is None else [int(v) for v in values[1]]
    out = onnx_reshape(x.shape, target, ctx.int_attr("allowzero", 0))
    if out is None:
        raise Unsupported(f"cannot reshape constant of shape {x.shape} to {target}")
    return [x.reshape(out)]


@folder("Flatten", attrs=("axis",))
def _fold_flatten(ctx, values):
    x = values[0]
    axis = ctx.int_attr("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return [x.reshape(math.prod(x.shape[:axis]), -1)]


@folder("Transpose", attrs=("perm",))
def _fold_transpose(ctx, values):
    return [np.transpose(values[0], ctx.ints_attr("perm"))]


def _int_div(a, b):
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":  # ONNX (C++) integer division truncates
        q = np.abs(a) // np.abs(b)
        return (np.sign(a) * np.sign(b) * q).astype(np.result_type(a, b))
    return a / b


_ARITHMETIC = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _int_div}


@folder("Add", "Sub", "Mul", "Div", attrs=("broadcast", "axis", "consumed_inputs"))
def _fold_arithmetic(ctx, values):
    check_legacy_broadcast(ctx)
    a, b = values
    out = _ARITHMETIC[ctx.op](a, b)
    return [np.asarray(out).astype(np.result_type(a, b), copy=False)]


_UNARY = {"Neg": np.negative, "Floor": np.floor, "Ceil": np.ceil, "Abs": np.abs, "Sqrt": np.sqrt}


@folder(*_UNARY)
def _fold_unary(ctx, values):
    return [_UNARY[ctx.op](values[0])]


@folder("Equal")
def _fold_equal(ctx, values):
    return [np.equal(values[0], values[1])]


@folder("Where")
def _fold_where(ctx, values):
    return [np.where(values[0], values[1], values[2])]


@folder("Range")
def _fold_range(ctx, values):
    start, limit, delta = (v.reshape(()) for v in values)
    return [np.arange(start, limit, delta, dtype=np.result_type(start, limit, delta))]


@folder("ReduceProd", attrs=("axes", "keepdims", "noop_with_empty_axes"))
def _fold_reduce_prod(ctx, values):
    x = values[0]
    axes = ctx.ints_attr("axes")
    if axes is None and len(values) > 1 and values[1] is not None:
        axes = [int(v) for v in values[1].reshape(-1)]
    if not axes and ctx.int_attr("noop_with_empty_axes", 0):
        return [x]
    axis = None if not axes else tuple(a % x.ndim for a in axes)
    return [np.prod(x, axis=axis, keepdims=bool(ctx.int_attr("keepdims", 1))).astype(x.dtype)]


@folder("Expand")
def _fold_expand(ctx, values):
    x, shape = values
    shape = tuple(int(d) for d in shape.reshape(-1))
    out = np.broadcast_shapes(x.shape, shape)
    return [np.broadcast_to(x, out).copy()]
