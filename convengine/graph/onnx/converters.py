"""Converters: ONNX nodes whose data inputs are activations, turned into IR nodes.

Each ``@converter`` function reads its node through a :class:`~.context.NodeContext`:
attributes that later opsets pass as inputs (``Clip`` min/max, ``Pad`` pads, ``Squeeze`` /
``Unsqueeze`` axes, ``Reshape`` shape) must be constants and become IR attributes;
``auto_pad`` becomes explicit ``pads``; a ``Reshape`` target is made to work for any batch
size. ``Shape`` and ``Size`` (:data:`~.context.SPECIAL`) read activations' shapes into constants.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .context import (
    WORLDS,
    NodeContext,
    Unsupported,
    batch_axes,
    check_legacy_broadcast,
    converter,
    onnx_reshape,
    show_shape,
    special,
)


def _explicit_pads(ctx: NodeContext, spatial, kernel, strides, dilations) -> list[int]:
    """ONNX ``pads`` ([begin..., end...]) from ``auto_pad`` and ``pads`` for the given spatial sizes."""
    n = len(spatial)
    auto_pad = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto_pad == "NOTSET":
        pads = ctx.ints_attr("pads", [0] * (2 * n))
        if len(pads) != 2 * n:
            raise Unsupported(f"pads {pads} must have {2 * n} entries for {n} spatial axes")
        if any(p < 0 for p in pads):
            raise Unsupported(f"negative pads {pads} are not supported")
        return pads
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto_pad!r} is not supported (NOTSET, SAME_UPPER, SAME_LOWER, VALID)")
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        begins.append(begin)
        ends.append(end)
    return begins + ends


def _spatial_4d(ctx: NodeContext, what: str):
    shape_a, shape_b = ctx.shapes(0)
    if len(shape_a) != 4:
        raise Unsupported(f"only 2-D {what} on 4-D NCHW tensors is supported; the input has shape "
                          f"{show_shape(shape_a, batch_axes(shape_a, shape_b))}")
    return shape_a


@converter("Conv", attrs=("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"))
def _conv(ctx: NodeContext) -> None:
    x = ctx.activation(0)
    shape = _spatial_4d(ctx, "convolution")
    weight = ctx.const(1, "the weight")
    if weight is None:
        raise Unsupported("the weight input is missing")
    if weight.ndim != 4:
        raise Unsupported(f"the weight must be 4-D, got shape {weight.shape}")
    kernel = ctx.ints_attr("kernel_shape", list(weight.shape[2:]))
    if tuple(kernel) != tuple(weight.shape[2:]):
        raise Unsupported(f"kernel_shape {kernel} does not match the weight's shape {weight.shape}")
    strides = ctx.ints_attr("strides", [1, 1])
    dilations = ctx.ints_attr("dilations", [1, 1])
    pads = _explicit_pads(ctx, shape[2:], kernel, strides, dilations)
    inputs = [x, ctx.input(1)]
    if ctx.input(2):
        bias = ctx.const(2, "the bias")
        if bias.shape != (weight.shape[0],):
            raise Unsupported(f"the bias has shape {bias.shape}, expected ({weight.shape[0]},)")
        inputs.append(ctx.input(2))
    dtype = ctx.imp.dtypes.get(x)
    for k in range(1, len(inputs)):
        value = ctx.imp.consts[inputs[k]][0]
        if dtype is not None and value.dtype.name != dtype:
            raise Unsupported(f"input {inputs[k]!r} is {value.dtype.name} but the data is {dtype}")
    ctx.emit("Conv", inputs, dict(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                                  group=ctx.int_attr("group", 1)))


def _pool(ctx: NodeContext, extra: dict) -> None:
    shape = _spatial_4d(ctx, ctx.op)
    kernel = ctx.ints_attr("kernel_shape")
    if not kernel or len(kernel) != 2:
        raise Unsupported(f"kernel_shape must list 2 sizes, got {kernel}")
    strides = ctx.ints_attr("strides", [1, 1])
    dilations = ctx.ints_attr("dilations", [1, 1])
    ceil_mode = ctx.int_attr("ceil_mode", 0)
    if ceil_mode and (ctx.attr("auto_pad", "NOTSET") or "NOTSET") != "NOTSET":
        raise Unsupported(f"ceil_mode=1 with auto_pad={ctx.attr('auto_pad')!r} is not supported")
    pads = _explicit_pads(ctx, shape[2:], kernel, strides, dilations)
    ctx.emit(ctx.op, [ctx.activation(0)], dict(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                                              ceil_mode=ceil_mode, **extra))


@converter("MaxPool", attrs=("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides"))
def _maxpool(ctx: NodeContext) -> None:
    if ctx.int_attr("storage_order", 0) != 0:
        raise Unsupported(f"storage_order={ctx.attr('storage_order')} is not supported (only 0, row major)")
    ctx.only_first_output("the indices")
    _pool(ctx, {})


@converter("AveragePool", attrs=("auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads",
                                 "strides"))
def _avgpool(ctx: NodeContext) -> None:
    _pool(ctx, dict(count_include_pad=ctx.int_attr("count_include_pad", 0)))


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx: NodeContext) -> None:
    shape, _ = ctx.shapes(0)
    if len(shape) < 3:
        raise Unsupported(f"needs an input of rank >= 3, got shape {shape}")
    ctx.emit(ctx.op, [ctx.activation(0)])


@converter("BatchNormalization", attrs=("epsilon", "momentum", "spatial", "is_test", "consumed_inputs",
                                        "training_mode"))
def _batchnorm(ctx: NodeContext) -> None:
    if ctx.int_attr("training_mode", 0) != 0:
        raise Unsupported("training_mode=1 is not supported (inference only)")
    if ctx.int_attr("spatial", 1) != 1:
        raise Unsupported("spatial=0 (per-activation statistics) is not supported")
    ctx.only_first_output("a training statistic")
    if len([n for n in ctx.inputs if n]) != 5:
        raise Unsupported("needs 5 inputs (X, scale, B, mean, var)")
    ctx.emit("BatchNormalization", ctx.inputs[:5], dict(epsilon=float(ctx.attr("epsilon", 1e-5))))


@converter("LRN", attrs=("alpha", "beta", "bias", "size"))
def _lrn(ctx: NodeContext) -> None:
    if "size" not in ctx.attrs:
        raise Unsupported("attribute size is required")
    ctx.emit("LRN", [ctx.activation(0)], dict(size=int(ctx.attrs["size"]), alpha=float(ctx.attr("alpha", 1e-4)),
                                             beta=float(ctx.attr("beta", 0.75)), bias=float(ctx.attr("bias", 1.0))))


@converter("Relu", "Sigmoid", "Tanh", attrs=("consumed_inputs",))
def _unary(ctx: NodeContext) -> None:
    ctx.emit(ctx.op, [ctx.activation(0)])


@converter("LeakyRelu", attrs=("alpha", "consumed_inputs"))
def _leaky_relu(ctx: NodeContext) -> None:
    ctx.emit("LeakyRelu", [ctx.activation(0)], dict(alpha=float(ctx.attr("alpha", 0.01))))


@converter("Clip", attrs=("min", "max", "consumed_inputs"))
def _clip(ctx: NodeContext) -> None:
    attrs = {}
    for k, key in ((1, "min"), (2, "max")):
        value = ctx.const(k, f"the {key} bound")
        if value is not None:
            if value.size != 1:
                raise Unsupported(f"the {key} bound must be a scalar, got shape {value.shape}")
            attrs[key] = float(value.reshape(()))
        elif key in ctx.attrs:
            attrs[key] = float(ctx.attrs[key])
    ctx.emit("Clip", [ctx.activation(0)], attrs)


@converter("Softmax", attrs=("axis",))
def _softmax(ctx: NodeContext) -> None:
    x = ctx.activation(0)
    shape_a, shape_b = ctx.shapes(0)
    rank = len(shape_a)
    if ctx.opset >= 13:
        ctx.emit("Softmax", [x], dict(axis=ctx.int_attr("axis", -1)))
        return
    axis = ctx.int_attr("axis", 1)
    if not -rank <= axis < rank:
        raise Unsupported(f"axis {axis} is out of range for rank {rank}")
    axis %= rank
    if axis == rank - 1:  # coerce-to-2-D over the last axis is a plain last-axis softmax
        ctx.emit("Softmax", [x], dict(axis=axis))
        return
    # Opset < 13: softmax over all axes from `axis` on, as one row: Flatten, Softmax, Reshape back.
    flat = ctx.imp.fresh_tensor(f"{ctx.outputs[0]}/flat")
    soft = ctx.imp.fresh_tensor(f"{ctx.outputs[0]}/softmax")
    ctx.emit("Flatten", [x], dict(axis=axis), outputs=[flat], name=ctx.imp.fresh_node(f"{ctx.name}/flatten"))
    ctx.emit("Softmax", [flat], dict(axis=1), outputs=[soft])
    target = list(shape_a)
    for i in batch_axes(shape_a, shape_b):
        target[i] = -1
    ctx.emit("Reshape", [soft], dict(shape=target), outputs=ctx.outputs[:1],
             name=ctx.imp.fresh_node(f"{ctx.name}/reshape"))


@converter("Dropout", attrs=("ratio", "is_test", "seed", "consumed_inputs"))
def _dropout(ctx: NodeContext) -> None:
    training = ctx.input(2)
    if training and training in ctx.imp.consts:
        value = ctx.imp.consts[training][0]
        if value.size and bool(value.reshape(-1)[0]):
            raise Unsupported("training_mode=true is not supported (inference only)")
    ctx.only_first_output("the mask")
    ctx.emit("Dropout", [ctx.activation(0)])


@converter("Identity")
def _identity(ctx: NodeContext) -> None:
    ctx.emit("Identity", [ctx.activation(0)])


@converter("Gemm", attrs=("alpha", "beta", "transA", "transB", "broadcast"))
def _gemm(ctx: NodeContext) -> None:
    inputs = [ctx.activation(0), ctx.activation(1)] + ([ctx.input(2)] if ctx.input(2) else [])
    ctx.emit("Gemm", inputs, dict(alpha=float(ctx.attr("alpha", 1.0)), beta=float(ctx.attr("beta", 1.0)),
                                  transA=ctx.int_attr("transA", 0), transB=ctx.int_attr("transB", 0)))


@converter("MatMul")
def _matmul(ctx: NodeContext) -> None:
    ctx.emit("MatMul", [ctx.activation(0), ctx.activation(1)])


@converter("Add", "Mul", attrs=("broadcast", "axis", "consumed_inputs"))
def _binary(ctx: NodeContext) -> None:
    check_legacy_broadcast(ctx)
    ctx.emit(ctx.op, [ctx.activation(0), ctx.activation(1)])


@converter("Sub", attrs=("broadcast", "axis", "consumed_inputs"))
def _sub(ctx: NodeContext) -> None:
    check_legacy_broadcast(ctx)
    a, b = ctx.activation(0), ctx.activation(1)
    if b in ctx.imp.consts:  # x - c == x + (-c)
        negated = ctx.imp.add_param(f"{b}/neg", -ctx.const(1, "the subtrahend"))
        ctx.emit("Add", [a, negated])
        return
    minus_one = ctx.imp.add_param(f"{ctx.name}/minus_one", np.array(-1, dtype=ctx.imp.dtypes[b]))
    negated = ctx.imp.fresh_tensor(f"{ctx.outputs[0]}/neg")
    ctx.emit("Mul", [b, minus_one], outputs=[negated], name=ctx.imp.fresh_node(f"{ctx.name}/neg"))
    ctx.emit("Add", [a, negated])


@converter("Div", attrs=("broadcast", "axis", "consumed_inputs"))
def _div(ctx: NodeContext) -> None:
    check_legacy_broadcast(ctx)
    divisor = ctx.const(1, "the divisor")
    if divisor is None or divisor.dtype.kind != "f":
        raise Unsupported("only division by a floating-point constant is supported")
    with np.errstate(divide="ignore"):
        reciprocal = np.reciprocal(divisor)
    ctx.emit("Mul", [ctx.activation(0), ctx.imp.add_param(f"{ctx.input(1)}/reciprocal", reciprocal)])


@converter("Sum", attrs=("consumed_inputs",))
def _sum(ctx: NodeContext) -> None:
    inputs = [n for n in ctx.inputs if n]
    if not inputs:
        raise Unsupported("needs at least one input")
    ctx.emit("Sum" if len(inputs) > 1 else "Identity", inputs)


@converter("Concat", attrs=("axis",))
def _concat(ctx: NodeContext) -> None:
    if "axis" not in ctx.attrs:
        raise Unsupported("attribute axis is required")
    ctx.emit("Concat", [n for n in ctx.inputs if n], dict(axis=int(ctx.attrs["axis"])))


@converter("Flatten", attrs=("axis",))
def _flatten(ctx: NodeContext) -> None:
    ctx.emit("Flatten", [ctx.activation(0)], dict(axis=ctx.int_attr("axis", 1)))


@converter("Transpose", attrs=("perm",))
def _transpose(ctx: NodeContext) -> None:
    shape_a, _ = ctx.shapes(0)
    perm = ctx.ints_attr("perm", list(reversed(range(len(shape_a)))))
    if sorted(p % len(shape_a) for p in perm) != list(range(len(shape_a))):
        raise Unsupported(f"perm {perm} is not a permutation of {len(shape_a)} axes")
    ctx.emit("Transpose", [ctx.activation(0)], dict(perm=[p % len(shape_a) for p in perm]))


@converter("Reshape", attrs=("shape", "allowzero", "consumed_inputs"))
def _reshape(ctx: NodeContext) -> None:
    x = ctx.activation(0)
    if ctx.input(1):
        t_a, t_b = (np.asarray(t).astype(np.int64).reshape(-1) for t in ctx.worlds(1, "the target shape"))
    elif "shape" in ctx.attrs:
        t_a = t_b = np.asarray(ctx.ints_attr("shape"), dtype=np.int64)
    else:
        raise Unsupported("the target shape is missing")
    allowzero = ctx.int_attr("allowzero", 0)
    target = _batch_free_target(ctx, ctx.shapes(0), [int(v) for v in t_a], [int(v) for v in t_b], allowzero)
    ctx.emit("Reshape", [x], dict(shape=target))


def _batch_free_target(ctx, shapes, t_a, t_b, allowzero) -> list[int]:
    """A Reshape target, with ONNX's 0/-1 semantics, that is right for every batch size.

    In order of preference: the file's target made batch-independent (batch entries -> 0 or
    -1) when the output keeps a clean batch axis; the same with a literal export batch size
    rewritten to 0 (``[1, 9216]`` from a batch-1 export -> ``[0, 9216]``); the file's target
    made batch-independent even if it folds the batch into another axis (``[-1, H*W]``), as
    long as it means what the file means at both batch sizes.
    """
    x_a, x_b = shapes
    batch = ctx.imp.batch
    if len(t_a) != len(t_b):
        raise Unsupported(f"the length of the target shape {t_a} depends on the batch size")
    if allowzero and (0 in t_a or 0 in t_b):
        raise Unsupported("allowzero=1 with a zero in the target shape is not supported")
    n_axes = batch_axes(x_a, x_b)
    target, dynamic = [], []
    for i, (a, b) in enumerate(zip(t_a, t_b)):
        if a == b:
            target.append(a)
        elif i in n_axes and a == x_a[i] and b == x_b[i]:
            target.append(0)  # "the batch size" at the batch axis: copy the input's dimension
        else:
            target.append(None)
            dynamic.append(i)
    shown = [a if a == b else "N-dependent" for a, b in zip(t_a, t_b)]
    if dynamic:
        if len(dynamic) > 1 or -1 in target:
            raise Unsupported(f"target shape {shown} has several batch-dependent entries; cannot make it "
                              f"independent of the batch size")
        target[dynamic[0]] = -1

    def outputs(candidate):
        return onnx_reshape(x_a, candidate), onnx_reshape(x_b, candidate)

    def faithful(candidate) -> bool:  # the file's own result at both batch sizes
        out = outputs(candidate)
        return None not in out and out == (onnx_reshape(x_a, t_a), onnx_reshape(x_b, t_b))

    def clean(candidate) -> bool:  # the output has one batch axis, of the batch size
        out_a, out_b = outputs(candidate)
        if out_a is None or out_b is None:
            return False
        moved = batch_axes(out_a, out_b)
        return len(moved) == 1 and (out_a[moved[0]], out_b[moved[0]]) == batch

    if faithful(target) and clean(target):
        return target
    # A literal export batch size (e.g. [1, 9216] from a batch-1 export): make it "copy the batch".
    for axis in n_axes:
        if (x_a[axis], x_b[axis]) == batch and axis < len(target) and target[axis] == batch[0]:
            candidate = list(target)
            candidate[axis] = 0
            if clean(candidate):
                return candidate
    if faithful(target):
        return target
    raise Unsupported(f"cannot reshape {show_shape(x_a, n_axes)} to {shown} for every batch size "
                      f"(N is the batch size)")



def _axes(ctx: NodeContext, required: bool) -> Optional[list[int]]:
    if "axes" in ctx.attrs:
        return ctx.ints_attr("axes")
    value = ctx.const(1, "the axes")
    if value is None:
        if required:
            raise Unsupported("the axes are missing")
        return None
    return [int(v) for v in value.reshape(-1)]


@converter("Squeeze", attrs=("axes",))
def _squeeze(ctx: NodeContext) -> None:
    shape_a, shape_b = ctx.shapes(0)
    n_axes = batch_axes(shape_a, shape_b)
    axes = _axes(ctx, required=False)
    rank = len(shape_a)
    if axes is None:  # all axes of size 1, but never the batch axis (size 1 only in a batch-1 export)
        axes = [i for i in range(rank) if shape_a[i] == 1 and shape_b[i] == 1]
    if any(not -rank <= a < rank for a in axes):
        raise Unsupported(f"axes {axes} are out of range for rank {rank}")
    axes = sorted({a % rank for a in axes})
    if any(a in n_axes for a in axes):
        raise Unsupported(f"squeezing the batch axis of {show_shape(shape_a, n_axes)} is not supported")
    bad = [a for a in axes if shape_a[a] != 1]
    if bad:
        raise Unsupported(f"cannot squeeze axes {bad} of shape {shape_a}: their size is not 1")
    ctx.emit("Squeeze", [ctx.activation(0)], dict(axes=axes))


@converter("Unsqueeze", attrs=("axes",))
def _unsqueeze(ctx: NodeContext) -> None:
    shape_a, _ = ctx.shapes(0)
    axes = _axes(ctx, required=True)
    rank = len(shape_a) + len(axes)
    if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        raise Unsupported(f"axes {axes} are out of range or repeated for output rank {rank}")
    ctx.emit("Unsqueeze", [ctx.activation(0)], dict(axes=sorted(a % rank for a in axes)))


@converter("Pad", attrs=("pads", "mode", "value", "paddings"))
def _pad(ctx: NodeContext) -> None:
    shape_a, shape_b = ctx.shapes(0)
    rank = len(shape_a)
    mode = ctx.attr("mode", "constant") or "constant"
    if mode not in ("constant", "reflect", "edge"):
        raise Unsupported(f"mode={mode!r} is not supported (constant, reflect, edge)")
    if "pads" in ctx.attrs or "paddings" in ctx.attrs:
        pads = ctx.ints_attr("pads") or ctx.ints_attr("paddings")
        value = float(ctx.attr("value", 0.0))
    else:
        raw = ctx.const(1, "the pads")
        if raw is None:
            raise Unsupported("the pads are missing")
        pads = [int(v) for v in raw.reshape(-1)]
        fill = ctx.const(2, "the constant value")
        value = 0.0 if fill is None or fill.size == 0 else float(fill.reshape(-1)[0])
        axes = ctx.const(3, "the axes")
        if axes is not None:  # opset 18: pads only for the listed axes
            axes = [int(a) % rank for a in axes.reshape(-1)]
            if len(pads) != 2 * len(axes):
                raise Unsupported(f"pads {pads} do not match axes {axes}")
            full = [0] * (2 * rank)
            for j, a in enumerate(axes):
                full[a], full[a + rank] = pads[j], pads[j + len(axes)]
            pads = full
    if len(pads) != 2 * rank:
        raise Unsupported(f"pads {pads} must have {2 * rank} entries for an input of rank {rank}")
    if any(p < 0 for p in pads):
        raise Unsupported(f"negative pads (cropping) {pads} are not supported")
    for axis in batch_axes(shape_a, shape_b):
        if pads[axis] or pads[axis + rank]:
            raise Unsupported(f"padding the batch axis ({pads}) is not supported")
    ctx.emit("Pad", [ctx.activation(0)], dict(pads=pads, mode=mode, value=value))


# -- special: Shape works on activations too -------------------------------------------------


@special("Shape")
def _shape_op(ctx: NodeContext) -> None:
    ctx.check_attrs(("start", "end"))
    name = ctx.activation(0)
    start, end = ctx.attr("start"), ctx.attr("end")
    values = []
    for w in WORLDS:
        shape = ctx.imp.shape(name, w)
        values.append(np.array(shape[slice(start, end)], dtype=np.int64))
    ctx.imp.consts[ctx.outputs[0]] = tuple(values)


@special("Size")
def _size_op(ctx: NodeContext) -> None:
    name = ctx.activation(0)
    ctx.imp.consts[ctx.outputs[0]] = tuple(np.array(math.prod(ctx.imp.shape(name, w)), dtype=np.int64)
                                           for w in WORLDS)

