"""The plugin registry: built-ins and third-party plugins through the same hook, failures contained.

Every plugin here is a throw-away module object (``types.ModuleType`` with a hookimpl) handed to
``Registry.load(extra_plugins=..., load_entry_points=False)``, except in the entry-point tests,
which install a temporary distribution (a ``*.dist-info`` directory) on ``sys.path``.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings

import numpy as np
import pytest

import convengine
from convengine import Backend, Engine, PluginWarning
from convengine.core.registry import BUILTIN_PLUGINS, ENTRY_POINT_GROUP, Registry
from convengine.testing.reference import conv2d_reference

BUILTIN_NAMES = {"naive": "convengine.backends.naive", "im2col": "convengine.backends.im2col",
                 "fft": "convengine.backends.fft", "cuda": "convengine.backends.cuda"}


pytestmark = pytest.mark.usefixtures("isolated_env")


class FakeBackend(Backend):
    """A correct (reference-based) CPU backend with a configurable name."""

    version = "1"

    def __init__(self, name):
        self.name = name

    def estimate_seconds(self, problem, machine):
        return 1e-9  # cheapest of all, so "auto" picks it whenever it is eligible

    def prepare(self, problem, weight, bias):
        w = weight.copy()
        b = None if bias is None else bias.copy()

        def execute(x):
            return conv2d_reference(x, w, b, problem.stride, problem.padding, problem.dilation,
                                    problem.groups).astype(problem.dtype)

        return execute


def make_plugin(plugin_name, *backends, raises=None):
    """A module-like plugin object registering ``backends`` (then raising ``raises``, if given)."""

    @convengine.hookimpl
    def convengine_register_backends(register):
        for backend in backends:
            register(backend)
        if raises is not None:
            raise raises

    # A module object, as an entry point usually yields. (pluggy needs plugins to be hashable,
    # which a types.SimpleNamespace is not: see test_unhashable_plugin_object_does_not_crash_loading.)
    plugin = types.ModuleType(plugin_name)
    plugin.convengine_register_backends = convengine_register_backends
    return plugin


def load(*plugins):
    return Registry.load(extra_plugins=list(plugins), load_entry_points=False)


def _data(dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, 3, 6, 6)).astype(dtype), rng.standard_normal((4, 3, 3, 3)).astype(dtype)


def _assert_engine_works(registry):
    x, w = _data()
    y = Engine(registry=registry).conv2d(x, w, padding=1)
    np.testing.assert_allclose(y, conv2d_reference(x, w, padding=(1, 1, 1, 1)), rtol=1e-4, atol=1e-4)


# -- built-ins --------------------------------------------------------------------------------


def test_builtins_register_through_the_hook():
    registry = load()
    entries = {e.name: e for e in registry.entries()}
    for name, module in BUILTIN_NAMES.items():
        assert name in entries, f"built-in backend {name} missing"
        assert entries[name].plugin == module
        assert entries[name].backend is not None and entries[name].backend.name == name
        assert module in BUILTIN_PLUGINS
    assert set(BUILTIN_NAMES) <= set(registry.names())
    # registered as ordinary pluggy plugins, under their module names
    plugin_names = {name for name, _ in registry.plugin_manager.list_name_plugin()}
    assert set(BUILTIN_NAMES.values()) <= plugin_names
    for module in BUILTIN_NAMES.values():
        plugin = registry.plugin_manager.get_plugin(module)
        assert plugin is sys.modules[module]
        assert hasattr(plugin.convengine_register_backends, "convengine_impl")


def test_builtins_cpu_backends_are_available():
    registry = load()
    for name in ("naive", "im2col", "fft"):
        assert registry.get(name).available, registry.get(name).unavailable_reason
    cuda = registry.get("cuda")  # available or not, it says why not
    assert cuda.available or isinstance(cuda.unavailable_reason, str) and cuda.unavailable_reason


def test_extra_plugin_backend_registers_after_builtins():
    registry = load(make_plugin("goodplugin", FakeBackend("good")))
    names = registry.names()
    assert names.index("good") > max(names.index(n) for n in BUILTIN_NAMES)
    assert registry.get("good").plugin == "goodplugin"
    assert Engine(registry=registry).explain((1, 3, 6, 6), (4, 3, 3, 3)).chosen == "good"


# -- a plugin whose hook raises ---------------------------------------------------------------


def test_plugin_whose_hook_raises_is_excluded_and_listed(monkeypatch):
    bad = make_plugin("badplugin", FakeBackend("half-registered"), raises=RuntimeError("hook exploded"))
    good = make_plugin("goodplugin", FakeBackend("good"))
    with pytest.warns(PluginWarning, match="badplugin.*hook exploded"):
        registry = load(bad, good)
    # none of the failing plugin's backends is used, not even one registered before the raise
    assert "half-registered" not in registry.names()
    assert "good" in registry.names()
    failed = {e.name: e for e in registry.entries()}["plugin:badplugin"]
    assert failed.backend is None and not failed.available
    assert "convengine_register_backends raised RuntimeError: hook exploded" in failed.unavailable_reason
    with pytest.raises(ValueError, match="failed to load"):
        registry.get("plugin:badplugin")

    # listed by list_backends() with the reason
    monkeypatch.setattr(convengine.core.registry, "_default_registry", registry)
    infos = {info.name: info for info in convengine.list_backends()}
    assert infos["plugin:badplugin"].available is False
    assert "hook exploded" in infos["plugin:badplugin"].reason
    assert infos["plugin:badplugin"].plugin == "badplugin"
    assert infos["good"].available and infos["good"].reason is None
    assert {"naive", "im2col", "fft", "cuda"} <= set(infos)

    # the engine carries on, and explain shows the failed plugin as excluded
    _assert_engine_works(registry)
    decision = Engine(registry=registry).explain((1, 3, 6, 6), (4, 3, 3, 3))
    row = decision.row("plugin:badplugin")
    assert row.status == "excluded" and "hook exploded" in row.reason
    assert decision.chosen == "good"


# -- invalid registrations --------------------------------------------------------------------


class _NoPrepare:
    name = "noprepare"

    def availability(self):
        return None

    def supports(self, problem):
        return None


@pytest.mark.parametrize(
    "bad_object, message",
    [
        (types.SimpleNamespace(availability=lambda: None, supports=lambda p: None, prepare=lambda *a: None),
         "without a string name"),
        (FakeBackend(""), "without a string name"),
        (FakeBackend("naive"), "second backend named 'naive'"),
        (_NoPrepare(), "lacks availability\\(\\)/supports\\(\\)/prepare\\(\\)"),
        (object(), "without a string name"),
    ],
    ids=["nameless", "empty-name", "duplicate-of-builtin", "no-prepare", "plain-object"],
)
def test_invalid_backend_is_rejected_and_the_rest_registers(bad_object, message):
    plugin = make_plugin("mixedplugin", FakeBackend("before"), bad_object, FakeBackend("after"))
    with pytest.warns(PluginWarning, match=message):
        registry = load(plugin)
    assert {"before", "after"} <= set(registry.names())
    assert registry.get("before").plugin == registry.get("after").plugin == "mixedplugin"
    if getattr(bad_object, "name", None) == "naive":  # the built-in keeps its name
        assert registry.get("naive").plugin == "convengine.backends.naive"
    assert "noprepare" not in registry.names()
    assert all(e.backend is not bad_object for e in registry.entries())
    _assert_engine_works(registry)


def test_duplicate_name_within_one_plugin_keeps_the_first():
    first, second = FakeBackend("twin"), FakeBackend("twin")
    with pytest.warns(PluginWarning, match="second backend named 'twin'"):
        registry = load(make_plugin("twins", first, second, FakeBackend("other")))
    assert registry.get("twin").backend is first
    assert "other" in registry.names()


def test_duplicate_name_across_plugins_keeps_the_first_plugin():
    with pytest.warns(PluginWarning, match="first from plugin_a"):
        registry = load(make_plugin("plugin_a", FakeBackend("shared")), make_plugin("plugin_b", FakeBackend("shared")))
    assert registry.get("shared").plugin == "plugin_a"


def test_registering_a_class_instead_of_an_instance_never_breaks_the_engine():
    """A common slip: register(MyBackend). It must be rejected or unusable, never a crash."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = load(make_plugin("slipplugin", _NamedClass))
        x, w = _data()
        y = Engine(registry=registry).conv2d(x, w)
    np.testing.assert_allclose(y, conv2d_reference(x, w), rtol=1e-4, atol=1e-4)
    entries = {e.name: e for e in registry.entries()}
    if "classy" in entries:
        assert not entries["classy"].available
        assert any(issubclass(c.category, PluginWarning) for c in caught)


