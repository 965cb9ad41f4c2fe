"""The operators the torchvision CNN classifiers and the ONNX light zoo need (issue 14), checked against oracles.

* Each operator through a tiny model built with ``onnx.helper``, across the opsets where its
  inputs or attributes changed (Split's sizes, the reductions' axes at opset 18, Resize at 10,
  11+ and 18): the imported graph matches ONNX Runtime (1e-5 normwise, float32) at batch 1 and 3.
* The ``onnx`` package's own node tests for these operators (inputs and outputs recorded by its
  numpy reference): every case matches, or is refused with one of the importer's documented
  limits (the batch axis is free, cubic resizing...), never anything else.
* Small torch versions of the torchvision families that need them (ShuffleNetV2, MobileNetV3,
  EfficientNet, MNASNet, RegNetY, ConvNeXt), exported with ``torch.onnx.export`` and compared
  with ONNX Runtime on the same file to 1e-4.
* The new operators export back to ONNX (``to_onnx``) and run in ONNX Runtime.
* Bad input: one clear load-time error naming the node and the operator.
"""

from __future__ import annotations

import functools
import importlib
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, numpy_helper  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from test_onnx_import import (  # noqa: E402  (after importorskip: it needs onnx too)
    OP_CASES,
    check_with_ort,
    const_node,
    make_model,
    node,
    ort_session,
    rand,
    randomize_bn,
    rel_error,
    single,
)

from convengine.graph import GraphError  # noqa: E402  (after importorskip: without onnx the module is skipped, not an error)
from convengine.graph.onnx import SUPPORTED_OPS, load_onnx  # noqa: E402  (after importorskip, as above)
from convengine.graph.onnx_export import to_onnx  # noqa: E402  (after importorskip, as above)

pytestmark = pytest.mark.usefixtures("no_forced_backend")

INT_MAX = np.iinfo(np.int64).max
X = {"x": (4, 6, 7)}


def i64(*values):
    return np.array(values, np.int64)


def positive(op, attrs=None, inits=None, extra_inputs=(), inputs=X, opset=17, **options):
    """``op`` applied to ``|x| + 0.5`` (Sqrt, Log, fractional powers need a positive input)."""
    nodes = [node("Abs", ["x"], ["a"]), node("Add", ["a", "half"], ["p"]),
             node(op, ["p", *extra_inputs], ["y"], **(attrs or {}))]
    return make_model(nodes, inputs, ["y"], {"half": np.float32(0.5), **(inits or {})}, opset=opset), inputs, options


def chain(nodes, inits=None, inputs=X, outputs=("y",), opset=17, batch="N", **options):
    return make_model(nodes, inputs, list(outputs), inits, opset=opset, batch=batch), inputs, options


REDUCTIONS = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]


def reduction(op, opset, *, axes=None, keepdims=1, noop=None):
    """A reduction with its axes as the attribute (before opset 18; ReduceSum before 13) or the input."""
    attrs = dict(keepdims=keepdims)
    extra, inits = [], {}
    if noop is not None:
        attrs["noop_with_empty_axes"] = noop
    if axes is not None:
        if opset >= 18 or (op == "ReduceSum" and opset >= 13):
            extra, inits = ["axes"], {"axes": i64(*axes)}
        else:
            attrs["axes"] = list(axes)
    build = positive if op in ("ReduceLogSum", "ReduceProd") else single
    return build(op, attrs, inits, extra, opset=opset)


def resize(mode, transform=None, nearest=None, *, scales=None, sizes=None, opset=13, inputs=X, axes=None, batch="N",
           **options):
    attrs = dict(mode=mode)
    if transform:
        attrs["coordinate_transformation_mode"] = transform
    if nearest:
        attrs["nearest_mode"] = nearest
    if axes is not None:
        attrs["axes"] = axes
    if opset < 11:
        names, inits = ["x", "scales"], {"scales": np.array(scales, np.float32)}
    elif scales is not None:
        names, inits = ["x", "", "scales"], {"scales": np.array(scales, np.float32)}
    else:
        names, inits = ["x", "", "", "sizes"], {"sizes": i64(*sizes)}
    return chain([node("Resize", names, ["y"], **attrs)], inits, inputs, opset=opset, batch=batch, **options)


