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


class set_grad_enabled(_GradMode):  # noqa: N801 (PyTorch's name)
    """Switch grad recording on or off: as a call it takes effect at once and stays
    (``minivit.set_grad_enabled(False)``); as a context manager or decorator it restores the
    previous mode on exit (``with minivit.set_grad_enabled(is_train): ...``)."""

    def __init__(self, mode: bool):
        global _enabled
        super().__init__(bool(mode))
        self._prev.append(_enabled)   # what __exit__ restores if used as a bare call
        _enabled = self.enabled

    def __enter__(self):  # already switched in __init__
        return self

    def __exit__(self, *exc):
        global _enabled
        _enabled = self._prev.pop() if self._prev else _enabled
        return False

    def __call__(self, fn):  # as a decorator: switch around each call, not at decoration
        global _enabled
        _enabled = self._prev.pop()  # undo the switch __init__ made
        return _GradMode(self.enabled)(fn)


def inference_mode(mode: bool = True):
    """PyTorch's ``inference_mode``: here the same as ``no_grad()`` (``mode=False``: record)."""
    return _GradMode(not mode)
