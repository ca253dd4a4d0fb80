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


def check_hparams(cls: type, args: dict) -> None:
    """Refuse a constructor argument of the wrong kind by name, before it fails deep inside
    (``embed_dim=0`` as a ZeroDivisionError, ``qkv_bias="maybe"`` silently true). Called as
    ``check_hparams(VisionTransformer, locals())`` first thing in a model's ``__init__``; what
    is expected follows from the argument's name and default value:

    - a bool default: ``True`` or ``False``;
    - a name ending in ``rate``: a number in [0, 1);
    - a number default, a tuple of numbers, or ``None``: numbers > 0 (one, or a list),
      integers where the default is one (``num_classes`` may be 0: no head), or ``None``
      where that is the default or the annotation allows it.
    """
    import inspect
    import math

    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or name not in args:
            continue
        default, value = param.default, args[name]
        text = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."

        def refuse(expected):
            raise ValueError(f"{cls.__name__}: {name} must be {expected}, got {text}")

        def number(v, integer):
            return (isinstance(v, int) or (not integer and isinstance(v, float))) \
                and not isinstance(v, bool) and math.isfinite(v)

        if isinstance(default, bool):
            if not isinstance(value, bool):
                refuse("True or False")
        elif name.endswith("rate"):
            if not (number(value, False) and 0 <= value < 1):
                refuse("a number in [0, 1)")
        elif default is None or isinstance(default, (int, float)) or (
                isinstance(default, tuple) and default and all(
                    isinstance(d, (int, float)) and not isinstance(d, bool) for d in default)):
            if value is None and (default is None or "None" in str(param.annotation)):
                continue
            kinds = default if isinstance(default, tuple) else (default,)
            integer = all(d is None or isinstance(d, int) for d in kinds)
            values = value if isinstance(value, (tuple, list)) and value else (value,)
            low = 0 if name == "num_classes" else 1
            if not all(number(v, integer) and (v >= low if integer else v > 0) for v in values):
                refuse(f"an integer >= {low} (or a list of them)" if integer
                       else "a number > 0 (or a list of them)")
