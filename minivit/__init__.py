"""minivit: a from-scratch deep-learning engine for vision transformers (NumPy / CuPy).

    import minivit
    x = minivit.tensor([[1.0, 2.0]], requires_grad=True)
    y = (x * x).sum()
    y.backward()          # x.grad == 2 x

``import minivit`` changes nothing in the process; ``minivit.runtime.tune()`` applies the
thread and allocator settings the ``minivit`` command uses.
"""
import os as _os


def _interrupted_while_importing(signum, frame):  # pragma: no cover - runs in a subprocess
    _os.write(2, b"minivit: interrupted\n")  # one line, not a traceback of the import chain
    _os._exit(130)


def _sigint_default() -> None:
    """Give Ctrl-C back to Python (``KeyboardInterrupt``) once the command is loaded."""
    import signal

    if signal.getsignal(signal.SIGINT) is _interrupted_while_importing:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _cli_launch() -> bool:
    import sys

    name = _os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name == "-m":  # python -m minivit (and not another module that imports minivit)
        orig = getattr(sys, "orig_argv", [])
        return "-m" in orig[:-1] and orig[orig.index("-m") + 1] == "minivit"
    return _os.path.splitext(name)[0] == "minivit"


if _cli_launch():  # the `minivit` command only: Ctrl-C during the imports is one line
    import signal as _signal
    try:
        _signal.signal(_signal.SIGINT, _interrupted_while_importing)
    except ValueError:  # not the main thread
        pass

from .autograd import (Function, GradcheckError, Tensor, arange, enable_grad, full,
                       gradcheck, gradcheck_directional, inference_mode, is_grad_enabled,
                       manual_seed, no_grad, ones, ones_like, rand, randn, set_grad_enabled,
                       tensor, zeros, zeros_like)
from .autograd.backend import is_cupy_available
from .autograd.ops import (abs, add, cat, chunk, clip, concatenate, div, einsum, erf, exp,
                           flatten, gelu, log, log_softmax, logsumexp, matmul, max, maximum,
                           mean, min, minimum, mul, neg, pad, permute, pow, relu, reshape, roll,
                           sigmoid, softmax, split, sqrt, squeeze, stack, std, sub, sum, swapaxes,
                           tanh, transpose, unsqueeze, var, where)
from .autograd.ops import broadcast_to
from .autograd.ops import ValuesIndices, clone, masked_fill, norm, repeat  # PyTorch's names
from .autograd.ops import broadcast_to as expand  # noqa: F401
from .kernels import is_reference_mode, reference_mode
from . import kernels as _kernels

_kernels.load()   # registers the fast bodies (minivit/kernels/cpu_*.py) against their ops

from . import nn, optim  # noqa: E402  (minivit.nn and minivit.optim, as torch.nn and torch.optim)
from . import amp  # noqa: E402  (minivit.amp.GradScaler, as torch.amp)
from .autograd.autocast import autocast  # noqa: E402  (minivit.autocast("bf16"), torch.autocast)

float32 = "float32"
float64 = "float64"
int64 = long = "int64"   # minivit.tensor(labels, dtype=minivit.long)

__version__ = "0.1.0"

from . import utils  # noqa: E402  (to_dot, summary, capture_attention: minivit.utils.*)
