"""Property tests: every available backend agrees with the float64 reference on random problems.

Problems are drawn by hypothesis over batch, groups (1, 2, 3 or depthwise), channels, kernel
size per axis, stride, dilation and asymmetric padding, dtype and bias; the input size is
derived from a drawn output size, so the effective kernel always fits the padded input. The
CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) runs one Python thread per GPU thread, so it gets
a separate strategy of tiny problems (at most ~100 outputs) and fewer examples; on a real
GPU the ``cuda`` backend gets the full strategy like every other backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest
from conftest import is_cuda_simulator, tolerance, unsupported_reason
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import convengine as ce
from convengine.core.contract import ERROR_BOUNDS
from convengine.testing.conformance import REL_TOLERANCE
from convengine.testing.reference import conv2d_reference, relative_error

pytestmark = pytest.mark.usefixtures("no_forced_backend")

FULL_EXAMPLES = 150
COMMON_EXAMPLES = 40
FULL_LAYOUT_EXAMPLES = 40
SIM_EXAMPLES = 12
SIM_COMMON_EXAMPLES = 4
SIM_LAYOUT_EXAMPLES = 4
SIM_MAX_OUTPUTS = 100


@dataclass(frozen=True)
class Case:
    """One drawn problem. ``padding`` etc. are in the form passed to ``conv2d``; ``pads`` is canonical."""

    dtype: str
    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    groups: int
    stride: object
    padding: object
    dilation: object
    stride2: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilation2: tuple[int, int]
    bias: bool
    seed: int

    @property
    def output_shape(self):
        out = []
        for axis, (size, before, after) in enumerate(((self.height, *self.pads[:2]), (self.width, *self.pads[2:]))):
            eff = self.dilation2[axis] * (self.kernel[axis] - 1) + 1
            out.append((size + before + after - eff) // self.stride2[axis] + 1)
        return (self.batch, self.out_channels, *out)

    def arrays(self):
        rng = np.random.default_rng(self.seed)
        x = rng.standard_normal((self.batch, self.in_channels, self.height, self.width)).astype(self.dtype)
        w = rng.standard_normal((self.out_channels, self.in_channels // self.groups, *self.kernel)).astype(self.dtype)
        b = rng.standard_normal(self.out_channels).astype(self.dtype) if self.bias else None
        return x, w, b

    def params(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def reference(self, x, w, b):
        return conv2d_reference(x, w, b, self.stride2, self.pads, self.dilation2, self.groups)

    def unsupported_by(self, backend_name):
        return unsupported_reason(
            backend_name, (self.batch, self.in_channels, self.height, self.width),
            (self.out_channels, self.in_channels // self.groups, *self.kernel), dtype=self.dtype, bias=self.bias,
            stride=self.stride2, padding=self.pads, dilation=self.dilation2, groups=self.groups)


def _pair_form(draw, pair):
    """An int when both entries agree (sometimes), else the pair, as a tuple or a list."""
    if pair[0] == pair[1] and draw(st.booleans()):
        return pair[0]
    return draw(st.sampled_from([tuple(pair), list(pair)]))


def _padding_form(draw, pads):
    top, bottom, left, right = pads
    forms = [tuple(pads)]
    if top == bottom and left == right:
        forms.append((top, left))
        if top == left:
            forms.append(top)
        if top == left == 0:
            forms.append("valid")
    return draw(st.sampled_from(forms))


@st.composite
def conv_cases(draw, small: bool = False, common: bool = False) -> Case:
    """Random problems; ``small``: at most SIM_MAX_OUTPUTS outputs; ``common``: 3x3, stride 1, dilation 1."""
    dtype = draw(st.sampled_from(["float32", "float64"]))
    batch = draw(st.integers(1, 2 if small else 3))
    kind = draw(st.sampled_from([1, 2, "depthwise"] if small else [1, 2, 3, "depthwise"]))
    if kind == "depthwise":
        groups, per_group = draw(st.integers(2, 3 if small else 6)), 1
    else:
        groups, per_group = kind, draw(st.integers(1, 2 if small else 3))
    out_per_group = draw(st.integers(1, 2 if small else 3))
    in_channels, out_channels = groups * per_group, groups * out_per_group
    if common:  # the layer shape of most CNNs, and the only one some backends (Winograd) support
        kernel, stride, dilation = (3, 3), (1, 1), (1, 1)
    else:
        kernel = (draw(st.integers(1, 11)), draw(st.integers(1, 11)))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))

    # Per axis: the smallest input that fits the effective kernel, and its output size.
    smallest, out_min = [], []
    for axis in range(2):
        eff = dilation[axis] * (kernel[axis] - 1) + 1
        padding = pads[2 * axis] + pads[2 * axis + 1]
        size = max(1, eff - padding)
        smallest.append(size)
        out_min.append((size + padding - eff) // stride[axis] + 1)
    base = batch * out_channels
    if small:
        assume(base * out_min[0] * out_min[1] <= SIM_MAX_OUTPUTS)
        out_h = draw(st.integers(out_min[0], max(out_min[0], SIM_MAX_OUTPUTS // (base * out_min[1]))))
        out_w = draw(st.integers(out_min[1], max(out_min[1], SIM_MAX_OUTPUTS // (base * out_h))))
    else:
        out_h = draw(st.integers(out_min[0], out_min[0] + 12))
        out_w = draw(st.integers(out_min[1], out_min[1] + 12))
    sizes = []
    for axis, out in enumerate((out_h, out_w)):
        eff = dilation[axis] * (kernel[axis] - 1) + 1
        slack = draw(st.integers(0, stride[axis] - 1))  # inputs the last window does not reach
        sizes.append(max(smallest[axis], (out - 1) * stride[axis] + eff + slack - pads[2 * axis] - pads[2 * axis + 1]))

    case = Case(
        dtype=dtype, batch=batch, in_channels=in_channels, height=sizes[0], width=sizes[1],
        out_channels=out_channels, kernel=kernel, groups=groups,
        stride=_pair_form(draw, stride), padding=_padding_form(draw, pads), dilation=_pair_form(draw, dilation),
        stride2=stride, pads=pads, dilation2=dilation, bias=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    assert case.output_shape[2:] == (out_h, out_w)
    if small:
        assert np.prod(case.output_shape) <= SIM_MAX_OUTPUTS
    return case


def _snapshot(*arrays):
    return [None if a is None else a.copy() for a in arrays]


def _assert_unchanged(arrays, snapshots):
    for a, s in zip(arrays, snapshots):
        if a is not None:
            np.testing.assert_array_equal(a, s)


def _refused(backend_name: str, case: Case) -> bool:
    """When the backend does not support the case, naming it explicitly must raise, cleanly."""
    if case.unsupported_by(backend_name) is None:
        return False
    x, w, b = case.arrays()
    before = _snapshot(x, w, b)
    with pytest.raises(ce.BackendUnavailableError, match=backend_name):
        ce.conv2d(x, w, b, backend=backend_name, **case.params())
    _assert_unchanged((x, w, b), before)
    return True


def _check_against_reference(backend_name: str, case: Case) -> None:
    if _refused(backend_name, case):
        return
    x, w, b = case.arrays()
    before = _snapshot(x, w, b)
    y = ce.conv2d(x, w, b, backend=backend_name, **case.params())
    _assert_unchanged((x, w, b), before)
    assert isinstance(y, np.ndarray)
    assert y.dtype == np.dtype(case.dtype)
    assert y.shape == case.output_shape
    err = relative_error(y, case.reference(x, w, b))
    assert err <= tolerance(backend_name, case.dtype), f"relative error {err:.3g} for {case}"


@settings(max_examples=FULL_EXAMPLES)
@given(case=conv_cases())
def _full_reference_property(backend_name, case):
    _check_against_reference(backend_name, case)


@settings(max_examples=SIM_EXAMPLES)
@given(case=conv_cases(small=True))
def _simulator_reference_property(backend_name, case):
    _check_against_reference(backend_name, case)


def test_matches_reference(backend_name):
    if is_cuda_simulator(backend_name):
        _simulator_reference_property(backend_name)
    else:
        _full_reference_property(backend_name)


@settings(max_examples=COMMON_EXAMPLES)
@given(case=conv_cases(common=True))
def _full_common_property(backend_name, case):
    _check_against_reference(backend_name, case)


@settings(max_examples=SIM_COMMON_EXAMPLES)
@given(case=conv_cases(small=True, common=True))
def _simulator_common_property(backend_name, case):
    _check_against_reference(backend_name, case)


def test_matches_reference_3x3_stride1(backend_name):
    if is_cuda_simulator(backend_name):
        _simulator_common_property(backend_name)
    else:
        _full_common_property(backend_name)


# -- inputs are never modified; layout does not change the result ----------------------------

LAYOUTS = ["contiguous", "fortran", "transposed", "sliced", "reversed"]


def _with_layout(a: Optional[np.ndarray], layout: str, readonly: bool):
    """``(view, owner)``: an array equal to ``a`` in the given memory layout, and the buffer behind it."""
    if a is None:
        return None, None
    if layout == "contiguous":
        view = a.copy()
    elif layout == "fortran":
        view = np.asfortranarray(a)
    elif layout == "transposed":  # last two axes swapped in memory
        view = np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2) if a.ndim > 1 else a[::-1].copy()[::-1]
    elif layout == "sliced":  # every other element of a NaN-filled buffer: reading a gap shows
        owner = np.full((*a.shape[:-1], 2 * a.shape[-1] + 1), np.nan, a.dtype)
        owner[..., 1::2] = a
        view = owner[..., 1::2]
    elif layout == "reversed":  # negative strides
        view = a[..., ::-1].copy()[..., ::-1]
    else:
        raise AssertionError(layout)
    if layout != "sliced":
        owner = view.base if view.base is not None else view
    assert np.array_equal(view, a)
    if readonly:
        view.flags.writeable = False
    return view, owner


def _check_layouts(backend_name: str, case: Case, layouts, readonly) -> None:
    if _refused(backend_name, case):
        return
    x, w, b = case.arrays()
    expected = ce.conv2d(x, w, b, backend=backend_name, **case.params())
    views, owners = zip(*(_with_layout(a, layout, ro) for a, layout, ro in zip((x, w, b), layouts, readonly)))
    before = _snapshot(*views) + _snapshot(*owners)
    y = ce.conv2d(*views, backend=backend_name, **case.params())
    for array in (*views, *owners):
        if array is not None:
            assert not np.shares_memory(y, array), "the output shares memory with an input"
    _assert_unchanged(views + owners, before)
    assert y.dtype == expected.dtype and y.shape == expected.shape
    assert relative_error(y, expected) <= tolerance(backend_name, case.dtype)
    assert relative_error(y, case.reference(x, w, b)) <= tolerance(backend_name, case.dtype)


_layout_choices = st.tuples(*[st.sampled_from(LAYOUTS)] * 3)
_readonly_choices = st.tuples(*[st.booleans()] * 3)


@settings(max_examples=FULL_LAYOUT_EXAMPLES)
@given(case=st.one_of(conv_cases(), conv_cases(common=True)), layouts=_layout_choices, readonly=_readonly_choices)
def _full_layout_property(backend_name, case, layouts, readonly):
    _check_layouts(backend_name, case, layouts, readonly)


@settings(max_examples=SIM_LAYOUT_EXAMPLES)
@given(case=st.one_of(conv_cases(small=True), conv_cases(small=True, common=True)), layouts=_layout_choices,
       readonly=_readonly_choices)
def _simulator_layout_property(backend_name, case, layouts, readonly):
    _check_layouts(backend_name, case, layouts, readonly)


def test_inputs_unmodified_and_layout_independent(backend_name):
    if is_cuda_simulator(backend_name):
        _simulator_layout_property(backend_name)
    else:
        _full_layout_property(backend_name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_read_only(backend_name, layout, dtype):
    """Each layout, read-only, for every array at once (hypothesis may not draw them all)."""
    cases = [
        Case(dtype=dtype, batch=2, in_channels=4, height=5, width=4, out_channels=2, kernel=(3, 2), groups=2,
             stride=(1, 2), padding=(1, 0, 0, 1), dilation=1, stride2=(1, 2), pads=(1, 0, 0, 1),
             dilation2=(1, 1), bias=True, seed=7),
        Case(dtype=dtype, batch=2, in_channels=2, height=4, width=5, out_channels=2, kernel=(3, 3), groups=1,
             stride=1, padding=(0, 1, 1, 0), dilation=1, stride2=(1, 1), pads=(0, 1, 1, 0),
             dilation2=(1, 1), bias=True, seed=9),
    ]
    for case in cases:
        _check_layouts(backend_name, case, (layout,) * 3, (True,) * 3)


def test_read_only_unpadded(backend_name):
    """No padding: a backend may use the (read-only) input itself rather than a padded copy."""
    case = Case(dtype="float64", batch=1, in_channels=2, height=4, width=5, out_channels=3, kernel=(3, 3), groups=1,
                stride=1, padding=0, dilation=1, stride2=(1, 1), pads=(0, 0, 0, 0), dilation2=(1, 1), bias=False,
                seed=8)
    _check_layouts(backend_name, case, ("contiguous",) * 3, (True,) * 3)


def test_tolerances_are_not_tighter_than_the_documented_bounds():
    for numerical_class, bounds in ERROR_BOUNDS.items():
        for dtype, bound in bounds.items():
            assert REL_TOLERANCE[numerical_class][dtype] >= bound
