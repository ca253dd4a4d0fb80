"""Model registry, shaped like timm's: ``create_model(name, ...)`` and ``list_models(filter)``.

Each model file registers its named configurations with ``@register_model``; the
registry is what the CLI, the benchmarks and the tests use to build a model by name.

    create_model("vit_cifar")                              # 10 classes: the CIFAR default
    create_model("vit_tiny_patch16_224", num_classes=10, checkpoint_path="vit_tiny.safetensors")
    list_models("*cifar")                                  # fnmatch wildcards, as timm
"""
from __future__ import annotations

import fnmatch
import os
from typing import Callable

_MODELS: dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    """Register a model constructor under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def _matches(name: str, pattern: str) -> bool:
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name   # no wildcard: a substring, so list_models("vit") finds vit_cifar


def list_models(filter: str | list[str] = "", exclude_filters: str | list[str] = "",  # noqa: A002
                pretrained: bool = False) -> list[str]:
    """Sorted names of the registered models, as timm's ``list_models``.

    ``filter``: an ``fnmatch`` pattern (``"vit*"``, ``"*_cifar"``) or a list of them; a pattern
    without wildcards matches as a substring. ``exclude_filters``: names to leave out, the
    same way. ``pretrained=True`` lists models with downloadable weights: minivit downloads
    none, so the list is empty.
    """
    if pretrained:
        return []
    include = [filter] if isinstance(filter, str) else list(filter)
    exclude = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    return [n for n in sorted(_MODELS)
            if (not any(include) or any(_matches(n, p) for p in include if p))
            and not any(_matches(n, p) for p in exclude if p)]


def create_model(model_name: str, pretrained: bool = False,
                 checkpoint_path: str | os.PathLike | None = None, **kwargs):
    """Build a registered model, as timm's ``create_model``.

    ``num_classes`` defaults to the configuration's own: 10 for the CIFAR ones, 1000 for the
    ImageNet ones. Other keyword arguments replace entries of the named configuration
    (``depth=2``, ``drop_path_rate=0.1``). ``checkpoint_path``: a ``.safetensors`` or ``.npz``
    state dict with timm's parameter names (or a minivit checkpoint) loaded strictly.
    ``pretrained=True`` is refused: minivit downloads nothing; download the weights yourself
    and pass the file as ``checkpoint_path``.

    >>> model = create_model("vit_cifar")                 # model.head: Linear(192 -> 10)
    """
    if model_name not in _MODELS:
        raise ValueError(f"unknown model {model_name!r}; known models: {', '.join(list_models())}")
    if pretrained:
        raise ValueError(f"create_model({model_name!r}, pretrained=True): minivit downloads no "
                         f"weights; download them yourself (e.g. timm's model.safetensors from "
                         f"the Hugging Face Hub) and pass checkpoint_path=FILE")
    if kwargs.get("num_classes", 0) is None:
        del kwargs["num_classes"]
    model = _MODELS[model_name](**kwargs)
    if checkpoint_path:
        from ..weights import load_into  # noqa: PLC0415

        load_into(model, checkpoint_path, f"model {model_name} with {model.num_classes} classes")
    return model


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
