"""Converters for the tensors' shape and layout: reshape, transpose, concatenate, split, slice, gather, pad, resize.

Reshape targets, slice bounds and split sizes are often computed from the input's shape
(``Shape -> Gather -> ...``); they arrive here as constants evaluated in both worlds
(:mod:`convengine.graph.onnx`), so an entry that is the batch size is told from one that is
not. Nothing along the batch axis may be cut, split, gathered or resized: a graph's batch is
free. ``Shape`` and ``Size`` (:func:`~.context.special`) read activations' shapes into constants.
"""

from __future__ import annotations

import math

import numpy as np

from .context import WORLDS, NodeContext, Unsupported, axes_of, batch_axes, converter, onnx_reshape, show_shape, special


@converter("Concat", attrs=("axis",))
def _concat(ctx: NodeContext) -> None:
    if "axis" not in ctx.attrs:
        raise Unsupported("attribute axis is required")
    ctx.emit("Concat", [n for n in ctx.inputs if n], dict(axis=int(ctx.attrs["axis"])))


@converter("Flatten", attrs=("axis",))
def _flatten(ctx: NodeContext) -> None:
    rank = len(ctx.shapes(0)[0])
    axis = ctx.int_attr("axis", 1)
    if not -rank <= axis <= rank:
        raise Unsupported(f"axis {axis} is out of range for rank {rank} (-{rank} to {rank})")
    ctx.emit("Flatten", [ctx.activation(0)], dict(axis=axis + rank if axis < 0 else axis))


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



@converter("Squeeze", attrs=("axes",))
def _squeeze(ctx: NodeContext) -> None:
    shape_a, shape_b = ctx.shapes(0)
    n_axes = batch_axes(shape_a, shape_b)
    axes = axes_of(ctx, required=False)
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
    axes = axes_of(ctx, required=True)
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


# -- split, slice, gather on data ------------------------------------------------------------------


def _axis(ctx: NodeContext, rank: int, default: int = 0) -> int:
    """The ``axis`` attribute, checked and made non-negative; never a batch axis."""
    axis = ctx.int_attr("axis", default)
    if not -rank <= axis < rank:
        raise Unsupported(f"axis {axis} is out of range for rank {rank}")
    shape_a, shape_b = ctx.shapes(0)
    if axis % rank in batch_axes(shape_a, shape_b):
        raise Unsupported(f"{ctx.op} along the batch axis of {show_shape(shape_a, batch_axes(shape_a, shape_b))} "
                          f"is not supported (the batch size is free)")
    return axis % rank


