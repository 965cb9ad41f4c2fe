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
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional

import pluggy

from . import hookspecs
from .contract import Backend

ENTRY_POINT_GROUP = "convengine"
BUILTIN_PLUGINS = (
    "convengine.backends.naive",
    "convengine.backends.im2col",
    "convengine.backends.direct",
    "convengine.backends.fft",
    "convengine.backends.cuda",
)


class PluginWarning(UserWarning):
    """A plugin or backend misbehaved and was excluded; the engine carries on without it."""


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
                warnings.warn(f"backend {self.name!r} ({self.plugin}): {reason}", PluginWarning, stacklevel=2)
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
            warnings.warn(f"backend {self.name!r} ({self.plugin}): reading {attr} raised {type(exc).__name__}: {exc}",
                          PluginWarning, stacklevel=3)
            return "?"


class Registry:
    """Every backend the plugins registered, by name, plus the plugins that failed."""

    def __init__(self, plugin_manager: pluggy.PluginManager, load_failures: Optional[dict[str, str]] = None):
        self.plugin_manager = plugin_manager
        self._entries: dict[str, BackendEntry] = {}
        self._lock = threading.Lock()
        self._collect()
        for name, reason in (load_failures or {}).items():
            self._record_failed_plugin(name, reason)

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
                self._record_failed_plugin(impl.plugin_name, f"convengine_register_backends raised {type(exc).__name__}: {exc}")
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
            warnings.warn(problem + "; ignored", PluginWarning, stacklevel=3)
            return
        self._entries[name] = BackendEntry(name=name, plugin=plugin_name, backend=backend)  # type: ignore[arg-type]

    def _record_failed_plugin(self, plugin_name: str, reason: str) -> None:
        warnings.warn(f"plugin {plugin_name!r} excluded: {reason}", PluginWarning, stacklevel=3)
        key = f"plugin:{plugin_name}"
        self._entries[key] = BackendEntry(name=key, plugin=plugin_name, backend=None, broken=f"plugin failed: {reason}")

    # -- queries ---------------------------------------------------------------------------
    def entries(self) -> list[BackendEntry]:
        return list(self._entries.values())

    def names(self) -> list[str]:
        return [e.name for e in self._entries.values() if e.backend is not None]

    def get(self, name: str) -> BackendEntry:
        try:
            entry = self._entries[name]
        except KeyError:
            raise ValueError(f"unknown backend {name!r}; registered backends: {', '.join(self.names()) or 'none'}") from None
        if entry.backend is None:
            raise ValueError(f"{name!r} is a plugin that failed to load: {entry.broken}")
        return entry

    def mark_broken(self, name: str, reason: str) -> None:
        """Exclude a backend for the rest of this process after it misbehaved."""
        with self._lock:
            entry = self._entries[name]
            if entry.broken is None:
                entry.broken = reason
                warnings.warn(f"backend {name!r} ({entry.plugin}) excluded: {reason}", PluginWarning, stacklevel=3)


def _normalize(name: str) -> str:
    """Distribution names compare as pip compares them: case- and ``-_.``-insensitive."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _allowed_plugins() -> Optional[set[str]]:
    raw = os.environ.get("CONVENGINE_LOAD_PLUGINS")
    if raw is None:
        return None
    return {_normalize(part.strip()) for part in raw.split(",") if part.strip()}


def create_plugin_manager(
    extra_plugins: Iterable[object] = (), load_entry_points: bool = True, builtins: bool = True
) -> tuple[pluggy.PluginManager, dict[str, str]]:
    """A plugin manager with the built-ins, the allowed entry-point plugins and ``extra_plugins``.

    Returns the manager and ``{plugin: reason}`` for plugins that failed to load: a failure
    is recorded (and later listed by ``list_backends``) instead of raised.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    failures: dict[str, str] = {}
    for module_name in BUILTIN_PLUGINS if builtins else ():
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points:
        allowed = _allowed_plugins()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist_name = _normalize(ep.dist.name) if ep.dist is not None else None
            if allowed is not None and _normalize(ep.name) not in allowed and dist_name not in allowed:
                continue
            try:
                pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
            except Exception as exc:
                failures[ep.name] = f"import failed: {type(exc).__name__}: {exc}"
    for plugin in extra_plugins:
        try:
            pm.register(plugin)
        except Exception as exc:
            failures[repr(plugin)] = f"registration failed: {type(exc).__name__}: {exc}"
    return pm, failures


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

    name: str
    device: str
    available: bool
    reason: Optional[str]
    numerical_class: str
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
