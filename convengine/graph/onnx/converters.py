"""Converters for layers and arithmetic: convolutions, pooling, normalisation, activations, elementwise, reductions.

Each ``@converter`` function reads its node through a :class:`~.context.NodeContext`:
attributes that later opsets pass as inputs (``Clip`` min/max, reduction axes) must be
constants and become IR attributes; ``auto_pad`` and ``output_shape`` become explicit
``pads``. Where ONNX spells a cheaper IR node differently, it is spelt that way here:
``x - c`` is an ``Add`` of ``-c`` and ``x / c`` a ``Mul`` by ``1 / c`` (both fuse into a
convolution's epilogue), a mean over the spatial axes is a ``GlobalAveragePool``.
The tensors' shape and layout are :mod:`.shaping`'s.
"""

from __future__ import annotations

import numpy as np

from .context import (
    NodeContext,
    Unsupported,
    axes_of,
    batch_axes,
    check_legacy_broadcast,
    converter,
    show_shape,
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


def _conv_weight(ctx: NodeContext):
    """``(weight, kernel_shape, strides, dilations)``: the constant 4-D weight and the attributes checked against it."""
    weight = ctx.const(1, "the weight")
    if weight is None:
        raise Unsupported("the weight input is missing")
    if weight.ndim != 4:
        raise Unsupported(f"the weight must be 4-D, got shape {weight.shape}")
    kernel = ctx.ints_attr("kernel_shape", list(weight.shape[2:]))
    if tuple(kernel) != tuple(weight.shape[2:]):
        raise Unsupported(f"kernel_shape {kernel} does not match the weight's shape {weight.shape}")
    return weight, kernel, ctx.ints_attr("strides", [1, 1]), ctx.ints_attr("dilations", [1, 1])


def _conv_inputs(ctx: NodeContext, channels: int) -> list[str]:
    """``[x, weight]`` and the bias when given: a ``(channels,)`` constant; all of the data's dtype."""
    x = ctx.activation(0)
    inputs = [x, ctx.input(1)]
    if ctx.input(2):
        bias = ctx.const(2, "the bias")
        if bias.shape != (channels,):
            raise Unsupported(f"the bias has shape {bias.shape}, expected ({channels},)")
        inputs.append(ctx.input(2))
    dtype = ctx.imp.dtypes.get(x)
    for k in range(1, len(inputs)):
        value = ctx.imp.consts[inputs[k]][0]
        if dtype is not None and value.dtype.name != dtype:
            raise Unsupported(f"input {inputs[k]!r} is {value.dtype.name} but the data is {dtype}")
    return inputs


@converter("Conv", attrs=("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"))
def _conv(ctx: NodeContext) -> None:
    shape = _spatial_4d(ctx, "convolution")
    weight, kernel, strides, dilations = _conv_weight(ctx)
    pads = _explicit_pads(ctx, shape[2:], kernel, strides, dilations)
    ctx.emit("Conv", _conv_inputs(ctx, weight.shape[0]), dict(kernel_shape=kernel, strides=strides, pads=pads,
                                                              dilations=dilations, group=ctx.int_attr("group", 1)))


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


@converter("Relu", "Sigmoid", "Tanh", "Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil", "Erf",
           "Softplus", "Softsign", "HardSwish", attrs=("consumed_inputs",))
def _unary(ctx: NodeContext) -> None:
    ctx.emit(ctx.op, [ctx.activation(0)])


@converter("HardSigmoid", attrs=("alpha", "beta", "consumed_inputs"))
def _hard_sigmoid(ctx: NodeContext) -> None:
    ctx.emit("HardSigmoid", [ctx.activation(0)], dict(alpha=float(ctx.attr("alpha", 0.2)),
                                                     beta=float(ctx.attr("beta", 0.5))))


@converter("Elu", "Selu", attrs=("alpha", "gamma", "consumed_inputs"))
def _elu(ctx: NodeContext) -> None:
    if ctx.op == "Elu" and "gamma" in ctx.attrs:
        raise Unsupported("attribute gamma is not supported (Elu has none)")
    ctx.emit(ctx.op, [ctx.activation(0)], {k: float(v) for k, v in ctx.attrs.items() if k in ("alpha", "gamma")})


@converter("Gelu", attrs=("approximate",))
def _gelu(ctx: NodeContext) -> None:
    approximate = ctx.attr("approximate", "none") or "none"
    if approximate not in ("none", "tanh"):
        raise Unsupported(f"approximate={approximate!r} is not supported (none, tanh)")
    ctx.emit("Gelu", [ctx.activation(0)], dict(approximate=approximate))


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
    if b in ctx.imp.consts and a not in ctx.imp.consts:  # x - c == x + (-c): an Add, which fuses into a convolution
        negated = ctx.imp.add_param(f"{b}/neg", -ctx.const(1, "the subtrahend"))
        ctx.emit("Add", [a, negated])
        return
    ctx.emit("Sub", [a, b])


@converter("Div", attrs=("broadcast", "axis", "consumed_inputs"))
def _div(ctx: NodeContext) -> None:
    check_legacy_broadcast(ctx)
    a, b = ctx.activation(0), ctx.activation(1)
    if b in ctx.imp.consts and a not in ctx.imp.consts:  # x / c == x * (1 / c): a Mul, cheaper than a division
        divisor = ctx.const(1, "the divisor")
        if divisor.dtype.kind != "f":
            raise Unsupported(f"the divisor {b!r} is {divisor.dtype}; dividing activations by integers is not supported")
        with np.errstate(divide="ignore"):
            reciprocal = np.reciprocal(divisor)
        ctx.emit("Mul", [a, ctx.imp.add_param(f"{b}/reciprocal", reciprocal)])
        return
    ctx.emit("Div", [a, b])


@converter("Pow")
def _pow(ctx: NodeContext) -> None:
    base, exponent = ctx.activation(0), ctx.activation(1)
    if exponent in ctx.imp.consts and base not in ctx.imp.consts:
        value = ctx.const(1, "the exponent")
        dtype = ctx.imp.dtypes[base]
        if value.dtype != dtype:  # ONNX allows an integer exponent; the IR's parameters are floating point
            exponent = ctx.imp.add_param(f"{exponent}/{dtype}", value.astype(dtype))
    ctx.emit("Pow", [base, exponent])


@converter("PRelu")
def _prelu(ctx: NodeContext) -> None:
    ctx.emit("PRelu", [ctx.activation(0), ctx.activation(1)])


@converter("Max", "Min", attrs=("consumed_inputs",))
def _max_min(ctx: NodeContext) -> None:
    inputs = [n for n in ctx.inputs if n]
    if not inputs:
        raise Unsupported("needs at least one input")
    ctx.emit(ctx.op if len(inputs) > 1 else "Identity", inputs)


@converter("Sum", attrs=("consumed_inputs",))
def _sum(ctx: NodeContext) -> None:
    inputs = [n for n in ctx.inputs if n]
    if not inputs:
        raise Unsupported("needs at least one input")
    ctx.emit("Sum" if len(inputs) > 1 else "Identity", inputs)


# -- reductions ----------------------------------------------------------------------------------

REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")


@converter(*REDUCTIONS, attrs=("axes", "keepdims", "noop_with_empty_axes"))
def _reduce(ctx: NodeContext) -> None:
    """Axes from the attribute (before opset 18; ReduceSum before 13) or the constant input 1.

    A mean or maximum over every axis after the channels is a global pool (MNASNet's and
    ShuffleNetV2's ``x.mean([2, 3])``): it runs as one, flattened to (N, C) without keepdims.
    """
    x = ctx.activation(0)
    shape_a, _ = ctx.shapes(0)
    rank = len(shape_a)
    axes = axes_of(ctx, required=False)
    keepdims = ctx.int_attr("keepdims", 1)
    if not axes:
        if ctx.int_attr("noop_with_empty_axes", 0):
            ctx.emit("Identity", [x])
            return
        axes = None
    else:
        if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
            raise Unsupported(f"axes {axes} are out of range or repeated for rank {rank}")
        axes = sorted(a % rank for a in axes)
    pool = {"ReduceMean": "GlobalAveragePool", "ReduceMax": "GlobalMaxPool"}.get(ctx.op)
    if pool and rank >= 3 and axes == list(range(2, rank)):
        if keepdims:
            ctx.emit(pool, [x])
            return
        pooled = ctx.imp.fresh_tensor(f"{ctx.outputs[0]}/pooled")
        ctx.emit(pool, [x], outputs=[pooled], name=ctx.imp.fresh_node(f"{ctx.name}/pool"))
        ctx.emit("Flatten", [pooled], dict(axis=1), outputs=ctx.outputs[:1])
        return
    attrs = dict(keepdims=keepdims)
    if axes is not None:
        attrs["axes"] = axes
    ctx.emit(ctx.op, [x], attrs)


# -- normalisation over the last axes --------------------------------------------------------------


@converter("LayerNormalization", attrs=("axis", "epsilon", "stash_type"))
def _layer_norm(ctx: NodeContext) -> None:
    shape_a, _ = ctx.shapes(0)
    rank = len(shape_a)
    axis = ctx.int_attr("axis", -1)
    if not -rank <= axis < rank:
        raise Unsupported(f"axis {axis} is out of range for rank {rank}")
    inputs = [ctx.activation(0), ctx.activation(1)] + ([ctx.input(2)] if ctx.input(2) else [])
    normalised = tuple(shape_a[axis % rank:])
    for k, name in enumerate(inputs[1:], start=1):
        shape = ctx.imp.shape(name, 0)
        try:
            fits = np.broadcast_shapes(shape, normalised) == normalised
        except ValueError:
            fits = False
        if not fits:
            raise Unsupported(f"input {k} ({name!r}) has shape {shape}, which does not broadcast to the normalised "
                              f"axes {normalised}")
    outputs = list(ctx.outputs)
    while outputs and not ctx.imp.consumers.get(outputs[-1]):  # unused Mean / InvStdDev: not computed
        outputs.pop()
    outputs = ctx.outputs[:1] + [out or ctx.imp.fresh_tensor(f"{ctx.name}/unused_{k}") for k, out in enumerate(outputs[1:], 1)]
    ctx.emit("LayerNormalization", inputs, dict(axis=axis % rank, epsilon=float(ctx.attr("epsilon", 1e-5))),
             outputs=outputs)


# -- transposed convolution ----------------------------------------------------------------------


@converter("ConvTranspose", attrs=("auto_pad", "dilations", "group", "kernel_shape", "output_padding", "output_shape",
                                   "pads", "strides"))
def _conv_transpose(ctx: NodeContext) -> None:
    """``output_shape`` and ``auto_pad`` become explicit ``pads`` (ONNX's rule: the odd unit goes to the end for
    SAME_UPPER, to the beginning otherwise). An ``output_shape`` larger than the full result (by less
    than the stride) becomes ``output_padding``: rows and columns of zeros (plus the bias) at the end,
    as in ONNX Runtime."""
    shape = _spatial_4d(ctx, "transposed convolution")
    weight, kernel, strides, dilations = _conv_weight(ctx)
    group = ctx.int_attr("group", 1)
    if weight.shape[0] != shape[1] or shape[1] % group:
        raise Unsupported(f"the weight's shape {weight.shape} (Cin, Cout/group, kh, kw) does not fit {shape[1]} "
                          f"input channels in {group} groups")
    output_padding = ctx.ints_attr("output_padding", [0, 0])
    auto_pad = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise Unsupported(f"auto_pad={auto_pad!r} is not supported (NOTSET, SAME_UPPER, SAME_LOWER, VALID)")
    wanted = ctx.ints_attr("output_shape")
    if wanted is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        wanted = [d * s for d, s in zip(shape[2:], strides)]
    if wanted is not None:
        wanted = wanted[-2:]
        begins, ends = [], []
        for i, (size, k, s, d, extra, out) in enumerate(zip(shape[2:], kernel, strides, dilations, output_padding,
                                                             wanted)):
            total = s * (size - 1) + extra + (k - 1) * d + 1 - out
            if total < 0:  # rows of zeros (and bias) at the end, as ONNX Runtime adds them: output padding
                if -total >= s:
                    raise Unsupported(f"output_shape {wanted} is inconsistent with the input {tuple(shape[2:])}: "
                                      f"at most stride - 1 more than the full result (ONNX Runtime refuses it too)")
                output_padding[i] -= total
                begin = end = 0
            else:
                small, large = total // 2, total - total // 2
                begin, end = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
            begins.append(begin)
            ends.append(end)
        pads = begins + ends
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    else:
        pads = ctx.ints_attr("pads", [0, 0, 0, 0])
        if len(pads) != 4 or any(p < 0 for p in pads):
            raise Unsupported(f"pads {pads} must be 4 non-negative entries")
    ctx.emit("ConvTranspose", _conv_inputs(ctx, weight.shape[1] * group),
             dict(kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations, group=group,
                  output_padding=output_padding))
