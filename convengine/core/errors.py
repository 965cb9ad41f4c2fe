"""What a caller sees when a backend cannot run their call: one exception family, one warning.

Every error meaning "the backend I named (or every backend my policy allows) cannot run
this" is a :class:`BackendError`, and says why in its message (the same text is in
``exc.reason``)::

    BackendError (RuntimeError)
    ├── BackendUnavailableError (also a ValueError)  not usable here at all
    │   └── BackendDeclinedError                     usable, but refuses this problem
    └── BackendFailedError                           ran, and raised or broke its contract

* **unavailable**: no backend of that name is registered (its plugin failed to import, or
  ``CONVENGINE_LOAD_PLUGINS`` left it out, or the name is misspelt), it is not available on
  this machine (``availability()`` gave a reason), or it was excluded earlier in this
  process after failing; also raised when no backend a policy allows can run the problem.
* **declined**: available, but ``supports()`` gave a reason for this problem, or the accuracy
  budget (``max_rel_error``) excludes it. A declined backend is unavailable *for this
  problem*, hence the subclass: code that catches :class:`BackendUnavailableError` (all that
  earlier versions raised for these cases) still catches it.
* **failed**: it was run and ``prepare()``/``execute()`` raised, or its output had the wrong
  shape or dtype. It is excluded for the rest of the process: the next call naming it gets a
  :class:`BackendUnavailableError` giving this failure as the reason.

When the caller did not name a backend, none of these reach them: the engine falls back to
the next choice and reports the misbehaving backend with a :class:`PluginWarning`.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Optional


class BackendError(RuntimeError):
    """The backend the call asked for (``backend``; ``None`` for a whole policy) cannot run it; ``reason`` says why."""

    def __init__(self, message: str, *, backend: Optional[str] = None, reason: Optional[str] = None):
        super().__init__(message)
        self.backend = backend
        self.reason = message if reason is None else reason

    def __reduce__(self):  # keyword-only arguments survive pickling (Dask workers send errors back)
        return _rebuild, (type(self), str(self), self.backend, self.reason)


def _rebuild(cls, message, backend, reason):
    return cls(message, backend=backend, reason=reason)


class BackendUnavailableError(BackendError, ValueError):
    """Not usable for this call: not registered (plugin not loaded, or no such name), not available on
    this machine, excluded after an earlier failure, or no backend the policy allows can run the problem."""


class BackendDeclinedError(BackendUnavailableError):
    """Available, but it refuses this problem: ``supports()`` gave a reason, or the accuracy budget excludes it."""


class BackendFailedError(BackendError):
    """It ran and raised, or returned an output of the wrong shape or dtype; it is now excluded in this process."""


class PluginWarning(UserWarning):
    """A plugin or backend misbehaved and was excluded; the engine carries on without it."""


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def warn(message: str, category: type[Warning] = PluginWarning) -> None:
    """Issue a warning attributed to the first frame outside convengine: the caller's own line.

    A fixed ``stacklevel`` cannot do that here: the same warning is reached through different
    depths of convengine code (a first call builds the registry, a later one does not).
    """
    frame = sys._getframe(1)
    while frame.f_back is not None and (frame.f_code.co_filename.startswith(_PACKAGE_DIR)
                                        or "importlib._bootstrap" in frame.f_code.co_filename):
        frame = frame.f_back
    module_globals = frame.f_globals
    warnings.warn_explicit(message, category, frame.f_code.co_filename, frame.f_lineno,
                           module=module_globals.get("__name__"),
                           registry=module_globals.setdefault("__warningregistry__", {}))