class _NamedClass(FakeBackend):
    name = "classy"


class _NameRaises(FakeBackend):
    @property
    def name(self):
        raise RuntimeError("name lookup failed")

    @name.setter
    def name(self, value):
        pass


def test_backend_whose_name_property_raises_is_rejected():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = load(make_plugin("nameplugin", _NameRaises("x"), FakeBackend("after")))  # RuntimeError today
    assert "after" in registry.names()
    assert any(issubclass(w.category, PluginWarning) for w in caught)


# -- misbehaving backend methods --------------------------------------------------------------


class _AvailabilityRaises(FakeBackend):
    def availability(self):
        raise OSError("driver probe crashed")


class _SupportsRaises(FakeBackend):
    def supports(self, problem):
        if problem.groups > 1:
            raise ZeroDivisionError("bad groups arithmetic")
        return None


def test_backend_whose_availability_raises_is_unavailable_with_the_reason(monkeypatch):
    registry = load(make_plugin("probeplugin", _AvailabilityRaises("probe")))
    entry = registry.get("probe")
    with pytest.warns(PluginWarning, match="driver probe crashed"):
        reason = entry.unavailable_reason
    assert reason == "availability() raised OSError: driver probe crashed"
    assert entry.available is False
    assert entry.unavailable_reason == reason  # cached: probed once

    monkeypatch.setattr(convengine.core.registry, "_default_registry", registry)
    info = {i.name: i for i in convengine.list_backends()}["probe"]
    assert info.available is False and "driver probe crashed" in info.reason

    decision = Engine(registry=registry).explain((1, 3, 6, 6), (4, 3, 3, 3))
    assert decision.row("probe").status == "excluded"
    assert "not available: availability() raised OSError" in decision.row("probe").reason
    assert decision.chosen != "probe"
    _assert_engine_works(registry)