def resize_sizes_from_shape():
    """What exporters write for ``F.interpolate(x, size=(9, 11))``: sizes = Concat(Shape(x)[:2], [9, 11])."""
    return chain([node("Shape", ["x"], ["s"]), node("Slice", ["s", "b0", "b2"], ["nc"]),
                  node("Concat", ["nc", "hw"], ["sizes"], axis=0),
                  node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear")],
                 {"b0": i64(0), "b2": i64(2), "hw": i64(9, 11)}, opset=13)


def half_channels_slice():
    """ShuffleNetV2's ``x.chunk(2, dim=1)`` as the TorchScript exporter may write it: bounds from Shape."""
    return chain([node("Shape", ["x"], ["s"]), const_node("one", np.int64(1)), node("Gather", ["s", "one"], ["c"]),
                  const_node("two", np.int64(2)), node("Div", ["c", "two"], ["half"]),
                  node("Unsqueeze", ["half", "ax0"], ["h1"]), node("Slice", ["x", "zero", "h1", "ax1"], ["y"]),
                  node("Slice", ["x", "h1", "big", "ax1"], ["z"]), node("Add", ["y", "z"], ["out"])],
                 {"ax0": i64(0), "zero": i64(0), "ax1": i64(1), "big": i64(INT_MAX)}, outputs=("out",), opset=13)


def conv_transpose(inputs=X, opset=17, **attrs):
    w = rand(4, 3, 3, 3, seed=7, scale=0.3) if attrs.get("group", 1) == 1 else rand(4, 2, 3, 3, seed=7, scale=0.3)
    cout = w.shape[1] * attrs.get("group", 1)
    bias = attrs.pop("bias", True)
    names, inits = ["x", "w"], {"w": w}
    if bias:
        names, inits = ["x", "w", "b"], {"w": w, "b": rand(cout, seed=8)}
    return chain([node("ConvTranspose", names, ["y"], **attrs)], inits, inputs, opset=opset)


LN = {"s": rand(7, seed=3) + 1, "b": rand(7, seed=4)}

NEW_CASES = {
    # unary elementwise
    **{f"{op.lower()}": (lambda op=op: single(op)) for op in ("Neg", "Abs", "Exp", "Floor", "Ceil", "Erf", "Softplus",
                                                             "Softsign", "Selu")},
    **{f"{op.lower()}_positive": (lambda op=op: positive(op)) for op in ("Sqrt", "Log", "Reciprocal")},
    "hardswish_opset14": lambda: single("HardSwish", opset=14),
    "hardswish_opset18": lambda: single("HardSwish", opset=18),
    "hardsigmoid_defaults": lambda: single("HardSigmoid", opset=13),
    "hardsigmoid_torch": lambda: single("HardSigmoid", dict(alpha=1 / 6, beta=0.5)),
    "elu_alpha": lambda: single("Elu", dict(alpha=0.7)),
    "selu_attrs": lambda: single("Selu", dict(alpha=1.5, gamma=1.1)),
    "gelu_opset20": lambda: single("Gelu", opset=20),
    "gelu_tanh_opset20": lambda: single("Gelu", dict(approximate="tanh"), opset=20),
    "prelu_per_channel": lambda: single("PRelu", {}, {"slope": rand(4, 1, 1, seed=5)}, ["slope"]),
    "cast_to_float_is_identity": lambda: single("Cast", dict(to=TensorProto.FLOAT)),
    # binary elementwise on data
    "div_two_inputs": lambda: chain([node("Abs", ["z"], ["a"]), node("Add", ["a", "one"], ["d"]),
                                     node("Div", ["x", "d"], ["y"])], {"one": np.float32(1)},
                                    {"x": (4, 6, 7), "z": (4, 6, 7)}),
    "div_const_by_data": lambda: chain([node("Abs", ["x"], ["a"]), node("Add", ["a", "one"], ["d"]),
                                        node("Div", ["c", "d"], ["y"])], {"one": np.float32(1), "c": rand(7, seed=2)}),
    "sub_const_minus_data": lambda: chain([node("Sub", ["c", "x"], ["y"])], {"c": rand(4, 1, 1, seed=2)}),
    "pow_square": lambda: single("Pow", {}, {"e": np.float32(2)}, ["e"]),
    "pow_int64_cube": lambda: single("Pow", {}, {"e": np.int64(3)}, ["e"]),
    "pow_fractional": lambda: positive("Pow", {}, {"e": np.float32(1.7)}, ["e"]),
    "pow_half": lambda: positive("Pow", {}, {"e": np.float32(0.5)}, ["e"]),
    "pow_data_exponent": lambda: chain([node("Abs", ["x"], ["a"]), node("Add", ["a", "one"], ["p"]),
                                        node("Pow", ["p", "z"], ["y"])], {"one": np.float32(1)},
                                       {"x": (4, 6, 7), "z": (4, 6, 7)}),
    "max_three": lambda: chain([node("Max", ["x", "z", "c"], ["y"])], {"c": rand(7, seed=3)},
                               {"x": (4, 6, 7), "z": (4, 6, 7)}),
    "min_broadcast": lambda: single("Min", {}, {"c": rand(4, 1, 1, seed=3)}, ["c"]),
    "max_single": lambda: chain([node("Relu", ["x"], ["r"]), node("Max", ["r"], ["y"])]),
    # reductions: axes as attribute (opset 13) and as input (opset 18), keepdims, every axis, no-op
    **{f"{op}_opset13": (lambda op=op: reduction(op, 13, axes=[1, -1], keepdims=0)) for op in REDUCTIONS},
    **{f"{op}_opset18": (lambda op=op: reduction(op, 18, axes=[2], keepdims=1)) for op in REDUCTIONS},
    "ReduceMean_all_axes": lambda: reduction("ReduceMean", 18, keepdims=0),
    "ReduceSum_all_axes_keepdims": lambda: reduction("ReduceSum", 13, keepdims=1),
    "ReduceMax_noop_empty_axes": lambda: reduction("ReduceMax", 18, noop=1),
    "ReduceMean_spatial_keepdims0": lambda: reduction("ReduceMean", 13, axes=[2, 3], keepdims=0),
    "ReduceMean_spatial_keepdims1_opset18": lambda: reduction("ReduceMean", 18, axes=[-2, -1], keepdims=1),
    "ReduceMax_spatial": lambda: reduction("ReduceMax", 13, axes=[2, 3], keepdims=0),
    # layer normalisation
    "layernorm_last_axis": lambda: chain([node("LayerNormalization", ["x", "s", "b"], ["y"])], LN),
    "layernorm_axis1_no_bias_eps": lambda: chain([node("LayerNormalization", ["x", "s"], ["y"], axis=1, epsilon=1e-3)],
                                                 {"s": rand(4, 6, 7, seed=3)}),
    "layernorm_channels_last": lambda: chain([node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
                                              node("LayerNormalization", ["t", "s", "b"], ["n"], epsilon=1e-6),
                                              node("Transpose", ["n"], ["y"], perm=[0, 3, 1, 2])],
                                             {"s": rand(4, seed=3) + 1, "b": rand(4, seed=4)}),
    "layernorm_mean_invstd_outputs": lambda: chain(
        [node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "invstd"], axis=-2)],
        {"s": rand(6, 7, seed=3), "b": rand(6, 7, seed=4)}, outputs=("y", "mean", "invstd")),
    # split
    "split_opset11_attr": lambda: chain([node("Split", ["x"], ["y", "z"], axis=1, split=[1, 3])], opset=11,
                                        outputs=("y", "z")),
    "split_opset13_input": lambda: chain([node("Split", ["x", "s"], ["y", "z", "w"], axis=-1)],
                                         {"s": i64(2, 4, 1)}, outputs=("y", "z", "w"), opset=13),
    "split_opset13_equal": lambda: chain([node("Split", ["x"], ["y", "z"], axis=1)], outputs=("y", "z"), opset=13),
    "split_opset18_num_outputs_uneven": lambda: chain([node("Split", ["x"], ["y", "z"], axis=3, num_outputs=2)],
                                                      outputs=("y", "z"), opset=18),
    "split_one_output_unused": lambda: chain([node("Split", ["x"], ["y", "unused"], axis=2)], opset=13),
    # slice on data
    "slice_opset9_attrs": lambda: chain([node("Slice", ["x"], ["y"], starts=[1, -3], ends=[3, 100], axes=[1, 3])],
                                        opset=9),
    "slice_negative_steps": lambda: chain([node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])],
                                          {"st": i64(-1, 5), "en": i64(-INT_MAX, 0), "ax": i64(3, 2), "sp": i64(-2, -1)},
                                          opset=13),
    "slice_whole_batch_axis": lambda: chain([node("Slice", ["x", "st", "en", "ax"], ["y"])],
                                            {"st": i64(0, 1), "en": i64(INT_MAX, 3), "ax": i64(0, 1)}, opset=13),
    "slice_default_axes_steps": lambda: chain([node("Slice", ["x", "st", "en"], ["y"])],
                                              {"st": i64(0, 1, 2), "en": i64(INT_MAX, 3, 5)}, opset=13),
    "slice_half_channels_from_shape": half_channels_slice,
    # gather on data
    "gather_scalar_index_drops_axis": lambda: single("Gather", dict(axis=1), {"i": np.int64(2)}, ["i"]),
    "gather_2d_negative_indices": lambda: single("Gather", dict(axis=3), {"i": i64(0, -1, 3, 3).reshape(2, 2)}, ["i"]),
    # resize
    "resize_nearest_up_default": lambda: resize("nearest", scales=[1, 1, 2, 1.5]),
    "resize_nearest_down_half_pixel": lambda: resize("nearest", "half_pixel", scales=[1, 1, 0.5, 0.7]),
    "resize_nearest_asymmetric_floor": lambda: resize("nearest", "asymmetric", "floor", scales=[1, 1, 1.7, 0.6]),
    "resize_nearest_align_corners_prefer_ceil": lambda: resize("nearest", "align_corners", "round_prefer_ceil",
                                                                scales=[1, 1, 2.5, 0.5]),
    "resize_nearest_tf_half_pixel_ceil": lambda: resize("nearest", "tf_half_pixel_for_nn", "ceil",
                                                         scales=[1, 1, 1.5, 2]),
    "resize_linear_half_pixel_up": lambda: resize("linear", scales=[1, 1, 2, 1.5]),
    "resize_linear_half_pixel_down": lambda: resize("linear", scales=[1, 1, 0.5, 0.8]),
    "resize_linear_align_corners": lambda: resize("linear", "align_corners", scales=[1, 1, 1.5, 2.2]),
    "resize_linear_asymmetric": lambda: resize("linear", "asymmetric", scales=[1, 1, 3, 0.6]),
    "resize_linear_pytorch_half_pixel": lambda: resize("linear", "pytorch_half_pixel", scales=[1, 1, 0.2, 1.5]),
    "resize_linear_half_pixel_symmetric_opset19": lambda: resize("linear", "half_pixel_symmetric", scales=[1, 1, 1.5, 0.7],
                                                                  opset=19),
    "resize_opset10_nearest_up": lambda: resize("nearest", scales=[1, 1, 2, 2.5], opset=10),
    "resize_opset10_nearest_down": lambda: resize("nearest", scales=[1, 1, 0.5, 0.7], opset=10),
    "resize_opset10_linear": lambda: resize("linear", scales=[1, 1, 1.5, 0.6], opset=10),
    "resize_sizes_from_shape": resize_sizes_from_shape,
    "resize_sizes_literal_batch_static_file": lambda: resize("nearest", sizes=[1, 4, 12, 5], batch=1, per_sample=True),
    "resize_opset18_axes_sizes": lambda: resize("linear", sizes=[12, 5], axes=[2, 3], opset=18),
    "resize_opset18_axes_scales": lambda: resize("nearest", scales=[2.0], axes=[-1], opset=18),
    # transposed convolution
    "convtranspose_stride2_pads_output_padding": lambda: conv_transpose(strides=[2, 2], pads=[1, 0, 0, 1],
                                                                        output_padding=[1, 0]),
    "convtranspose_groups_dilations_no_bias": lambda: conv_transpose(group=2, dilations=[2, 1], strides=[1, 2],
                                                                     bias=False),
    "convtranspose_output_shape": lambda: conv_transpose(strides=[2, 2], output_shape=[12, 14]),
    "convtranspose_output_shape_larger": lambda: conv_transpose(strides=[2, 3], output_shape=[14, 23]),
    "convtranspose_same_upper": lambda: conv_transpose(strides=[2, 2], auto_pad="SAME_UPPER"),
    "convtranspose_same_lower": lambda: conv_transpose(strides=[2, 3], auto_pad="SAME_LOWER"),
    "convtranspose_valid": lambda: conv_transpose(strides=[3, 2], auto_pad="VALID"),
}


