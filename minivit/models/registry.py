"""Model registry: ``create_model(name, num_classes=...)`` and ``list_models()``.

Each model file registers its named configurations with ``@register_model``; the
registry is what the CLI, the benchmarks and the tests use to build a model by name.
"""
from __future__ import annotations

from typing import Callable

_MODELS: dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    """Register a model constructor under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models (optionally only those containing ``pattern``)."""
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or pattern in n]


def create_model(name: str, num_classes: int = 1000, **overrides):
    """Build a registered model: ``create_model("vit_cifar", num_classes=10)``.

    ``overrides`` replace entries of the named configuration (``depth=2``, ``drop_path_rate=0.1``).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, **overrides)
