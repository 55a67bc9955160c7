"""Range checks shared by the config dataclasses' ``__post_init__`` (one message format everywhere)."""

from __future__ import annotations


def positive(config: object, *names: str) -> None:
    """Raise ``ValueError("<name> must be > 0, got <value>")`` for the first field that is not > 0."""
    for name in names:
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(config, name)}")


def at_least(config: object, minimum: int, *names: str) -> None:
    """Raise ``ValueError("<name> must be >= <minimum>, got <value>")`` for the first field below it."""
    for name in names:
        if getattr(config, name) < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {getattr(config, name)}")
