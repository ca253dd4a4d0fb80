"""Classifier heads (timm's ``timm.layers.classifier`` names and keys).

``ClassifierHead``: global average pool -> dropout -> ``fc`` (key ``head.fc``).
``NormMlpClassifierHead``: pool -> LayerNorm -> ``pre_logits.fc`` -> tanh -> dropout -> ``fc``.
"""
from __future__ import annotations

from collections import OrderedDict

from .layers import Dropout, LayerNorm, Linear, Tanh
from .module import Identity, Module, Sequential

__all__ = ["ClassifierHead", "NormMlpClassifierHead"]


def _pool_axes(input_fmt: str) -> tuple[int, int]:
    if input_fmt not in ("NCHW", "NHWC"):
        raise ValueError(f"input_fmt must be 'NCHW' or 'NHWC', got {input_fmt!r}")
    return (2, 3) if input_fmt == "NCHW" else (1, 2)


class ClassifierHead(Module):
    """Mean over the spatial axes of a (B, C, H, W) map (``input_fmt="NHWC"``: (B, H, W, C)),
    dropout, then ``fc`` (C -> num_classes; none when num_classes is 0)."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0,
                 input_fmt: str = "NCHW"):
        super().__init__()
        self.in_features, self.num_classes, self.input_fmt = in_features, num_classes, input_fmt
        self._axes = _pool_axes(input_fmt)
        self.drop = Dropout(drop_rate)
        self.fc = Linear(in_features, num_classes) if num_classes > 0 else Identity()

    def forward(self, x, pre_logits: bool = False):
        x = self.drop(x.mean(axis=self._axes))             # global average pool
        return x if pre_logits else self.fc(x)

    def extra_repr(self) -> str:
        return f"pool_type='avg', input_fmt='{self.input_fmt}'"


class NormMlpClassifierHead(Module):
    """Mean over the spatial axes, LayerNorm, ``pre_logits`` (Linear to ``hidden_size`` then
    tanh), dropout, ``fc``: the TF MaxViT / ConvNeXt head."""

    def __init__(self, in_features: int, num_classes: int, hidden_size: int,
                 drop_rate: float = 0.0, norm_eps: float = 1e-5, input_fmt: str = "NCHW"):
        super().__init__()
        self.in_features, self.num_classes, self.input_fmt = in_features, num_classes, input_fmt
        self._axes = _pool_axes(input_fmt)
        self.norm = LayerNorm(in_features, eps=norm_eps)
        self.pre_logits = Sequential(OrderedDict([("fc", Linear(in_features, hidden_size)),
                                                  ("act", Tanh())]))
        self.drop = Dropout(drop_rate)
        self.fc = Linear(hidden_size, num_classes) if num_classes > 0 else Identity()

    def forward(self, x, pre_logits: bool = False):
        x = self.pre_logits(self.norm(x.mean(axis=self._axes)))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)

    def extra_repr(self) -> str:
        return f"pool_type='avg', input_fmt='{self.input_fmt}'"
