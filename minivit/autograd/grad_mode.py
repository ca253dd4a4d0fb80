"""``no_grad``: a switch that stops the engine from recording the graph."""
from __future__ import annotations

import contextlib

_enabled = True


def is_grad_enabled() -> bool:
    return _enabled


class _GradMode(contextlib.ContextDecorator):
    """Context manager and decorator that sets grad recording on or off, then restores it."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._prev: list[bool] = []

    def __enter__(self):
        global _enabled
        self._prev.append(_enabled)
        _enabled = self.enabled
        return self

    def __exit__(self, *exc):
        global _enabled
        _enabled = self._prev.pop()
        return False


def no_grad():
    """Record nothing inside: ``with minivit.no_grad(): y = model(x)`` (also a decorator)."""
    return _GradMode(False)


def enable_grad():
    """Record the graph again inside a ``no_grad`` region."""
    return _GradMode(True)
