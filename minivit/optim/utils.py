"""Helpers around the optimizers: gradient clipping and timm-style weight-decay groups."""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable

from ..autograd.backend import get_array_module
from ..autograd.tensor import Tensor
from .optimizer import grad_array

# Parameters that never get weight decay, besides every 1-D (norm scales, biases) or 0-D one.
# Matched on the last component of the dotted name (``blocks.0.attn.relative_position_bias_table``
# -> ``relative_position_bias_table``): tokens (cls_token, dist_token, reg_token), absolute
# position embeddings (pos_embed) and relative position tables (timm MaxViT
# ``relative_position_bias_table``, BoTNet ``height_rel``/``width_rel``, ``rel_height``/``rel_width``).
NO_DECAY_SUFFIXES = ("token", "pos_embed")
NO_DECAY_SUBSTRINGS = ("relative_position",)
NO_DECAY_REL_NAMES = ("height_rel", "width_rel", "rel_height", "rel_width")


def _no_decay_by_name(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return (last.endswith(NO_DECAY_SUFFIXES) or any(s in last for s in NO_DECAY_SUBSTRINGS)
            or last in NO_DECAY_REL_NAMES)


def param_groups_weight_decay(model, weight_decay: float = 1e-5,
                              no_weight_decay_list: Iterable[str] = ()) -> list[dict]:
    """Two parameter groups, as timm's ``param_groups_weight_decay``:
    ``[{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]``.

    No decay for: parameters with ``ndim <= 1`` (norm weights, biases), names whose last
    component ends with ``token`` or ``pos_embed`` or is a relative position table, names the
    model lists in ``model.no_weight_decay()`` (timm's convention) and names in
    ``no_weight_decay_list`` (exact dotted names, or ``fnmatch`` patterns such as ``"*.gamma"``).
    Parameters with ``requires_grad=False`` are left out.

    >>> opt = AdamW(param_groups_weight_decay(model, 0.05), lr=1e-3)
    """
    if not hasattr(model, "named_parameters"):
        raise TypeError(f"param_groups_weight_decay: expected a Module (something with "
                        f"named_parameters()), got {type(model).__name__}")
    skip = set(no_weight_decay_list)
    if hasattr(model, "no_weight_decay") and callable(model.no_weight_decay):
        skip |= set(model.no_weight_decay())
    patterns = [s for s in skip if any(c in s for c in "*?[")]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not getattr(p, "requires_grad", True):
            continue
        if (p.ndim <= 1 or _no_decay_by_name(name) or name in skip
                or any(fnmatch.fnmatchcase(name, pat) for pat in patterns)):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay}]


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False) -> float:
    """Scale all gradients in place so that their joint norm is at most ``max_norm``
    (PyTorch's ``torch.nn.utils.clip_grad_norm_``). Returns the total norm before clipping.

    The total norm is the ``norm_type``-norm of all gradients seen as one vector (``inf``: the
    largest absolute value). Gradients are multiplied by ``max_norm / (total + 1e-6)`` when
    that is below 1. Parameters without a gradient are ignored.

    >>> total = clip_grad_norm_(model.parameters(), max_norm=1.0)
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [g for g in (grad_array(p) for p in parameters) if g is not None]
    max_norm, norm_type = float(max_norm), float(norm_type)
    if norm_type <= 0 and not math.isinf(norm_type):
        raise ValueError(f"clip_grad_norm_: norm_type must be positive or inf, got {norm_type}")
    if not grads:
        return 0.0
    xp = get_array_module(*grads)
    if math.isinf(norm_type):
        # max of |g| per array, one device->host transfer at the end
        total = float(max(xp.max(xp.abs(g)) if g.size else 0.0 for g in grads))
    else:
        parts = []
        for g in grads:
            if norm_type == 2.0:
                flat = g.reshape(-1)
                parts.append(xp.dot(flat, flat))          # sum of squares, no temporary array
            elif norm_type == 1.0:
                parts.append(xp.sum(xp.abs(g)))
            else:
                parts.append(xp.sum(xp.abs(g) ** norm_type))
        total = float(sum(parts)) ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the gradients "
                           f"is {total}; set error_if_nonfinite=False to clip anyway")
    coef = max_norm / (total + 1e-6)
    if coef < 1.0 or math.isnan(coef):
        for g in grads:
            g *= coef
    return total
