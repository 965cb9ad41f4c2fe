"""The hooks through which plugins extend convengine.

Every hook name starts with ``convengine_``; the plugin manager ignores other names.
Built-in backends implement these hooks exactly as a third-party package does, so the
house's own code has no back door that a plugin author lacks.

Plugins mark their implementations with :data:`convengine.hookimpl` and are found
through the ``convengine`` entry-point group::

    [project.entry-points.convengine]
    my_backend = "my_package.plugin"
"""

import pluggy

PROJECT_NAME = "convengine"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Decorator marking a plugin's hook implementation: ``@convengine.hookimpl`` above
#: ``def convengine_register_backends(register)``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -------------------------------------------------------------------------------------
# Registration (called once, when the engine first needs its backends)
# -------------------------------------------------------------------------------------


@hookspec
def convengine_register_backends(register):
    """Contribute convolution backends.

    :param register: a callable; call ``register(backend)`` once for each backend this
        plugin provides. ``backend`` is an object following :class:`convengine.Backend`
        (subclassing it is easiest). The host validates it: a backend without a name,
        with a name already taken, or of the wrong kind is rejected with a warning, and
        the rest of the plugin's backends still register.

    The return value is ignored (``None`` is fine). Do expensive probing (GPU
    detection, library imports) lazily in ``Backend.availability()`` or
    ``Backend.prepare()``, not here: this hook runs at start-up for every command.

    If this hook raises, none of the plugin's backends are used: the error is reported as
    a warning and in ``convengine.list_backends()``, and the engine carries on without it.
    """