@pytest.mark.parametrize("case", sorted(NEW_CASES))
def test_operator_matches_onnxruntime(case):
    model, inputs, options = NEW_CASES[case]()
    check_with_ort(model, inputs, **options)


def test_every_supported_op_has_a_case():
    """Each op the importer claims appears in some operator case (here or in test_onnx_import)."""
    used = set()
    for build in [*OP_CASES.values(), *NEW_CASES.values()]:
        used.update(n.op_type for n in build()[0].graph.node)
    assert set(SUPPORTED_OPS) - used == set()


@pytest.mark.parametrize("case, pool", [("ReduceMean_spatial_keepdims0", "GlobalAveragePool"),
                                        ("ReduceMean_spatial_keepdims1_opset18", "GlobalAveragePool"),
                                        ("ReduceMax_spatial", "GlobalMaxPool")])
def test_spatial_mean_and_max_run_as_global_pools(case, pool):
    graph = load_onnx(NEW_CASES[case]()[0])
    assert [n.op for n in graph.nodes][0] == pool


def test_old_import_path_still_works():
    with pytest.warns(DeprecationWarning, match="convengine.graph.onnx"):
        old = importlib.import_module("convengine.graph.onnx_import")
    assert old.load_onnx is load_onnx


# -- the onnx package's node tests -------------------------------------------------------------

