"""Reading operator settings from environment variables, with errors that name the variable."""

from __future__ import annotations

import os


def positive_int(name: str, default: int) -> int:
    """``int(os.environ[name])`` when set and non-empty, else ``default``; must be positive."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value
