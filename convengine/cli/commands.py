"""The registry of ``convengine`` sub-commands.

Each sub-command is a function decorated with :func:`command`, which registers its name,
help and argument setup; adding one is a new decorated function, nothing else.
"""

from __future__ import annotations

import argparse
from typing import Callable

COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = []


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    """Register ``fn(args) -> exit code`` as ``convengine NAME``."""

    def decorate(fn: Callable[[argparse.Namespace], int]):
        COMMANDS.append((name, help, arguments, fn))
        return fn

    return decorate