#: The modules of ``onnx.backend.test.case.node`` that hold the node tests of the ops below.
NODE_TEST_MODULES = ["abs", "ceil", "convtranspose", "div", "elu", "erf", "exp", "flatten", "floor", "gather", "gelu",
                     "hardsigmoid", "hardswish", "layernormalization", "log", "max", "min", "neg", "pow", "prelu",
                     "reciprocal", "reduce_log_sum", "reduce_log_sum_exp", "reducel1", "reducel2", "reducemax",
                     "reducemean", "reducemin", "reduceprod", "reducesum", "reducesumsquare", "reshape", "resize", "selu",
                     "slice", "softplus", "softsign", "split", "sqrt", "sub", "transpose"]
NODE_TEST_OPS = ["Abs", "Ceil", "ConvTranspose", "Div", "Elu", "Erf", "Exp", "Flatten", "Floor", "Gather", "Gelu",
                 "HardSigmoid", "HardSwish", "LayerNormalization", "Log", "Max", "Min", "Neg", "Pow", "PRelu", "Reciprocal",
                 "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
                 "ReduceProd", "ReduceSum", "ReduceSumSquare", "Reshape", "Resize", "Selu", "Slice", "Softplus",
                 "Softsign", "Split", "Sqrt", "Sub", "Transpose"]