@converter("Split", attrs=("axis", "split", "num_outputs"))
def _split(ctx: NodeContext) -> None:
    """Sizes from the ``split`` attribute (opset < 13) or input (13+), ``num_outputs`` (18+), or equal parts."""
    shape_a, _ = ctx.shapes(0)
    axis = _axis(ctx, len(shape_a))
    size, count = shape_a[axis], len(ctx.outputs)
    if "split" in ctx.attrs:
        sizes = ctx.ints_attr("split")
    elif ctx.input(1):
        sizes = [int(v) for v in ctx.const(1, "the split sizes").reshape(-1)]
    elif "num_outputs" in ctx.attrs:
        parts = ctx.int_attr("num_outputs", count)
        if parts != count:
            raise Unsupported(f"num_outputs={parts} but the node has {count} outputs")
        chunk = -(-size // parts)  # opset 18: equal chunks of ceil(size / parts), the last one smaller
        sizes = [chunk] * (parts - 1) + [size - chunk * (parts - 1)]
    else:
        if size % count:
            raise Unsupported(f"axis {axis} of size {size} does not split into {count} equal parts")
        sizes = [size // count] * count
    if len(sizes) != count or sum(sizes) != size or any(s < 0 for s in sizes):
        raise Unsupported(f"split sizes {sizes} do not divide axis {axis} of size {size} into {count} outputs")
    outputs = [out or ctx.imp.fresh_tensor(f"{ctx.name}/unused_{k}") for k, out in enumerate(ctx.outputs)]
    ctx.emit("Split", [ctx.activation(0)], dict(axis=axis, split=sizes), outputs=outputs)


def _onnx_slice(start: int, end: int, step: int, size: int) -> tuple[int, int]:
    """ONNX Slice's clamping of (start, end) on an axis of ``size``, as Python slice bounds.

    "Before the first element" (an end of -1 after clamping, for a negative step) is
    written ``-size - 1``, which Python reads the same way (and ONNX too, once it adds ``size``).
    """
    start, end = (v + size if v < 0 else v for v in (start, end))
    if step > 0:
        return min(max(start, 0), size), min(max(end, 0), size)
    start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
    return start, (end if end >= 0 else -size - 1)


@converter("Slice", attrs=("starts", "ends", "axes"))
def _slice(ctx: NodeContext) -> None:
    """Bounds from attributes (opset < 10) or constant inputs; the batch axis may only be taken whole."""
    shapes = ctx.shapes(0)
    rank = len(shapes[0])
    n_axes = batch_axes(*shapes)
    if "starts" in ctx.attrs:
        bounds = [(ctx.ints_attr("starts"), ctx.ints_attr("ends"))] * 2
        axes = ctx.ints_attr("axes")
        steps = None
    else:
        starts, ends = ctx.worlds(1, "the starts"), ctx.worlds(2, "the ends")
        bounds = [([int(v) for v in starts[w].reshape(-1)], [int(v) for v in ends[w].reshape(-1)]) for w in WORLDS]
        axes = ctx.const(3, "the axes")
        axes = None if axes is None else [int(v) for v in axes.reshape(-1)]
        steps = ctx.const(4, "the steps")
        steps = None if steps is None else [int(v) for v in steps.reshape(-1)]
    count = len(bounds[0][0])
    axes = list(range(count)) if axes is None else axes
    steps = [1] * count if steps is None else steps
    if any(len(v) != count for v in (bounds[0][1], bounds[1][0], bounds[1][1], axes, steps)):
        raise Unsupported(f"starts, ends, axes and steps differ in length ({count} starts)")
    if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != count:
        raise Unsupported(f"axes {axes} are out of range or repeated for rank {rank}")
    if 0 in steps:
        raise Unsupported("a step of 0 is not allowed")
    kept = dict(starts=[], ends=[], axes=[], steps=[])
    for j, (axis, step) in enumerate(zip(axes, steps)):
        axis %= rank
        per_world = [_onnx_slice(bounds[w][0][j], bounds[w][1][j], step, shapes[w][axis]) for w in WORLDS]
        if axis in n_axes:
            if any(len(range(*slice(*b, step).indices(shapes[w][axis]))) != shapes[w][axis] or step != 1
                   for w, b in zip(WORLDS, per_world)):
                raise Unsupported(f"slicing the batch axis of {show_shape(shapes[0], n_axes)} is not supported "
                                  f"(the batch size is free)")
            continue  # the whole batch axis: nothing to slice
        if per_world[0] != per_world[1]:
            raise Unsupported(f"the bounds along axis {axis} depend on the batch size")
        (start, end), size = per_world[0], shapes[0][axis]
        if (start, end, step) == (0, size, 1):
            continue  # the whole axis
        for key, value in zip(("starts", "ends", "axes", "steps"), (start, end, axis, step)):
            kept[key].append(value)
    if not kept["axes"]:
        ctx.emit("Identity", [ctx.activation(0)])
        return
    if all(s == 1 for s in kept["steps"]):
        del kept["steps"]
    ctx.emit("Slice", [ctx.activation(0)], kept)


@converter("Gather", attrs=("axis",))
def _gather(ctx: NodeContext) -> None:
    """Constant indices along a non-batch axis (``x[:, 0]``, a fixed channel selection)."""
    shape_a, _ = ctx.shapes(0)
    axis = _axis(ctx, len(shape_a))
    indices = ctx.const(1, "the indices")
    if indices is None or indices.dtype.kind not in "iu":
        raise Unsupported("the indices must be an integer constant")
    size = shape_a[axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise Unsupported(f"indices {indices.tolist()} are out of range for axis {axis} of size {size}")
    indices = np.where(indices < 0, indices + size, indices).astype(np.int64)
    ctx.emit("Gather", [ctx.activation(0)], dict(axis=axis, indices=indices.tolist()))


@converter("Cast", attrs=("to", "saturate", "round_mode"))
def _cast(ctx: NodeContext) -> None:
    """Activations stay in their floating-point type: a Cast to it is an Identity; to another, unsupported."""
    dtype = np.dtype(ctx.imp.onnx.helper.tensor_dtype_to_np_dtype(int(ctx.attrs["to"])))
    data = ctx.imp.dtypes.get(ctx.activation(0))
    if dtype.name != data:
        raise Unsupported(f"casting activations from {data} to {dtype.name} is not supported")
    ctx.emit("Identity", [ctx.activation(0)])


# -- resize --------------------------------------------------------------------------------------

_RESIZE_MODES = ("asymmetric", "half_pixel", "pytorch_half_pixel", "align_corners", "tf_half_pixel_for_nn",
                 "half_pixel_symmetric")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@converter("Resize", attrs=("mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
                            "exclude_outside", "extrapolation_value", "antialias", "axes", "keep_aspect_ratio_policy"))
def _resize(ctx: NodeContext) -> None:
    """Nearest and (bi)linear resizing of the axes after the channels, from constant scales or sizes.

    Opset 10 takes (X, scales) and maps coordinates asymmetrically; opset 11 on takes
    (X, roi, scales, sizes) and the ``coordinate_transformation_mode`` attribute; opset 18
    adds ``axes`` (the scales or sizes given are those axes'), ``antialias`` and
    ``keep_aspect_ratio_policy``.
    """
    shapes = ctx.shapes(0)
    rank = len(shapes[0])
    mode = ctx.attr("mode", "nearest") or "nearest"
    if mode not in ("nearest", "linear"):
        raise Unsupported(f"mode={mode!r} is not supported (nearest, linear)")
    legacy = ctx.opset < 11
    transform = "asymmetric" if legacy else (ctx.attr("coordinate_transformation_mode", "half_pixel") or "half_pixel")
    if transform not in _RESIZE_MODES:
        raise Unsupported(f"coordinate_transformation_mode={transform!r} is not supported ({', '.join(_RESIZE_MODES)})")
    nearest = ctx.attr("nearest_mode", "round_prefer_floor") or "round_prefer_floor"
    if nearest not in _NEAREST_MODES:
        raise Unsupported(f"nearest_mode={nearest!r} is not supported ({', '.join(_NEAREST_MODES)})")
    if ctx.int_attr("antialias", 0) and mode != "nearest":
        raise Unsupported("antialias=1 is not supported")
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch") or "stretch"
    if policy != "stretch":
        raise Unsupported(f"keep_aspect_ratio_policy={policy!r} is not supported (stretch)")
    axes = ctx.ints_attr("axes", list(range(rank)))
    if any(not -rank <= a < rank for a in axes) or len({a % rank for a in axes}) != len(axes):
        raise Unsupported(f"axes {axes} are out of range or repeated for rank {rank}")
    axes = [a % rank for a in axes]
    scales = ctx.const(1 if legacy else 2, "the scales")
    sizes = None if legacy else (ctx.worlds(3, "the sizes") if ctx.input(3) else None)
    if scales is not None and scales.size == 0:
        scales = None
    if (scales is None) == (sizes is None):
        raise Unsupported("exactly one of scales and sizes must be given")
    out = [list(s) for s in shapes]
    full_scales = [1.0] * rank
    if scales is not None:
        values = [float(v) for v in scales.reshape(-1)]
        if len(values) != len(axes) or any(v <= 0 for v in values):
            raise Unsupported(f"scales {values} must be {len(axes)} positive numbers")
        for a, v in zip(axes, values):
            full_scales[a] = v
            for w in WORLDS:
                out[w][a] = int(math.floor(shapes[w][a] * v))
    else:
        for w in WORLDS:
            values = [int(v) for v in sizes[w].reshape(-1)]
            if len(values) != len(axes) or any(v <= 0 for v in values):
                raise Unsupported(f"sizes {values} must be {len(axes)} positive sizes")
            for a, v in zip(axes, values):
                out[w][a] = v
    n_axes = batch_axes(*shapes)
    for a in n_axes:  # a literal export batch size (sizes [1, 3, 64, 64] from a batch-1 export) keeps the batch
        if scales is None and out[0][a] == out[1][a] == shapes[0][a]:
            for w in WORLDS:
                out[w][a] = shapes[w][a]
    changed = [a for a in range(rank) if any(out[w][a] != shapes[w][a] for w in WORLDS) or full_scales[a] != 1.0]
    if any(a < 2 for a in changed) or rank < 3:
        raise Unsupported(f"only the axes after the channels can be resized (input {show_shape(shapes[0], [])}, "
                          f"output {tuple(out[0])})")
    if out[0][2:] != out[1][2:]:
        raise Unsupported("the output size depends on the batch size")
    if legacy and mode == "nearest":  # ONNX Runtime's opset-10 rounding: down when enlarging, up when shrinking
        shrinking = {full_scales[a] < 1 for a in changed}
        if len(shrinking) > 1:
            raise Unsupported(f"opset-10 nearest resizing that enlarges some axes and shrinks others "
                              f"(scales {full_scales}) is not supported")
        nearest = "ceil" if shrinking == {True} else "floor"
    attrs = dict(mode=mode, coordinate_transformation_mode=transform, nearest_mode=nearest, sizes=out[0][2:])
    if scales is not None:
        attrs["scales"] = full_scales[2:]
    ctx.emit("Resize", [ctx.activation(0)], attrs)
