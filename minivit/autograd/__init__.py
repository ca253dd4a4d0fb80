"""A minimal reverse-mode autograd engine on NumPy (CPU) and CuPy (GPU).

``Tensor`` holds an array and the ``Function`` that made it; ``backward`` walks the graph
newest-first and fills ``.grad`` of the leaves; ``gradcheck`` verifies gradients numerically.
"""
from . import backend, ops
from .backend import get_rng_state, manual_seed, set_rng_state
from .engine import backward, sum_to
from .function import Function
from .grad_mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from .gradcheck import GradcheckError, gradcheck, gradcheck_directional
from .tensor import (Tensor, arange, full, ones, ones_like, rand, randn, tensor, zeros,
                     zeros_like)

__all__ = [
    "Tensor", "Function", "backward", "sum_to", "no_grad", "enable_grad", "is_grad_enabled",
    "set_grad_enabled", "inference_mode",
    "gradcheck", "gradcheck_directional", "GradcheckError", "tensor", "zeros", "ones", "full",
    "randn", "rand", "arange", "zeros_like", "ones_like", "manual_seed", "get_rng_state",
    "set_rng_state", "backend", "ops",
]