#: What the importer refuses by design, as its messages say it (each refused case must match one).
DOCUMENTED_LIMITS = [
    "the batch size is free",                    # splitting, slicing, gathering along the first axis
    "for every batch size",                      # a reshape that mixes the first axis into others
    "only float32 (FLOAT) and float64 (DOUBLE)",  # integer, bool, float16 inputs
    "must be a known size",                      # empty (0-sized) inputs of the *_empty_set cases
    "mode='cubic' is not supported",
    "'tf_crop_and_resize' is not supported",
    "antialias=1 is not supported",
    "keep_aspect_ratio_policy=",
    "only 2-D transposed convolution",           # 1-D and 3-D ConvTranspose
    "allowzero=1 with a zero",
]

#: Cases whose recorded output ONNX Runtime (the oracle here) does not reproduce; compared with it instead.
#: align_corners with scales: the reference maps with the unrounded output length (in * scale), ORT with the
#: output size it produces.
ORT_DISAGREES = {"test_resize_downsample_scales_linear_align_corners"}

#: Inputs (by position) that the importer needs as constants: the harness makes them initializers.
CONSTANT_INPUTS = {"ConvTranspose": {1, 2}, "Resize": {1, 2, 3}, "Split": {1}, "Slice": {1, 2, 3, 4}, "Gather": {1},
                   "Reshape": {1}, "LayerNormalization": {1, 2}, "PRelu": {1}}


@functools.lru_cache(maxsize=None)
def node_test_cases() -> dict[str, list]:
    """``{op: [TestCase]}``: single-node cases of ``NODE_TEST_OPS`` whose data are plain arrays."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case import node as cases

        for name in NODE_TEST_MODULES:  # importing a module records its cases (quicker than generating every op's)
            try:
                importlib.import_module(f"{cases.__name__}.{name}")
            except ImportError:  # another onnx version may name its modules differently
                pass
        found = getattr(cases, "_NodeTestCases", None) or cases.collect_testcases()
    by_op: dict[str, list] = {}
    for case in found:
        ops = [n.op_type for n in case.model.graph.node if n.op_type != "Constant"]
        data = [v for inputs, outputs in case.data_sets for v in [*inputs, *outputs]]
        if len(ops) == 1 and ops[0] in NODE_TEST_OPS and all(isinstance(v, np.ndarray) for v in data):
            by_op.setdefault(ops[0], []).append(case)
    return by_op


def _as_importable(case, inputs):
    """The case's model with its first input fed as data and the others initializers, except data of the first
    input's dtype and leading (batch) size; ``(model, feeds, aligned)``, ``aligned`` when an initializer's
    leading axis has the batch's size (which a free batch cannot broadcast against)."""
    model = case.model
    op = [n.op_type for n in model.graph.node if n.op_type != "Constant"][0]
    initialized = {t.name for t in model.graph.initializer}
    fed = [vi for vi in model.graph.input if vi.name not in initialized]
    model2 = onnx.ModelProto()
    model2.CopyFrom(model)
    del model2.graph.input[:]
    first = np.asarray(inputs[0])
    feeds, aligned = {}, False
    positions = {name: k for k, name in enumerate(model.graph.node[-1].input)}
    for k, (vi, value) in enumerate(zip(fed, inputs)):
        value = np.asarray(value)
        leading = bool(value.ndim and first.ndim and value.shape[0] == first.shape[0])
        constant = positions.get(vi.name) in CONSTANT_INPUTS.get(op, ())
        if k == 0 or (value.dtype == first.dtype and leading and not constant):
            model2.graph.input.append(vi)
            feeds[vi.name] = value
        else:
            model2.graph.initializer.append(numpy_helper.from_array(value, vi.name))
            aligned |= leading and value.ndim == first.ndim and value.shape[0] > 1
    return model2, feeds, aligned


@pytest.mark.parametrize("op", NODE_TEST_OPS)
def test_onnx_node_tests(op):
    cases = node_test_cases().get(op, [])
    assert cases, f"no node test of {op} found in the installed onnx"
    matched, refused = [], []
    for case in cases:
        inputs, outputs = case.data_sets[0]
        model, feeds, aligned = _as_importable(case, inputs)
        try:
            graph = load_onnx(model)
        except GraphError as exc:
            reason = [line for line in str(exc).splitlines() if "node #" in line or "input" in line][:1] or [str(exc)]
            limits = DOCUMENTED_LIMITS + (["do not broadcast"] if aligned else [])
            assert any(limit in str(exc) for limit in limits), f"{case.name}: refused: {reason[0]}"
            refused.append(case.name)
            continue
        got = graph.run(feeds)
        got = [got[o.name] for o in case.model.graph.output] if isinstance(got, dict) else [got]
        if case.name in ORT_DISAGREES:
            session = ort_session(case.model)
            want = session.run(None, {vi.name: np.asarray(v) for vi, v in zip(case.model.graph.input, inputs)})
            assert not all(np.allclose(w, o, rtol=1e-3, atol=1e-5) for w, o in zip(want, outputs)), (
                f"{case.name}: ONNX Runtime now agrees with the recorded output; drop it from ORT_DISAGREES")
        else:
            want = outputs
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=case.rtol, atol=max(case.atol, 1e-6), err_msg=case.name)
        matched.append(case.name)
    assert matched, f"every node test of {op} was refused: {refused}"


