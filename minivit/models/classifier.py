"""timm's classifier methods, shared by the five models: ``get_classifier()``,
``reset_classifier(num_classes)`` and ``no_weight_decay()``.

    model = create_model("vit_cifar")
    model.reset_classifier(100)          # a new 100-way head for fine-tuning
    model.get_classifier()               # Linear(in_features=192, out_features=100)

The classifier is the last Linear: ``model.head`` (ViT, Mixer, CeiT) or ``model.head.fc``
(BoTNet, MaxViT: timm's ``ClassifierHead``/``NormMlpClassifierHead``), as in timm.
"""
from __future__ import annotations

from .. import nn
from ..optim.utils import _no_decay_by_name


class ClassifierMixin:
    """Methods for a model with ``head`` (a Linear, or a head module whose ``fc`` is the
    Linear), ``num_features`` and ``num_classes``."""

    def _classifier_owner(self) -> tuple[nn.Module, str]:
        head = self.head
        if isinstance(head, nn.Linear) or not hasattr(head, "fc"):
            return self, "head"
        return head, "fc"

    def get_classifier(self) -> nn.Module:
        """The final Linear layer (``nn.Identity`` when the model has no classes)."""
        owner, name = self._classifier_owner()
        return getattr(owner, name)

    def _classifier_in_features(self) -> int:
        current = self.get_classifier()
        if isinstance(current, nn.Linear):
            return current.weight.shape[1]
        pre_logits = getattr(self.head, "pre_logits", None)   # MaxViT's head: LN -> fc -> tanh
        if pre_logits is not None and hasattr(pre_logits, "fc"):
            return pre_logits.fc.weight.shape[0]
        return self.num_features

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a freshly initialised ``Linear(features, num_classes)``
        (``nn.Identity`` for 0: the model then returns its pooled features), as timm.
        ``global_pool``: ``"token"`` or ``"avg"`` for models that have that choice (ViT)."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ValueError(f"reset_classifier: num_classes must be a non-negative integer, "
                             f"got {num_classes!r}")
        if global_pool is not None:
            choices = getattr(self, "global_pool_choices", ())
            if global_pool not in choices:
                raise ValueError(f"reset_classifier: global_pool={global_pool!r} is not an option "
                                 f"of {type(self).__name__} (options: "
                                 f"{', '.join(choices) or 'none'})")
            self.global_pool = global_pool
        in_features = self._classifier_in_features()
        owner, name = self._classifier_owner()
        like = next(self.parameters(), None)
        new = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()
        if like is not None:
            new.to(like.device).to(like.dtype)
        setattr(owner, name, new)
        self.num_classes = num_classes

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters that get no weight decay besides norms and biases: class
        tokens, position embeddings, relative-position tables (timm's convention; used by
        ``optim.param_groups_weight_decay``)."""
        return {name for name, _ in self.named_parameters() if _no_decay_by_name(name)}