def test_availability_raising_inside_the_engine_warns_and_excludes():
    registry = load(make_plugin("probeplugin", _AvailabilityRaises("probe")))
    with pytest.warns(PluginWarning, match="driver probe crashed"):
        decision = Engine(registry=registry).explain((1, 3, 6, 6), (4, 3, 3, 3))
    assert decision.row("probe").status == "excluded"


def test_backend_whose_supports_raises_is_excluded_for_that_problem():
    registry = load(make_plugin("supportsplugin", _SupportsRaises("touchy")))
    engine = Engine(registry=registry)
    with pytest.warns(PluginWarning, match="touchy.*supports\\(\\) raised ZeroDivisionError"):
        grouped = engine.explain((1, 4, 6, 6), (4, 2, 3, 3), groups=2)
    row = grouped.row("touchy")
    assert row.status == "excluded"
    assert row.reason == "supports() raised ZeroDivisionError: bad groups arithmetic"
    assert grouped.chosen != "touchy"
    assert "supports() raised ZeroDivisionError" in str(grouped)
    # only that problem: the backend stays available and is chosen for a plain one
    assert registry.get("touchy").available
    assert engine.explain((1, 4, 6, 6), (4, 4, 3, 3)).chosen == "touchy"
    # and the grouped convolution itself still runs, on another backend
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 6, 6)).astype("float32")
    w = rng.standard_normal((4, 2, 3, 3)).astype("float32")
    np.testing.assert_allclose(engine.conv2d(x, w, groups=2), conv2d_reference(x, w, groups=2), rtol=1e-4, atol=1e-4)


# -- third-party plugins through entry points -------------------------------------------------

PLUGIN_MODULE = '''
import numpy as np
import convengine
from convengine.testing.reference import conv2d_reference


class FakeEntryPointBackend(convengine.Backend):
    name = "fake-ep"
    version = "0.1"

    def prepare(self, problem, weight, bias):
        def execute(x):
            return conv2d_reference(x, weight, bias, problem.stride, problem.padding,
                                    problem.dilation, problem.groups).astype(problem.dtype)
        return execute


@convengine.hookimpl
def convengine_register_backends(register):
    register(FakeEntryPointBackend())
'''


