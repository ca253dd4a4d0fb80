"""Normalisation followed by an activation, as one layer and one fused op (timm's
``timm.layers.norm_act`` names and state-dict keys: those of the BatchNorm alone).

    bn = nn.BatchNormAct2d(64, act_layer=nn.GELU)     # GELU(BN(x)): F.batch_norm(..., act="gelu")
    y = bn(x)                                          # x (N, 64, H, W)
    y = bn(x, residual=r)                              # act(BN(x) + r), the end of a ResNet block
    y = bn(x, residual=r, drop_path=dp)                # act(r + dp(BN(x))), the same one op unless
                                                       # dp drops samples (training, rate > 0)

``channels_last=True`` takes (..., C) maps instead, channels on the last axis, with the same
per-channel statistics over every other axis: models that keep NHWC maps or (B, N, C) tokens
normalise them without a transpose.
"""
from __future__ import annotations

from .layers import (BatchNorm1d, BatchNorm2d, ReLU, add_branch, drops_samples,
                     fused_act_name)
from .module import Identity

__all__ = ["BatchNormAct1d", "BatchNormAct2d"]

_BN_ACTS = ("relu", "gelu", "gelu_tanh")     # the activations F.batch_norm fuses (act=)


class _NormActMixin:
    def _init_act(self, apply_act: bool, act_layer, channels_last: bool) -> None:
        self.channels_last = channels_last
        self.act = act_layer() if apply_act and act_layer is not None else Identity()

    def forward(self, x, residual=None, act=None, drop_path=None):
        """act(residual + drop_path(BN(x))) (``residual`` optional, x's shape; ``drop_path`` a
        ``DropPath``, only with a residual). One fused op (``F.batch_norm(..., act=,
        residual=)``) for ReLU, GELU and no activation (the residual with ReLU or none) while
        the drop path passes its input through (none, rate 0, eval); any other activation
        module runs after the normalisation, an active drop path between it and the add.
        ``act``, a module, stands in for the layer's own activation (a ResNet block's ReLU
        after the residual add, as ``Linear.forward(x, act=)``)."""
        norm = super().forward_channels_last if self.channels_last else super().forward
        act = self.act if act is None else act
        if drops_samples(self, residual, drop_path):
            return act(add_branch(self, norm(x), residual, drop_path))
        name = fused_act_name(act)
        plain = isinstance(act, Identity)
        if (plain or name in _BN_ACTS) and (residual is None or plain or name == "relu"):
            return norm(x, act=name, residual=residual)
        return act(norm(x, act=None, residual=residual))

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + ", channels_last=True" if self.channels_last else s


class BatchNormAct2d(_NormActMixin, BatchNorm2d):
    """BatchNorm2d then an activation (``act_layer``, ReLU by default; ``apply_act=False``
    for none), as one op; keys ``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``. (N, C, H, W) input, or (N, H, W, C) with ``channels_last``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, apply_act: bool = True,
                 act_layer=ReLU, channels_last: bool = False):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self._init_act(apply_act, act_layer, channels_last)


class BatchNormAct1d(_NormActMixin, BatchNorm1d):
    """BatchNorm1d then an activation, as ``BatchNormAct2d``: (N, C) or (N, C, L) input, or
    channels-last tokens (N, L, C) with ``channels_last=True`` (statistics over N and L)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, apply_act: bool = True,
                 act_layer=ReLU, channels_last: bool = False):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self._init_act(apply_act, act_layer, channels_last)
