"""Old module paths of the flat layout (before the layered packages), kept importable.

``import convengine.threads`` and the like still work and give the module at its new home,
with a :class:`DeprecationWarning` naming it: plugins written against the old layout keep
running while their authors move to the new names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "convengine.environment": "convengine.runtime.environment",
    "convengine.threads": "convengine.runtime.threads",
    "convengine.hardware": "convengine.runtime.hardware",
    "convengine.workspace": "convengine.runtime.workspace",
    "convengine.precompile": "convengine.runtime.precompile",
    "convengine.launch_probe": "convengine.runtime.probes",
    "convengine.problem": "convengine.core.problem",
    "convengine.epilogue": "convengine.core.epilogue",
    "convengine.backend": "convengine.core.contract",
    "convengine.hookspecs": "convengine.core.hookspecs",
    "convengine.plugins": "convengine.core.registry",
    "convengine.selection": "convengine.core.selection",
    "convengine.costmodel": "convengine.core.costmodel",
    "convengine.tuning": "convengine.core.tuning",
    "convengine.tuning_cache": "convengine.core.tuning_cache",
    "convengine.engine": "convengine.core.engine",
    "convengine.layers": "convengine.bench.catalogue",
    "convengine.cli_bench": "convengine.cli.bench",
    "convengine.cli_models": "convengine.cli.models",
    "convengine.graph.onnx_import": "convengine.graph.onnx",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new_name: str):
        self.new_name = new_name

    def create_module(self, spec):
        return importlib.import_module(self.new_name)

    def exec_module(self, module):
        pass  # already executed under its new name


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds an old ``convengine.X`` path and hands out the module that lives at its new one."""

    def find_spec(self, fullname, path=None, target=None):
        new_name = MOVED.get(fullname)
        if new_name is None:
            return None
        warnings.warn(f"{fullname} moved to {new_name}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new_name))


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