def _install_distribution(root, dist, version, entry_points, modules):
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n" + "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    )
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """Two temporary distributions on sys.path: a working plugin and one that fails to import."""
    root = tmp_path / "site"
    root.mkdir()
    _install_distribution(root, "fakeplugin", "0.1", {"fake": "fake_convengine_plugin"},
                          {"fake_convengine_plugin": PLUGIN_MODULE})
    _install_distribution(root, "brokenplugin", "0.1", {"broken": "broken_convengine_plugin"},
                          {"broken_convengine_plugin": "raise ImportError('needs libfoo, which is missing')\n"})
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    for module in ("fake_convengine_plugin", "broken_convengine_plugin"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    yield root
    for module in ("fake_convengine_plugin", "broken_convengine_plugin"):
        sys.modules.pop(module, None)
    importlib.invalidate_caches()


def _load_entry_points():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = Registry.load()
    return registry, [w for w in caught if issubclass(w.category, PluginWarning)]


def test_entry_point_plugin_is_loaded(site):
    registry, _ = _load_entry_points()
    assert "fake-ep" in registry.names()
    entry = registry.get("fake-ep")
    assert entry.plugin == "fake"
    assert entry.available
    assert set(BUILTIN_NAMES) <= set(registry.names())
    x, w = _data()
    y = Engine(registry=registry, policy="fake-ep").conv2d(x, w)
    np.testing.assert_allclose(y, conv2d_reference(x, w), rtol=1e-5, atol=1e-5)


def test_entry_point_whose_module_fails_to_import_is_listed_as_failed(site, monkeypatch):
    registry, plugin_warnings = _load_entry_points()
    entries = {e.name: e for e in registry.entries()}
    failed = entries["plugin:broken"]
    assert failed.backend is None and not failed.available
    assert "plugin failed to import: ImportError: needs libfoo, which is missing" in failed.unavailable_reason
    assert any("broken" in str(w.message) and "libfoo" in str(w.message) for w in plugin_warnings)
    # the working plugin and the built-ins are unaffected
    assert "fake-ep" in registry.names()
    monkeypatch.setattr(convengine.core.registry, "_default_registry", registry)
    infos = {i.name: i for i in convengine.list_backends()}
    assert infos["plugin:broken"].available is False and "libfoo" in infos["plugin:broken"].reason
    _assert_engine_works(registry)


def test_load_entry_points_false_ignores_installed_plugins(site):
    registry = Registry.load(load_entry_points=False)
    assert "fake-ep" not in registry.names()
    assert not any(e.name.startswith("plugin:") for e in registry.entries())


def test_load_plugins_env_empty_loads_none(site, monkeypatch):
    monkeypatch.setenv("CONVENGINE_LOAD_PLUGINS", "")
    registry, plugin_warnings = _load_entry_points()
    assert "fake-ep" not in registry.names()
    assert not any(e.name.startswith("plugin:") for e in registry.entries())
    assert plugin_warnings == []
    assert set(BUILTIN_NAMES) <= set(registry.names())  # built-ins are not third-party plugins


@pytest.mark.parametrize("allowed", ["fake", " fake , ", "fakeplugin", "FakePlugin"])
def test_load_plugins_env_selects_by_entry_point_or_distribution_name(site, monkeypatch, allowed):
    monkeypatch.setenv("CONVENGINE_LOAD_PLUGINS", allowed)
    registry, plugin_warnings = _load_entry_points()
    assert "fake-ep" in registry.names()
    assert "plugin:broken" not in {e.name for e in registry.entries()}  # not allowed, so never imported
    assert "broken_convengine_plugin" not in sys.modules
    assert plugin_warnings == []
    # left out on purpose: recorded as absent (for error messages), not listed as failed
    assert registry.absent["broken"].reason.startswith("was not loaded: CONVENGINE_LOAD_PLUGINS=")


def test_load_plugins_env_with_a_typo_warns_naming_it_at_the_callers_line(site, monkeypatch):
    """Issue 16 (6): a misspelt name silently loaded nothing; now a warning names it and what is installed."""
    monkeypatch.setenv("CONVENGINE_LOAD_PLUGINS", "fake,fakeplugn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = Registry.load()
    assert "fake-ep" in registry.names()
    typo = [w for w in caught if issubclass(w.category, PluginWarning)]
    assert len(typo) == 1, [str(w.message) for w in caught]
    message = str(typo[0].message)
    assert "'fakeplugn'" in message and "'fake'" not in message.split(";")[0]
    assert "fake (fakeplugin)" in message and "broken (brokenplugin)" in message  # what is installed
    assert typo[0].filename == __file__  # the caller's line, not convengine's own files


def test_load_plugins_env_selecting_the_broken_one_records_the_failure(site, monkeypatch):
    monkeypatch.setenv("CONVENGINE_LOAD_PLUGINS", "brokenplugin")
    registry, plugin_warnings = _load_entry_points()
    assert "fake-ep" not in registry.names()
    assert "plugin:broken" in {e.name for e in registry.entries()}
    assert plugin_warnings


# -- plugin objects pluggy cannot hash --------------------------------------------------------

UNHASHABLE_PLUGIN_MODULE = '''
import types
import convengine
from convengine.testing.reference import conv2d_reference


class UnhashableEPBackend(convengine.Backend):
    name = "unhashable-ep"

    def prepare(self, problem, weight, bias):
        return lambda x: conv2d_reference(x, weight, bias, problem.stride, problem.padding,
                                          problem.dilation, problem.groups).astype(problem.dtype)


@convengine.hookimpl
def convengine_register_backends(register):
    register(UnhashableEPBackend())


# The entry point names this object, not the module: a SimpleNamespace defines __eq__ and so
# is unhashable.
plugin = types.SimpleNamespace(convengine_register_backends=convengine_register_backends)
'''



def test_unhashable_entry_point_plugin_object_does_not_crash_loading(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    _install_distribution(root, "unhashableplugin", "0.1", {"unhashable": "unhashable_convengine_plugin:plugin"},
                          {"unhashable_convengine_plugin": UNHASHABLE_PLUGIN_MODULE})
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    monkeypatch.delitem(sys.modules, "unhashable_convengine_plugin", raising=False)
    monkeypatch.setenv("CONVENGINE_LOAD_PLUGINS", "unhashable")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PluginWarning)
            registry = Registry.load()  # raises TypeError today
    finally:
        sys.modules.pop("unhashable_convengine_plugin", None)
    # either its backend works or the plugin is listed as failed; the built-ins are there regardless
    names = {e.name for e in registry.entries()}
    assert "unhashable-ep" in names or "plugin:unhashable" in names
    assert set(BUILTIN_NAMES) <= set(registry.names())


def test_unhashable_extra_plugin_object_does_not_crash_loading():
    @convengine.hookimpl
    def convengine_register_backends(register):
        register(FakeBackend("from-namespace"))

    plugin = types.SimpleNamespace(__name__="nsplugin", convengine_register_backends=convengine_register_backends)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        registry = load(plugin)  # raises TypeError today
    names = {e.name for e in registry.entries()}
    assert "from-namespace" in names or any(n.startswith("plugin:") for n in names)
    assert set(BUILTIN_NAMES) <= set(registry.names())


# -- names of backends whose plugin did not load (issue 16, point 3) ---------------------------


def test_preference_list_naming_a_plugin_that_failed_to_import_falls_back_with_its_failure(site):
    """Before, every call and every explain raised "unknown backend(s) in preference list"."""
    registry, _ = _load_entry_points()
    engine = Engine(policy=["broken", "im2col"], registry=registry)
    decision = engine.explain((1, 3, 6, 6), (4, 3, 3, 3))
    assert decision.chosen == "im2col"
    row = decision.row("broken")
    assert row.status == "excluded"
    assert row.reason == "not registered: its plugin 'broken' failed to import: ImportError: needs libfoo, which is missing"
    assert "its plugin 'broken' failed to import" in str(decision)
    x, w = _data()
    np.testing.assert_allclose(engine.conv2d(x, w), conv2d_reference(x, w), rtol=1e-4, atol=1e-4)


def test_naming_a_backend_whose_plugin_failed_to_import_says_so(site):
    registry, _ = _load_entry_points()
    x, w = _data()
    with pytest.raises(convengine.BackendUnavailableError,
                       match="'broken-conv'.*its plugin 'broken' failed to import: ImportError: needs libfoo") as info:
        Engine(registry=registry).conv2d(x, w, backend="broken-conv")
    assert info.value.backend == "broken-conv" and "needs libfoo" in info.value.reason
    with pytest.raises(ValueError, match="failed to import"):  # still the ValueError it was
        Engine(policy="broken", registry=registry).explain((1, 3, 6, 6), (4, 3, 3, 3))


def test_preference_list_naming_a_plugin_left_out_by_load_plugins_falls_back(site, monkeypatch):
    monkeypatch.setenv("CONVENGINE_LOAD_PLUGINS", "brokenplugin")  # the working plugin is left out
    registry, _ = _load_entry_points()
    assert "fake-ep" not in registry.names()
    decision = Engine(policy=["fake-ep", "naive"], registry=registry).explain((1, 3, 6, 6), (4, 3, 3, 3))
    assert decision.chosen == "naive"
    assert decision.row("fake-ep").reason == ("not registered: its plugin 'fake' was not loaded: "
                                              "CONVENGINE_LOAD_PLUGINS='brokenplugin' does not name it")
    with pytest.raises(convengine.BackendUnavailableError, match="CONVENGINE_LOAD_PLUGINS='brokenplugin' does not name it"):
        Engine(registry=registry).explain((1, 3, 6, 6), (4, 3, 3, 3), backend="fake-ep")


def test_a_typo_in_a_preference_list_still_raises_when_every_plugin_loaded():
    registry = load()
    with pytest.raises(convengine.BackendUnavailableError, match="unknown backend.*im2coll"):
        Engine(policy=["im2coll", "naive"], registry=registry).explain((1, 3, 6, 6), (4, 3, 3, 3))
