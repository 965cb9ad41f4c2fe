"""The engine's weight-memory budget: backends that would hold far more than a layer's weights stay out where it chooses.

Throw-away backends (as in ``test_dispatch``) declare what their preparation would hold beyond the
layer's weights (``Backend.extra_weight_bytes``); the built-in expanding ones (``tiled_winograd``'s
transforms, ``fft``'s spectra) are checked against the arrays their executors really keep.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_dispatch import FakeBackend, assert_matches_reference, data, only, registry_with

from convengine import Engine, PluginWarning
from convengine.core.engine import DEFAULT_MAX_EXTRA_WEIGHT_BYTES
from convengine.core.problem import ConvProblem

pytestmark = pytest.mark.usefixtures("isolated_env")

X_SHAPE, W_SHAPE = (2, 3, 8, 8), (4, 3, 3, 3)


class _Hungry(FakeBackend):
    """Predicted the fastest, but its preparation would hold ``extra`` bytes beyond the weights."""

    def __init__(self, name, extra, **kwargs):
        super().__init__(name, estimate=1e-12, **kwargs)
        self.extra = extra

    def extra_weight_bytes(self, problem):
        if isinstance(self.extra, Exception):
            raise self.extra
        return self.extra


def _engine(*backends, **kwargs):
    return Engine(registry=only(registry_with(*backends), "im2col", *(b.name for b in backends)), **kwargs)


def test_a_backend_over_the_budget_is_excluded_where_the_engine_chooses_and_explain_says_why():
    engine = _engine(_Hungry("hungry", 64 << 20), max_extra_weight_bytes=16 << 20)
    decision = engine.explain(X_SHAPE, W_SHAPE)
    row = decision.row("hungry")
    assert decision.chosen == "im2col" and row.status == "excluded"
    assert row.reason.startswith("memory:") and "64.0 MiB" in row.reason and "max_extra_weight_bytes=16 MiB" in row.reason
    x, w, _ = data()
    assert_matches_reference(engine.conv2d(x, w), x, w)


def test_within_the_budget_or_with_none_the_backend_runs():
    assert _engine(_Hungry("hungry", 16 << 20), max_extra_weight_bytes=16 << 20).explain(X_SHAPE, W_SHAPE).chosen == "hungry"
    assert _engine(_Hungry("hungry", 1 << 40), max_extra_weight_bytes=None).explain(X_SHAPE, W_SHAPE).chosen == "hungry"
    assert _engine(_Hungry("quiet", None)).explain(X_SHAPE, W_SHAPE).chosen == "quiet"  # None: nothing to count
    assert _engine(_Hungry("numpy", np.int64(1 << 20))).explain(X_SHAPE, W_SHAPE).chosen == "numpy"  # numpy's ints count


def test_a_backend_named_explicitly_runs_over_the_budget_and_a_preference_list_falls_back():
    hungry = _Hungry("hungry", 1 << 40)
    engine = _engine(hungry)
    x, w, _ = data()
    assert_matches_reference(engine.conv2d(x, w, backend="hungry"), x, w)
    assert hungry.execute_calls == 1
    preferring = Engine(policy=["hungry", "im2col"], registry=engine.registry)
    decision = preferring.explain(X_SHAPE, W_SHAPE)
    assert decision.chosen == "im2col" and decision.row("hungry").reason.startswith("memory:")


def test_the_budget_carries_over_to_a_narrowed_engine():
    engine = _engine(_Hungry("hungry", 1 << 30), max_extra_weight_bytes=1 << 20)
    assert engine.narrowed(1e-3).max_extra_weight_bytes == 1 << 20
    assert engine.narrowed(1e-3).explain(X_SHAPE, W_SHAPE).row("hungry").status == "excluded"
    assert Engine().max_extra_weight_bytes == DEFAULT_MAX_EXTRA_WEIGHT_BYTES == 20 << 20


@pytest.mark.parametrize("answer", [RuntimeError("no idea"), -5, "lots", float("nan")])
def test_a_backend_whose_answer_is_broken_is_excluded_with_the_reason_not_the_engine(answer):
    engine = _engine(_Hungry("broken", answer))
    with pytest.warns(PluginWarning, match="extra_weight_bytes"):
        decision = engine.explain(X_SHAPE, W_SHAPE)
    assert decision.chosen == "im2col" and "extra_weight_bytes()" in decision.row("broken").reason
    x, w, _ = data()
    assert_matches_reference(engine.conv2d(x, w), x, w)


@pytest.mark.parametrize("value", [-1, 1.5, "16MiB", True, float("inf")])
def test_engine_rejects_a_bad_budget_naming_the_parameter(value):
    with pytest.raises(ValueError, match="max_extra_weight_bytes"):
        Engine(max_extra_weight_bytes=value)


def _closure_arrays(execute, seen=None) -> list:
    """Every ndarray an executor's closure holds (its prepared state), through the functions it holds."""
    seen = set() if seen is None else seen
    if id(execute) in seen:
        return []
    seen.add(id(execute))
    found = []
    for value in (c.cell_contents for c in execute.__closure__ or () if not _empty(c)):
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, np.ndarray):
                found.append(v)
            elif callable(v) and getattr(v, "__closure__", None):
                found += _closure_arrays(v, seen)
    return found


def _empty(cell) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:
        return True
    return False


@pytest.mark.parametrize("shapes", [((1, 40, 10, 10), (24, 40, 3, 3)), ((2, 16, 9, 7), (48, 16, 3, 3))])
def test_tiled_winograd_states_the_transforms_it_keeps(shapes):
    from convengine.backends.winograd import WinogradBackend

    backend = WinogradBackend()
    problem = ConvProblem.from_shapes(*shapes, padding=1)
    rng = np.random.default_rng(3)
    weight = rng.standard_normal(shapes[1]).astype(np.float32)
    held = _closure_arrays(backend.prepare(problem, weight, None))
    assert max(a.nbytes for a in held) == backend.extra_weight_bytes(problem)  # the transforms, padding included
    assert any(a is weight for a in held)  # and the layer's own weights (its exact path's), which are not extra


def test_fft_states_the_spectra_it_keeps():
    from convengine.backends.fft import FFTBackend

    backend = FFTBackend()
    problem = ConvProblem.from_shapes((1, 6, 27, 27), (10, 6, 5, 5), padding=2)
    weight = np.random.default_rng(4).standard_normal(problem.weight_shape).astype(np.float32)
    held = _closure_arrays(backend.prepare(problem, weight, None))
    assert max(a.nbytes for a in held) == backend.extra_weight_bytes(problem)


def test_the_explain_command_takes_the_budget_in_mebibytes_or_none(capsys):
    from convengine.cli import main

    layer = ["explain", "--input", "32,1024,7,7", "--weight", "1024,1024,3,3", "--padding", "1"]
    assert main(layer) == 0
    assert "max_extra_weight_bytes=20 MiB" in capsys.readouterr().out  # the engine's default, tiled_winograd's row
    assert main(layer + ["--max-extra-weight-mib", "none"]) == 0
    assert "memory:" not in capsys.readouterr().out
    assert main(layer + ["--max-extra-weight-mib", "2.5"]) == 0
    assert "max_extra_weight_bytes=2.5 MiB" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(layer + ["--max-extra-weight-mib", "-3"])
    assert exit_info.value.code == 2 and "--max-extra-weight-mib" in capsys.readouterr().err
