"""``minivit.nn.functional`` (``import minivit.nn.functional as F``): PyTorch's names and
argument order. Convolution and pooling live in ``conv.py`` and ``pooling.py``; the
channels-last convolutions in ``conv_nhwc.py`` and ``depthwise.py``."""
from __future__ import annotations

import importlib.util

from .activation import gelu, log_softmax, relu, sigmoid, silu, softmax, tanh
from .attention import rel_to_abs, scaled_dot_product_attention, self_attention
from .dropout import drop_path, dropout
from .linear import linear, linear_columns
from .loss import cross_entropy, mse_loss, nll_loss
from .norm import batch_norm, layer_norm


def _lazy(module: str, name: str):
    """A stand-in for ``module.name`` that imports it at the first call (while that file is
    still being written, importing ``minivit.nn`` must not fail)."""

    def call(*args, **kwargs):
        mod = importlib.import_module(f"{__name__}.{module}")
        return getattr(mod, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"See minivit.nn.functional.{module}.{name}."
    return call


if importlib.util.find_spec(f"{__name__}.conv") is not None:
    from .conv import conv2d
    from .conv_nhwc import conv2d_nhwc
    from .depthwise import depthwise_conv2d_nhwc
else:  # pragma: no cover
    conv2d = _lazy("conv", "conv2d")
    depthwise_conv2d_nhwc = _lazy("depthwise", "depthwise_conv2d_nhwc")
    conv2d_nhwc = _lazy("conv_nhwc", "conv2d_nhwc")

if importlib.util.find_spec(f"{__name__}.pooling") is not None:
    from .pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d
else:  # pragma: no cover
    max_pool2d = _lazy("pooling", "max_pool2d")
    avg_pool2d = _lazy("pooling", "avg_pool2d")
    adaptive_avg_pool2d = _lazy("pooling", "adaptive_avg_pool2d")

__all__ = ["linear", "linear_columns", "conv2d", "conv2d_nhwc", "depthwise_conv2d_nhwc", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "layer_norm",
           "batch_norm", "gelu", "relu", "silu", "sigmoid", "tanh", "softmax", "log_softmax",
           "dropout", "drop_path", "scaled_dot_product_attention", "self_attention", "rel_to_abs",
           "cross_entropy", "nll_loss",
           "mse_loss"]
