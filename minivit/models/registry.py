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
