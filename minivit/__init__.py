"""minivit: a from-scratch deep-learning engine for vision transformers (NumPy / CuPy).

    import minivit
    x = minivit.tensor([[1.0, 2.0]], requires_grad=True)
    y = (x * x).sum()
    y.backward()          # x.grad == 2 x
"""
from .autograd import (Function, GradcheckError, Tensor, arange, enable_grad, full,
                       gradcheck, gradcheck_directional, is_grad_enabled, manual_seed,
                       no_grad, ones, ones_like, rand, randn, tensor, zeros, zeros_like)
from .autograd.backend import is_cupy_available
from .autograd.ops import (abs, add, cat, chunk, clip, concatenate, div, einsum, erf, exp,
                           flatten, gelu, log, log_softmax, logsumexp, matmul, max, maximum,
                           mean, min, minimum, mul, neg, pad, permute, pow, relu, reshape, roll,
                           sigmoid, softmax, split, sqrt, squeeze, stack, std, sub, sum, swapaxes,
                           tanh, transpose, unsqueeze, var, where)
from .autograd.ops import broadcast_to
from .autograd.ops import broadcast_to as expand  # noqa: F401

float32 = "float32"
float64 = "float64"

__version__ = "0.1.0"