# -- small torchvision-style networks, exported from torch --------------------------------------

def _torch():
    return pytest.importorskip("torch")


def _blocks():
    """``{name: (module factory, input shape CHW)}``: plain torch modules shaped like torchvision's blocks."""
    t = _torch()
    nn, F = t.nn, t.nn.functional

    def conv_bn_act(cin, cout, k, s=1, groups=1, act=nn.ReLU):
        layers = [nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, act()) if act else nn.Sequential(*layers)

    class SqueezeExcite(nn.Module):  # torchvision.ops.SqueezeExcitation
        def __init__(self, c, squeeze, act=nn.ReLU, gate=nn.Sigmoid):
            super().__init__()
            self.fc1, self.fc2, self.act, self.gate = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1), act(), gate()

        def forward(self, x):
            return x * self.gate(self.fc2(self.act(self.fc1(F.adaptive_avg_pool2d(x, 1)))))

    class ShuffleUnit(nn.Module):  # torchvision's ShuffleNetV2 InvertedResidual
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.stride, half = stride, cout // 2
            if stride > 1:
                self.branch1 = nn.Sequential(conv_bn_act(cin, cin, 3, stride, cin, None), conv_bn_act(cin, half, 1))
            self.branch2 = nn.Sequential(conv_bn_act(cin if stride > 1 else half, half, 1),
                                         conv_bn_act(half, half, 3, stride, half, None), conv_bn_act(half, half, 1))

        def forward(self, x):
            if self.stride == 1:
                x1, x2 = x.chunk(2, dim=1)
                out = t.cat((x1, self.branch2(x2)), dim=1)
            else:
                out = t.cat((self.branch1(x), self.branch2(x)), dim=1)
            b, c, h, w = out.size()
            return out.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)

    class ShuffleNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(conv_bn_act(3, 8, 3, 2), nn.MaxPool2d(3, 2, 1))
            self.units = nn.Sequential(ShuffleUnit(8, 16, 2), ShuffleUnit(16, 16, 1), ShuffleUnit(16, 32, 2))
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(self.units(self.stem(x)).mean([2, 3]))

    class MobileNetV3(nn.Module):  # Hardswish stem, SE with Hardsigmoid, residual inverted bottleneck, Hardswish head
        def __init__(self):
            super().__init__()
            self.stem = conv_bn_act(3, 8, 3, 2, act=nn.Hardswish)
            self.block = nn.Sequential(conv_bn_act(8, 24, 1, act=nn.Hardswish),
                                       conv_bn_act(24, 24, 5, 1, 24, act=nn.Hardswish),
                                       SqueezeExcite(24, 8, gate=nn.Hardsigmoid), conv_bn_act(24, 8, 1, act=None))
            self.head = nn.Sequential(nn.Linear(8, 16), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(16, 10))

        def forward(self, x):
            x = self.stem(x)
            x = x + self.block(x)
            return self.head(t.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    class EfficientNet(nn.Module):  # MBConv: SiLU (Sigmoid * x), SE with SiLU and Sigmoid, stochastic depth (eval: none)
        def __init__(self):
            super().__init__()
            self.stem = conv_bn_act(3, 8, 3, 2, act=nn.SiLU)
            self.mb = nn.Sequential(conv_bn_act(8, 32, 1, act=nn.SiLU), conv_bn_act(32, 32, 3, 1, 32, act=nn.SiLU),
                                    SqueezeExcite(32, 2, act=nn.SiLU), conv_bn_act(32, 8, 1, act=None))
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            x = self.stem(x)
            return self.fc(t.flatten(F.adaptive_avg_pool2d(x + self.mb(x), 1), 1))

    class MNASNet(nn.Module):  # ReLU inverted residuals, then x.mean([2, 3])
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(conv_bn_act(3, 8, 3, 2), conv_bn_act(8, 8, 3, 1, 8), conv_bn_act(8, 16, 1),
                                        conv_bn_act(16, 48, 1), conv_bn_act(48, 48, 5, 2, 48), conv_bn_act(48, 24, 1, act=None))
            self.fc = nn.Linear(24, 10)

        def forward(self, x):
            return self.fc(self.layers(x).mean([2, 3]))

    class RegNetY(nn.Module):  # grouped 3x3 (group width 8) with SE, residual
        def __init__(self):
            super().__init__()
            self.stem = conv_bn_act(3, 16, 3, 2)
            self.block = nn.Sequential(conv_bn_act(16, 32, 1), conv_bn_act(32, 32, 3, 1, 4),
                                       SqueezeExcite(32, 4), conv_bn_act(32, 16, 1, act=None))
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = self.stem(x)
            return self.fc(t.flatten(F.adaptive_avg_pool2d(F.relu(x + self.block(x)), 1), 1))

    class LayerNorm2d(nn.LayerNorm):  # torchvision.models.convnext.LayerNorm2d: channels-last through permutes
        def forward(self, x):
            return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                                self.eps).permute(0, 3, 1, 2)

    class CNBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
            self.norm, self.fc1, self.fc2 = nn.LayerNorm(c, eps=1e-6), nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
            self.scale = nn.Parameter(t.rand(c, 1, 1) + 0.5)

        def forward(self, x):
            y = self.dw(x).permute(0, 2, 3, 1)
            y = self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
            return x + self.scale * y

    class ConvNeXt(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, 4), LayerNorm2d(8, eps=1e-6))
            self.stage = nn.Sequential(CNBlock(8), LayerNorm2d(8, eps=1e-6), nn.Conv2d(8, 16, 2, 2), CNBlock(16))
            self.head = nn.Sequential(LayerNorm2d(16, eps=1e-6), nn.Flatten(1), nn.Linear(16, 10))

        def forward(self, x):
            return self.head(F.adaptive_avg_pool2d(self.stage(self.stem(x)), 1))

    def calibrated(factory):
        return lambda: randomize_bn(factory())

    return {"shufflenet_v2": (calibrated(ShuffleNetV2), (3, 48, 48)), "mobilenet_v3": (calibrated(MobileNetV3), (3, 32, 32)),
            "efficientnet": (calibrated(EfficientNet), (3, 32, 32)), "mnasnet": (calibrated(MNASNet), (3, 48, 48)),
            "regnet_y": (calibrated(RegNetY), (3, 32, 32)), "convnext": (ConvNeXt, (3, 64, 64))}


