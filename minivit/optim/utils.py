"""Helpers around the optimizers: timm-style weight-decay groups, and gradient clipping
(``clip_grad_norm_`` lives in ``minivit.nn.utils`` as in PyTorch; this name is an alias)."""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from ..nn.utils import clip_grad_norm_  # noqa: F401  (the old home of the name)

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
