"""Activations and the softmax family (PyTorch's ``torch.nn.functional`` names).

GELU, ReLU, sigmoid, tanh and the softmaxes are engine ops (``minivit/autograd/ops``); SiLU is
defined here, forward beside backward.
"""
from __future__ import annotations

from ...autograd import backend, ops
from ...autograd.function import Function
from ...autograd.ops.elementwise import sigmoid_value

xp_of = backend.get_array_module


class SiLU(Function):
    """silu(x) = x σ(x);  d/dx = σ + x σ (1 - σ) = σ (1 + x (1 - σ)) (σ' = σ (1 - σ))."""

    def forward(ctx, x):
        s = sigmoid_value(x)
        ctx.save_for_backward(x, s)
        return x * s

    def backward(ctx, g):
        x, s = ctx.saved_tensors
        return g * s * (1 + x * (1 - s))


def gelu(x, approximate: str = "none"):
    """GELU: ``x * Phi(x)`` (``approximate="none"``, erf) or the tanh approximation.

    ``F.gelu(minivit.tensor([0., 1.]))`` -> ``[0., 0.8413]``.
    """
    return ops.gelu(x, approximate)


def relu(x):
    """max(x, 0)."""
    return ops.relu(x)


def silu(x):
    """x * sigmoid(x) (a.k.a. swish)."""
    return SiLU.apply(x)


def sigmoid(x):
    """1 / (1 + exp(-x)), stable for large |x|."""
    return ops.sigmoid(x)


def tanh(x):
    return ops.tanh(x)


def softmax(x, dim: int = -1):
    """exp(x) / sum exp(x) along ``dim`` (max subtracted first: no overflow).

    ``F.softmax(minivit.tensor([0., 0.]), dim=-1)`` -> ``[0.5, 0.5]``.
    """
    return ops.softmax(x, axis=dim)


def log_softmax(x, dim: int = -1):
    """x - logsumexp(x) along ``dim``."""
    return ops.log_softmax(x, axis=dim)
