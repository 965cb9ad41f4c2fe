"""The plugin manager: finds plugins, collects their backends, contains their failures.

This module and :mod:`convengine.core.hookspecs` are the only places that know about pluggy.
Built-in backends are hookimpl modules listed in :data:`BUILTIN_PLUGINS`; third-party
ones arrive through the ``convengine`` entry-point group. Both go through the same
``convengine_register_backends`` hook.

Operators can limit third-party plugins with ``CONVENGINE_LOAD_PLUGINS``: a
comma-separated list of entry-point or distribution names to load (empty: none).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import threading
from dataclasses import dataclass
from typing import Iterable, Optional

import pluggy

from . import hookspecs
from .contract import Backend
from .errors import BackendUnavailableError, PluginWarning, warn  # noqa: F401  (PluginWarning: its old home)

ENTRY_POINT_GROUP = "convengine"
BUILTIN_PLUGINS = (
    "convengine.backends.naive",
    "convengine.backends.im2col",
    "convengine.backends.direct",
    "convengine.backends.grouped",
    "convengine.backends.winograd",
    "convengine.backends.fft",
    "convengine.backends.cuda",
)


@dataclass(frozen=True)
class AbsentPlugin:
    """A third-party plugin whose backends are not registered, and why (failed, or not loaded)."""

    name: str  # entry-point name (or the plugin's name in the plugin manager)
    distribution: Optional[str]  # the installed package providing it, when known
    reason: str  # "failed to import: ImportError: ...", "was not loaded: CONVENGINE_LOAD_PLUGINS=...", ...

    @property
    def failed(self) -> bool:
        """It was tried and broke (as opposed to left out by ``CONVENGINE_LOAD_PLUGINS``)."""
        return not self.reason.startswith("was not loaded")

    def may_provide(self, backend_name: str) -> bool:
        """Whether ``backend_name`` looks like one of its backends: it starts with the plugin's entry-point
        or distribution name (``convengine-`` prefix dropped), as ``winograd4`` does with ``winograd``.

        Only a guess (a plugin's backend names are known once it loads), used to word error messages.
        """
        names = {_normalize(self.name)}
        if self.distribution:
            names |= {_normalize(self.distribution), _normalize(self.distribution).removeprefix("convengine-")}
        wanted = _normalize(backend_name)
        return any(name and wanted.startswith(name) for name in names)


@dataclass
class BackendEntry:
    """A registered backend and what is known about its health in this process."""

    name: str
    plugin: str
    backend: Optional[Backend]
    broken: Optional[str] = None  # why it must not be used (failed plugin, misbehaviour at run time)
    _availability: Optional[tuple[Optional[str]]] = None

    @property
    def unavailable_reason(self) -> Optional[str]:
        """``None`` when usable on this machine, else why not (broken, or not available)."""
        if self.broken:
            return self.broken
        if self._availability is None:
            try:
                reason = self.backend.availability()
            except Exception as exc:  # a plugin's probe must not take the engine down
                reason = f"availability() raised {type(exc).__name__}: {exc}"
                warn(f"backend {self.name!r} ({self.plugin}): {reason}")
            self._availability = (reason if reason is None else str(reason),)
        return self._availability[0]

    @property
    def available(self) -> bool:
        return self.unavailable_reason is None

    def attribute(self, attr: str) -> str:
        """A declared attribute (``device``, ``numerical_class``) as text, ``"?"`` if reading it fails.

        Plugins may compute these lazily (a ``device`` property probing for a GPU), so a read
        can raise; it must not take the engine down.
        """
        if self.backend is None:  # a plugin that failed to load
            return "-"
        try:
            return str(getattr(self.backend, attr))
        except Exception as exc:
            warn(f"backend {self.name!r} ({self.plugin}): reading {attr} raised {type(exc).__name__}: {exc}")
            return "?"


class Registry:
    """Every backend the plugins registered, by name, plus the plugins that failed or were left out.

    ``absent`` lists the third-party plugins whose backends are missing, by plugin name: those
    that failed (also listed as ``plugin:NAME`` entries) and those ``CONVENGINE_LOAD_PLUGINS``
    left out. Selection uses it to say why a requested name is not registered.
    """

    def __init__(self, plugin_manager: pluggy.PluginManager, absent: Iterable[AbsentPlugin] = ()):
        self.plugin_manager = plugin_manager
        self._entries: dict[str, BackendEntry] = {}
        self.absent: dict[str, AbsentPlugin] = {}
        self._lock = threading.Lock()
        self._collect()
        for plugin in absent:
            self._record_absent_plugin(plugin)

    @classmethod
    def load(cls, extra_plugins: Iterable[object] = (), load_entry_points: bool = True,
             builtins: bool = True) -> "Registry":
        """Built-ins, the allowed entry-point plugins and ``extra_plugins`` (tests use this)."""
        return cls(*create_plugin_manager(extra_plugins, load_entry_points, builtins))

    # -- collection ------------------------------------------------------------------------
    def _collect(self) -> None:
        # Each plugin's implementation is called on its own, so that one raising cannot stop
        # the others (a single pluggy hook call stops at the first exception). get_hookimpls()
        # lists them in registration order: built-ins first.
        hook = self.plugin_manager.hook.convengine_register_backends
        for impl in hook.get_hookimpls():
            collected: list[Backend] = []
            offered = {"register": lambda backend, _into=collected: _into.append(backend)}
            try:
                impl.function(**{arg: offered[arg] for arg in impl.argnames})
            except Exception as exc:
                self._record_absent_plugin(AbsentPlugin(
                    impl.plugin_name, None, f"failed: convengine_register_backends raised {type(exc).__name__}: {exc}"))
                continue
            for backend in collected:
                self._add(backend, impl.plugin_name)

    def _add(self, backend: object, plugin_name: str) -> None:
        try:
            name = getattr(backend, "name", None)
        except Exception as exc:
            name = None
            problem = f"plugin {plugin_name}: reading the backend's name raised {type(exc).__name__}: {exc}"
        else:
            problem = None
        if problem:
            pass
        elif isinstance(backend, type):
            problem = f"plugin {plugin_name} registered the class {backend.__name__}, not an instance of it"
        elif not isinstance(name, str) or not name:
            problem = f"plugin {plugin_name} registered {backend!r} without a string name"
        elif name in self._entries:
            problem = f"plugin {plugin_name} registered a second backend named {name!r} (first from {self._entries[name].plugin})"
        elif not all(callable(getattr(backend, m, None)) for m in ("availability", "supports", "prepare")):
            problem = f"plugin {plugin_name}: backend {name!r} lacks availability()/supports()/prepare()"
        if problem:
            warn(problem + "; ignored")
            return
        self._entries[name] = BackendEntry(name=name, plugin=plugin_name, backend=backend)  # type: ignore[arg-type]

    def _record_absent_plugin(self, plugin: AbsentPlugin) -> None:
        self.absent[plugin.name] = plugin
        if not plugin.failed:  # left out on purpose: nothing to warn about, nothing to list
            return
        warn(f"plugin {plugin.name!r} excluded: {plugin.reason}")
        key = f"plugin:{plugin.name}"
        self._entries[key] = BackendEntry(name=key, plugin=plugin.name, backend=None, broken=f"plugin {plugin.reason}")

    # -- queries ---------------------------------------------------------------------------
    def entries(self) -> list[BackendEntry]:
        return list(self._entries.values())

    def names(self) -> list[str]:
        return [e.name for e in self._entries.values() if e.backend is not None]

    def get(self, name: str) -> BackendEntry:
        """The entry of a registered backend; :class:`BackendUnavailableError` saying why for any other name."""
        try:
            entry = self._entries[name]
        except KeyError:
            reason = self.why_not_registered(name)
            raise BackendUnavailableError(f"backend {name!r} is not registered: {reason}; registered backends: "
                                          f"{', '.join(self.names()) or 'none'}", backend=name, reason=reason) from None
        if entry.backend is None:
            raise BackendUnavailableError(f"{name!r} is a plugin that failed to load: {entry.broken}",
                                          backend=name, reason=entry.broken)
        return entry

    def why_not_registered(self, name: str) -> str:
        """Why no backend is registered as ``name``: the plugin that did not load and may have provided it
        (its failure, or ``CONVENGINE_LOAD_PLUGINS``), else every plugin that did not load, else a plain "no such name"."""
        likely = [p for p in self.absent.values() if p.may_provide(name)]
        if likely:
            return "; ".join(f"its plugin {p.name!r} {p.reason}" for p in likely)
        if self.absent:
            return ("no registered backend has this name; it may come from a plugin that did not load: "
                    + "; ".join(f"{p.name!r} {p.reason}" for p in self.absent.values()))
        return "no registered backend has this name"

    def mark_broken(self, name: str, reason: str) -> None:
        """Exclude a backend for the rest of this process after it misbehaved."""
        with self._lock:
            entry = self._entries[name]
            if entry.broken is None:
                entry.broken = reason
                warn(f"backend {name!r} ({entry.plugin}) excluded: {reason}")


def _normalize(name: str) -> str:
    """Distribution names compare as pip compares them: case- and ``-_.``-insensitive."""
    return re.sub(r"[-_.]+", "-", name).lower()


ENV_LOAD_PLUGINS = "CONVENGINE_LOAD_PLUGINS"


def _allowed_plugins() -> Optional[dict[str, str]]:
    """``{normalised name: name as written}`` of ``CONVENGINE_LOAD_PLUGINS``; ``None`` when unset (load all)."""
    raw = os.environ.get(ENV_LOAD_PLUGINS)
    if raw is None:
        return None
    return {_normalize(part.strip()): part.strip() for part in raw.split(",") if part.strip()}


def create_plugin_manager(
    extra_plugins: Iterable[object] = (), load_entry_points: bool = True, builtins: bool = True
) -> tuple[pluggy.PluginManager, list[AbsentPlugin]]:
    """A plugin manager with the built-ins, the allowed entry-point plugins and ``extra_plugins``.

    Returns the manager and the plugins that are not in it: those that failed to load (a
    failure is recorded, and later listed by ``list_backends``, instead of raised) and those
    ``CONVENGINE_LOAD_PLUGINS`` left out. A name in that variable that no installed plugin
    has is a :class:`PluginWarning`: a typo would otherwise silently load nothing.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    absent: list[AbsentPlugin] = []
    for module_name in BUILTIN_PLUGINS if builtins else ():
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points:
        allowed = _allowed_plugins()
        installed: dict[str, str] = {}  # normalised entry-point and distribution names -> "entry point (distribution)"
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else None
            names = {_normalize(ep.name)} | ({_normalize(dist)} if dist else set())
            installed.update(dict.fromkeys(names, f"{ep.name} ({dist})" if dist else ep.name))
            if allowed is not None and not names & set(allowed):
                absent.append(AbsentPlugin(ep.name, dist, f"was not loaded: {ENV_LOAD_PLUGINS}="
                                                          f"{os.environ.get(ENV_LOAD_PLUGINS, '')!r} does not name it"))
                continue
            try:
                pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
            except Exception as exc:
                absent.append(AbsentPlugin(ep.name, dist, f"failed to import: {type(exc).__name__}: {exc}"))
        unknown = [written for name, written in (allowed or {}).items() if name not in installed]
        if unknown:
            warn(f"{ENV_LOAD_PLUGINS} names {', '.join(map(repr, unknown))}, which no installed plugin has as its "
                 f"entry-point or distribution name; installed plugins: {', '.join(sorted(set(installed.values()))) or 'none'}")
    for plugin in extra_plugins:
        try:
            pm.register(plugin)
        except Exception as exc:
            absent.append(AbsentPlugin(repr(plugin), None, f"failed to register: {type(exc).__name__}: {exc}"))
    return pm, absent


_default_registry: Optional[Registry] = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The process-wide registry, built on first use so that ``import convengine`` stays cheap."""
    global _default_registry
    with _default_lock:
        if _default_registry is None:
            _default_registry = Registry.load()
        return _default_registry


@dataclass(frozen=True)
class BackendInfo:
    """A registered backend as ``list_backends`` reports it."""

    #: The backend's name; ``plugin:NAME`` for a plugin that failed to load.
    name: str
    #: ``"cpu"`` or ``"cuda"`` (``"-"`` for a failed plugin, ``"?"`` if reading it raised).
    device: str
    #: Usable in this process: available on this machine and not excluded after misbehaving.
    available: bool
    #: Why not (``None`` when available): ``availability()``'s answer, the plugin's import error, or
    #: the failure that excluded it ("prepare() raised RuntimeError: ...").
    reason: Optional[str]
    #: ``"exact"`` or ``"lossy"``.
    numerical_class: str
    #: The plugin that registered it: the entry-point name, or the module of a built-in.
    plugin: str


def list_backends() -> list[BackendInfo]:
    """Every registered backend (and every plugin that failed to load) with its availability."""
    infos = []
    for entry in default_registry().entries():
        backend = entry.backend
        infos.append(BackendInfo(
            name=entry.name,
            device=str(getattr(backend, "device", "?")),
            available=entry.available,
            reason=entry.unavailable_reason,
            numerical_class=str(getattr(backend, "numerical_class", "?")),
            plugin=entry.plugin,
        ))
    return infos