def _export(module, shape, opset, path, dynamic):
    t = _torch()
    module.eval()
    kwargs = dict(input_names=["image"], output_names=["out"], opset_version=opset, dynamo=False)
    if dynamic:
        kwargs["dynamic_axes"] = {"image": {0: "batch"}, "out": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with t.no_grad():
            t.onnx.export(module, (t.zeros((1, *shape)),), str(path), **kwargs)


BLOCK_EXPORTS = [("shufflenet_v2", 17, True), ("shufflenet_v2", 13, False), ("shufflenet_v2", 18, True),
                 ("mobilenet_v3", 17, True), ("efficientnet", 17, True), ("mnasnet", 17, True), ("mnasnet", 18, False),
                 ("regnet_y", 17, True), ("convnext", 17, True), ("convnext", 13, True), ("convnext", 18, False)]


@pytest.mark.parametrize("arch, opset, dynamic", BLOCK_EXPORTS,
                         ids=[f"{a}-opset{o}-{'dynamic' if d else 'static'}" for a, o, d in BLOCK_EXPORTS])
def test_torchvision_style_block_matches_onnxruntime(arch, opset, dynamic, tmp_path):
    t = _torch()
    t.manual_seed(0)
    factory, shape = _blocks()[arch]
    path = tmp_path / f"{arch}.onnx"
    _export(factory(), shape, opset, path, dynamic)
    graph = load_onnx(path)
    session = ort_session(str(path))
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        got = graph.run(x)
        if dynamic:
            want = session.run(None, {"image": x})[0]
        else:  # a batch-1 file: ORT runs it sample by sample
            want = np.concatenate([session.run(None, {"image": x[i:i + 1]})[0] for i in range(batch)])
        err = rel_error(got, want)
        assert err <= 1e-4, f"{arch} opset {opset} at batch {batch}: relative error {err:.3g}"


def test_convnext_exports_layer_normalization_at_opset_17_and_its_pieces_at_13(tmp_path):
    """The two spellings of ConvNeXt's LayerNorm both load (the test above checks both against ORT)."""
    factory, shape = _blocks()["convnext"]
    ops = {}
    for opset in (13, 17):
        _export(factory(), shape, opset, tmp_path / f"c{opset}.onnx", True)
        ops[opset] = {n.op_type for n in onnx.load(str(tmp_path / f"c{opset}.onnx")).graph.node}
    assert "LayerNormalization" in ops[17] and "Erf" in ops[17]
    assert "LayerNormalization" not in ops[13] and {"ReduceMean", "Pow", "Sqrt", "Div"} <= ops[13]


# -- export back to ONNX ------------------------------------------------------------------------

#: Cases that an exported file cannot express at the case's opset, and why (the exporter says so).
EXPORT_LIMITS = {"resize_sizes_from_shape": "needs opset 18", "resize_sizes_literal_batch_static_file": "needs opset 18"}


@pytest.mark.parametrize("case", sorted(NEW_CASES))
def test_new_operators_export_and_run_in_onnxruntime(case):
    model, inputs, options = NEW_CASES[case]()
    graph = load_onnx(model)
    opset = max(13, model.opset_import[0].version)
    if case in EXPORT_LIMITS:
        with pytest.raises(GraphError, match=EXPORT_LIMITS[case]):
            to_onnx(graph, opset=opset)
        opset = 18
    exported = to_onnx(graph, opset=opset)
    onnx.checker.check_model(exported)
    session = ort_session(exported)
    names = [o.name for o in exported.graph.output]
    x = {n: rand(3, *s, seed=9) for n, s in inputs.items()}
    got = graph.run(x)
    got = [got] if len(names) == 1 else [got[n] for n in names]
    for g, w in zip(got, session.run(None, x)):
        assert rel_error(g, w) <= 1e-5
    again = load_onnx(exported).run(x)
    again = [again] if len(names) == 1 else [again[n] for n in names]
    for g, a in zip(got, again):
        np.testing.assert_array_equal(g, a)


# -- bad input ----------------------------------------------------------------------------------

BAD = {
    "resize_cubic": (resize("cubic", scales=[1, 1, 2, 2])[0], "mode='cubic'"),
    "resize_tf_crop_and_resize": (resize("linear", "tf_crop_and_resize", scales=[1, 1, 2, 2])[0], "tf_crop_and_resize"),
    "resize_channels": (resize("nearest", scales=[1, 2, 2, 2])[0], "after the channels"),
    "resize_scales_computed": (chain([node("Relu", ["x"], ["r"]), node("ReduceMax", ["r"], ["m"], keepdims=0),
                                      node("Resize", ["x", "", "m"], ["y"])], opset=13)[0], "scales"),
    "resize_scales_and_sizes": (chain([node("Resize", ["x", "", "sc", "sz"], ["y"])],
                                      {"sc": np.ones(4, np.float32), "sz": i64(1, 4, 6, 7)}, opset=13)[0], "exactly one"),
    "split_batch_axis": (chain([node("Split", ["x"], ["y", "z"], axis=0)], outputs=("y", "z"), opset=13)[0],
                         "batch axis"),
    "split_bad_sizes": (chain([node("Split", ["x", "s"], ["y", "z"], axis=1)], {"s": i64(1, 2)},
                              outputs=("y", "z"), opset=13)[0], "do not divide"),
    "split_uneven_without_sizes": (chain([node("Split", ["x"], ["y", "z"], axis=3)], outputs=("y", "z"),
                                         opset=13)[0], "equal parts"),
    "slice_batch_axis_partly": (chain([node("Slice", ["x", "s", "e", "a"], ["y"])], {"s": i64(0), "e": i64(1),
                                                                                      "a": i64(0)}, opset=13)[0],
                                "batch axis"),
    "slice_zero_step": (chain([node("Slice", ["x", "s", "e", "a", "st"], ["y"])],
                              {"s": i64(0), "e": i64(2), "a": i64(1), "st": i64(0)}, opset=13)[0], "step of 0"),
    "slice_bounds_computed": (chain([node("Relu", ["x"], ["r"]), node("Cast", ["r"], ["ri"], to=TensorProto.INT64),
                                     node("Slice", ["x", "ri", "ri"], ["y"])], opset=13)[0], "Cast"),
    "gather_indices_from_data": (chain([node("Gather", ["c", "x"], ["y"])], {"c": rand(4, 5)})[0], "indices"),
    "gather_out_of_range": (single("Gather", dict(axis=1), {"i": i64(4)}, ["i"])[0], "out of range"),
    "reduce_axes_out_of_range": (reduction("ReduceMean", 18, axes=[4])[0], "out of range"),
    "layernorm_bad_scale": (chain([node("LayerNormalization", ["x", "s"], ["y"])], {"s": rand(5)})[0],
                            "does not broadcast"),
    "convtranspose_weight_computed": (chain([node("Relu", ["x"], ["w"]), node("ConvTranspose", ["x", "w"], ["y"])])[0],
                                      "weight"),
    "convtranspose_bad_bias": (chain([node("ConvTranspose", ["x", "w", "b"], ["y"])],
                                     {"w": rand(4, 3, 3, 3), "b": rand(4)})[0], "bias"),
    "convtranspose_output_shape_too_large": (conv_transpose(strides=[1, 1], output_shape=[9, 9])[0], "inconsistent"),
    "cast_to_int": (single("Cast", dict(to=TensorProto.INT64))[0], "int64"),
    "gelu_unknown_approximation": (single("Gelu", dict(approximate="erf"), opset=20)[0], "approximate"),
    "div_by_integer_constant": (single("Div", {}, {"d": i64(2)}, ["d"])[0], "integer"),
    "still_unsupported_op": (single("Hardmax")[0], "operator Hardmax is not supported"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_error_naming_the_node(case):
    model, expected = BAD[case]
    with pytest.raises(GraphError) as info:
        load_onnx(model)
    message = str(info.value)
    assert expected in message, message
    culprit = [n for n in model.graph.node if n.name and n.name in message]
    assert culprit and any(f"({n.op_type})" in message for n in culprit), message
