"""Range checks shared by the config dataclasses' ``__post_init__`` (one message format everywhere).

Comparisons are written so that NaN fails them (``not (value > 0)``), and infinities are rejected as well:
no range check lets a non-finite number through.
"""

from __future__ import annotations

import math


def _finite(value: object) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def positive(config: object, *names: str) -> None:
    """Raise ``ValueError("<name> must be > 0, got <value>")`` for the first field that is not a finite
    number > 0."""
    for name in names:
        value = getattr(config, name)
        if not (value > 0 and _finite(value)):
            raise ValueError(f"{name} must be > 0, got {value}")


def at_least(config: object, minimum: int, *names: str) -> None:
    """Raise ``ValueError("<name> must be >= <minimum>, got <value>")`` for the first field below it (or
    not a finite number)."""
    for name in names:
        value = getattr(config, name)
        if not (value >= minimum and _finite(value)):
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


def at_most(config: object, maximum: int, *names: str) -> None:
    """Raise ``ValueError("<name> must be <= <maximum>, got <value>")`` for the first field above it."""
    for name in names:
        value = getattr(config, name)
        if value is not None and not (value <= maximum):
            raise ValueError(f"{name} must be <= {maximum}, got {value}")
