"""Bad input is refused with a ValueError/TypeError naming the culprit; NaN and Inf propagate.

Whatever the outcome, success or error, the caller's arrays are never modified.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import AVAILABLE_BACKEND_NAMES, is_lossy, skip_if_unsupported, tolerance

import convengine as ce
from convengine.core.registry import Registry
from convengine.testing.reference import conv2d_reference, relative_error

pytestmark = pytest.mark.usefixtures("no_forced_backend")

RNG_SEED = 1234


def _random(shape, dtype="float64", seed=0):
    return np.random.default_rng(RNG_SEED + seed).standard_normal(shape).astype(dtype)


def _valid(dtype="float64"):
    """A valid call: x (2, 4, 5, 5), weight (6, 2, 3, 3), groups 2, bias (6,)."""
    return _random((2, 4, 5, 5), dtype, 1), _random((6, 2, 3, 3), dtype, 2), _random((6,), dtype, 3), {"groups": 2}


def _replace(x=None, w=None, b=None, drop_bias=False, **params):
    """A case builder: the valid call with some arrays or parameters replaced."""

    def build():
        vx, vw, vb, vparams = _valid()
        args = (vx if x is None else x(), vw if w is None else w(), None if drop_bias else (vb if b is None else b()))
        return args, {**vparams, **params}

    return build


def _cast(which, dtype):
    """The valid call with one of its arrays cast (as numpy casts: complex keeps values, bool thresholds)."""
    vx, vw, vb, _ = _valid()
    source = {"x": vx, "w": vw, "b": vb}[which]
    return {which: lambda: (source * 10).astype(dtype)}


BAD = [
    # (id, builder, exception type(s), message must match)
    ("x-1d", _replace(x=lambda: _random((5,))), ValueError, r"\binput\b"),
    ("x-2d", _replace(x=lambda: _random((5, 5))), ValueError, r"\binput\b"),
    ("x-5d", _replace(x=lambda: _random((1, 2, 4, 5, 5))), ValueError, r"\binput\b"),
    ("x-scalar", _replace(x=lambda: np.float64(1.0)), ValueError, r"\binput\b"),
    ("x-None", _replace(x=lambda: None), TypeError, r"\binput\b"),
    ("x-zero-channels", _replace(x=lambda: _random((2, 0, 5, 5)), groups=1, w=lambda: _random((6, 0, 3, 3))),
     ValueError, r"weight|input"),
    ("x-zero-height", _replace(x=lambda: _random((2, 4, 0, 5))), ValueError, r"\binput\b"),
    ("w-2d", _replace(w=lambda: _random((3, 3))), ValueError, r"\bweight\b"),
    ("w-3d", _replace(w=lambda: _random((6, 2, 3))), ValueError, r"\bweight\b"),
    ("w-5d", _replace(w=lambda: _random((6, 2, 3, 3, 1))), ValueError, r"\bweight\b"),
    ("w-zero-out-channels", _replace(w=lambda: _random((0, 2, 3, 3)), drop_bias=True), ValueError, r"\bweight\b"),
    ("w-zero-kernel", _replace(w=lambda: _random((6, 2, 0, 3))), ValueError, r"\bweight\b|kernel"),
    ("channels-mismatch", _replace(w=lambda: _random((6, 3, 3, 3))), ValueError, r"input channels"),
    ("channels-mismatch-groups1", _replace(w=lambda: _random((6, 2, 3, 3)), groups=1), ValueError, r"input channels"),
    ("channels-not-divisible-by-groups", _replace(w=lambda: _random((6, 1, 3, 3)), groups=3), ValueError,
     r"groups"),
    ("out-channels-not-divisible-by-groups", _replace(w=lambda: _random((5, 2, 3, 3)), drop_bias=True), ValueError,
     r"out_channels"),
    ("groups-0", _replace(groups=0), ValueError, r"groups"),
    ("groups-negative", _replace(groups=-2), ValueError, r"groups"),
    ("groups-float", _replace(groups=2.0), (ValueError, TypeError), r"groups"),
    ("groups-bool", _replace(groups=True, w=lambda: _random((6, 4, 3, 3))), (ValueError, TypeError), r"groups"),
    ("kernel-larger-than-input", _replace(w=lambda: _random((6, 2, 6, 6))), ValueError, r"kernel"),
    ("kernel-larger-one-axis", _replace(w=lambda: _random((6, 2, 1, 6))), ValueError, r"kernel"),
    ("kernel-larger-than-padded-input", _replace(w=lambda: _random((6, 2, 8, 8)), padding=1), ValueError, r"kernel"),
    ("dilated-kernel-larger-than-input", _replace(dilation=3), ValueError, r"kernel"),
    ("dilated-kernel-larger-one-axis", _replace(dilation=(1, 3), padding=(0, 0, 0, 0)), ValueError, r"kernel"),
    ("stride-0", _replace(stride=0), ValueError, r"stride"),
    ("stride-negative", _replace(stride=-1), ValueError, r"stride"),
    ("stride-pair-0", _replace(stride=(1, 0)), ValueError, r"stride"),
    ("stride-pair-negative", _replace(stride=(-2, 1)), ValueError, r"stride"),
    ("stride-float", _replace(stride=1.5), (ValueError, TypeError), r"stride"),
    ("stride-string", _replace(stride="2"), (ValueError, TypeError), r"stride"),
    ("stride-triple", _replace(stride=(1, 1, 1)), (ValueError, TypeError), r"stride"),
    ("dilation-0", _replace(dilation=0), ValueError, r"dilation"),
    ("dilation-pair-0", _replace(dilation=(0, 1)), ValueError, r"dilation"),
    ("dilation-negative", _replace(dilation=-1), ValueError, r"dilation"),
    ("padding-negative", _replace(padding=-1), ValueError, r"padding"),
    ("padding-pair-negative", _replace(padding=(0, -1)), ValueError, r"padding"),
    ("padding-4tuple-negative", _replace(padding=(0, 0, -1, 0)), ValueError, r"padding"),
    ("padding-string-full", _replace(padding="full"), ValueError, r"padding"),
    ("padding-string-empty", _replace(padding=""), ValueError, r"padding"),
    ("padding-float", _replace(padding=1.5), (ValueError, TypeError), r"padding"),
    ("padding-triple", _replace(padding=(1, 1, 1)), (ValueError, TypeError), r"padding"),
    ("padding-4tuple-float", _replace(padding=(1, 1, 1.0, 1)), (ValueError, TypeError), r"padding"),
    ("padding-same-stride-2", _replace(padding="same", stride=2), ValueError, r"same.*stride|stride.*same"),
    ("padding-same-stride-1x2", _replace(padding="same", stride=(1, 2)), ValueError, r"same.*stride|stride.*same"),
    ("dtype-x32-w64", _replace(x=lambda: _random((2, 4, 5, 5), "float32")), TypeError, r"\bweight\b.*\binput\b"),
    ("dtype-x64-w32", _replace(w=lambda: _random((6, 2, 3, 3), "float32")), TypeError, r"\bweight\b.*\binput\b"),
    ("dtype-bias32", _replace(b=lambda: _random((6,), "float32")), TypeError, r"\bbias\b"),
    ("dtype-bias32-x32-w32", _replace(x=lambda: _random((2, 4, 5, 5), "float32"),
                                      w=lambda: _random((6, 2, 3, 3), "float32")), TypeError, r"\bbias\b"),
    ("bias-short", _replace(b=lambda: _random((5,))), ValueError, r"\bbias\b"),
    ("bias-long", _replace(b=lambda: _random((7,))), ValueError, r"\bbias\b"),
    ("bias-2d", _replace(b=lambda: _random((1, 6))), ValueError, r"\bbias\b"),
    ("bias-column", _replace(b=lambda: _random((6, 1))), ValueError, r"\bbias\b"),
    ("bias-scalar", _replace(b=lambda: np.float64(1.0)), ValueError, r"\bbias\b"),
]
for _which, _name in (("x", "input"), ("w", "weight"), ("b", "bias")):
    for _dtype in ("int32", "int64", "uint8", "bool", "complex64", "complex128", "float16", "object"):
        BAD.append((f"dtype-{_which}-{_dtype}", _replace(**_cast(_which, _dtype)), TypeError, rf"\b{_name}\b"))

BACKEND_CHOICES = [None, *AVAILABLE_BACKEND_NAMES]


@pytest.mark.parametrize("backend", BACKEND_CHOICES, ids=[str(b) for b in BACKEND_CHOICES])
@pytest.mark.parametrize("build, error, match", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_input_raises_naming_the_parameter(build, error, match, backend):
    args, params = build()
    before = [None if a is None else np.array(a, copy=True) for a in args]
    with pytest.raises(error, match=match):
        ce.conv2d(*args, backend=backend, **params)
    for a, copy in zip(args, before):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, copy)


def test_the_valid_call_the_bad_cases_derive_from_runs():
    x, w, b, params = _valid()
    assert ce.conv2d(x, w, b, **params).shape == (2, 6, 3, 3)


@pytest.mark.parametrize("name", ["nope", "", "NAIVE ", "auto", "tune"])
def test_unknown_backend(name):
    x, w, b, params = _valid()
    before = [x.copy(), w.copy(), b.copy()]
    with pytest.raises(ValueError, match=r"backend"):
        ce.conv2d(x, w, b, backend=name, **params)
    for a, copy in zip((x, w, b), before):
        np.testing.assert_array_equal(a, copy)




@pytest.mark.parametrize("name", ["nope", "auto"])
def test_unknown_backend_with_empty_batch(name):
    """An unknown backend name is refused whatever the batch size (it is with batch 1)."""
    x, w, b, params = _valid()
    with pytest.raises(ValueError, match=r"backend"):
        ce.conv2d(x[:0], w, b, backend=name, **params)


def test_backend_that_cannot_run_the_problem_with_empty_batch():
    """A backend whose supports() declines the problem is refused whatever the batch size (as with batch 1)."""
    engine, _ = _spy_engine(declines="never supported")
    x, w, b, params = _valid()
    with pytest.raises(ce.BackendUnavailableError, match="never supported"):
        engine.conv2d(x[:1], w, b, backend="spy", **params)  # batch 1: refused (this part passes today)
    with pytest.raises(ce.BackendUnavailableError, match="never supported"):
        engine.conv2d(x[:0], w, b, backend="spy", **params)


@pytest.mark.parametrize("x_hw, kernel, params", [
    ((3, 3), (3, 3), {}),
    ((5, 5), (3, 3), {"dilation": 2}),
    ((1, 2), (3, 4), {"padding": (1, 1, 1, 1)}),
    ((5, 1), (3, 3), {"padding": (0, 0, 1, 1), "dilation": (2, 1), "stride": 3}),
], ids=["3x3", "dilated", "padded", "padded-dilated-strided"])
def test_kernel_exactly_as_large_as_padded_input_is_fine(backend_name, x_hw, kernel, params):
    """The boundary of the 'kernel larger than padded input' check: equal size gives a 1x1 output."""
    x = _random((1, 2, *x_hw))
    w = _random((3, 2, *kernel))
    skip_if_unsupported(backend_name, x, w, **params)
    y = ce.conv2d(x, w, backend=backend_name, **params)
    assert y.shape == (1, 3, 1, 1)
    stride = params.get("stride", 1)
    padding = params.get("padding", (0, 0, 0, 0))
    dilation = params.get("dilation", 1)
    ref = conv2d_reference(x, w, None, (stride, stride), padding, (dilation, dilation) if isinstance(dilation, int)
                           else dilation, 1)
    assert relative_error(y, ref) <= tolerance(backend_name, "float64")


# -- NaN and Inf ------------------------------------------------------------------------------

NONFINITE = {  # (n, c, i, j): value; sample 2 stays clean
    (0, 0, 2, 3): np.nan,
    (0, 1, 4, 1): np.inf,
    (1, 0, 0, 0): -np.inf,
    (1, 1, 1, 1): np.inf,  # shares windows with the -inf above: inf - inf = nan there
    (1, 0, 5, 5): np.nan,
}
NONFINITE_CONFIGS = {
    "3x3-pad1": dict(w_shape=(2, 2, 3, 3), params={"padding": 1}),
    "groups-stride-dilation": dict(w_shape=(4, 1, 3, 2), params={"groups": 2, "stride": (2, 1), "dilation": (2, 2),
                                                                  "padding": (1, 2, 0, 1)}),
}


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("config", list(NONFINITE_CONFIGS), ids=list(NONFINITE_CONFIGS))
def test_nan_and_inf_propagate(backend_name, config, dtype):
    w_shape, params = NONFINITE_CONFIGS[config]["w_shape"], NONFINITE_CONFIGS[config]["params"]
    x = _random((3, 2, 6, 6), dtype, 4)
    for index, value in NONFINITE.items():
        x[index] = value
    w = _random(w_shape, dtype, 5)
    b = _random((w_shape[0],), dtype, 6)
    skip_if_unsupported(backend_name, x, w, b, **params)
    before = [x.copy(), w.copy(), b.copy()]

    y = ce.conv2d(x, w, b, backend=backend_name, **params)

    for a, copy in zip((x, w, b), before):
        np.testing.assert_array_equal(a, copy)
    stride, dilation = params.get("stride", (1, 1)), params.get("dilation", (1, 1))
    padding = params["padding"]
    pads = (padding,) * 4 if isinstance(padding, int) else padding
    ref = conv2d_reference(x, w, b, stride, pads, dilation, params.get("groups", 1))
    assert y.shape == ref.shape and y.dtype == np.dtype(dtype)
    ref_bad = ~np.isfinite(ref)
    assert np.isnan(ref).any() and np.isposinf(ref).any() and np.isneginf(ref).any() and ref_bad[2].sum() == 0
    y_bad = ~np.isfinite(y)
    if is_lossy(backend_name):
        # A transform mixes a whole tile or plane: non-finite values may spread further, never less far.
        assert (y_bad | ~ref_bad).all(), "a non-finite reference output came out finite"
        assert np.isfinite(y[2]).all(), "non-finite values leaked into a clean sample"
        assert np.isnan(y[np.isnan(ref)]).all()
    else:
        np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
        np.testing.assert_array_equal(np.isposinf(y), np.isposinf(ref))
        np.testing.assert_array_equal(np.isneginf(y), np.isneginf(ref))
    finite = ~y_bad & ~ref_bad
    assert finite[2].all()
    assert relative_error(y[finite], ref[finite]) <= tolerance(backend_name, dtype)


# -- byte order: the engine must hand backends native arrays ----------------------------------

def _swapped(a):
    """The same values in the non-native byte order."""
    return a.astype(a.dtype.newbyteorder("S"))


class _SpyBackend(ce.Backend):
    """Records the dtype and layout of every array the engine hands it."""

    name = "spy"

    def __init__(self, seen, declines=None):
        self.seen = seen
        self.declines = declines

    def supports(self, problem):
        return self.declines

    def prepare(self, problem, weight, bias):
        self.seen.append(("weight", problem.dtype, weight.dtype, weight.flags.c_contiguous))
        if bias is not None:
            self.seen.append(("bias", problem.dtype, bias.dtype, bias.flags.c_contiguous))

        def execute(x):
            self.seen.append(("input", problem.dtype, x.dtype, x.flags.c_contiguous))
            return np.zeros(problem.output_shape, problem.dtype)

        return execute


class _SpyPlugin:
    def __init__(self, declines=None):
        self.seen = []
        self.declines = declines

    @ce.hookimpl
    def convengine_register_backends(self, register):
        register(_SpyBackend(self.seen, self.declines))


def _spy_engine(declines=None):
    """A private engine whose registry holds the built-ins and a ``spy`` backend (no entry points)."""
    plugin = _SpyPlugin(declines)
    return ce.Engine(registry=Registry.load(extra_plugins=[plugin], load_entry_points=False)), plugin.seen


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backends_receive_c_contiguous_arrays_of_the_problem_dtype(dtype):
    engine, seen = _spy_engine()
    x = np.asfortranarray(_random((2, 4, 5, 5), dtype, 7))[:, :, ::-1]
    w = _random((6, 2, 3, 6), dtype, 8)[..., ::2]
    b = _random((12,), dtype, 9)[::2]
    engine.conv2d(x, w, b, groups=2, backend="spy")
    assert {name for name, *_ in seen} == {"input", "weight", "bias"}
    for name, problem_dtype, got, contiguous in seen:
        assert got == np.dtype(problem_dtype) and contiguous, (name, got, contiguous)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_backends_receive_native_byte_order(dtype):
    engine, seen = _spy_engine()
    x, w, b, params = _valid(dtype)
    engine.conv2d(_swapped(x), _swapped(w), _swapped(b), backend="spy", **params)
    for name, problem_dtype, got, _ in seen:
        assert got == np.dtype(problem_dtype), f"{name} reached the backend as {got.str}, not {np.dtype(problem_dtype).str}"


@pytest.mark.filterwarnings("ignore::convengine.PluginWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_native_byte_order(request, backend_name, dtype):
    """Byte-swapped float arrays are float32/float64 arrays: computed correctly, or refused cleanly
    (TypeError/ValueError naming the parameter); never a backend crash that disables the backend."""
    engine = ce.Engine(registry=Registry.load())  # a private registry: a backend marked broken stays here
    x, w, b, params = _valid(dtype)
    skip_if_unsupported(backend_name, x, w, b, padding=1, **params)
    args = [_swapped(a) for a in (x, w, b)]
    before = [a.copy() for a in args]
    try:
        y = engine.conv2d(*args, padding=1, backend=backend_name, **params)
    except (TypeError, ValueError) as exc:
        assert not isinstance(exc, ce.BackendError)
        assert any(word in str(exc) for word in ("input", "weight", "bias", "byte order")), str(exc)
    else:
        assert y.dtype.name == dtype and y.shape == (2, 6, 5, 5)
        expected = conv2d_reference(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 2)
        assert relative_error(y, expected) <= tolerance(backend_name, dtype)
    finally:
        for a, copy in zip(args, before):
            np.testing.assert_array_equal(a, copy)
            assert a.dtype == copy.dtype
    assert engine.registry.get(backend_name).available, engine.registry.get(backend_name).unavailable_reason
