"""minivit: a from-scratch deep-learning engine for vision transformers (NumPy / CuPy).

    import minivit
    x = minivit.tensor([[1.0, 2.0]], requires_grad=True)
    y = (x * x).sum()
    y.backward()          # x.grad == 2 x
"""
import os as _os

# OpenBLAS's worker threads busy-wait for 2^28 cycles (about 0.1 s) after every matrix product
# before they sleep, so on a small machine they take the cores that minivit's own threads
# (elementwise blocks, conv copies, stacks of small products) need between two GEMMs. 2^4
# cycles makes them sleep at once: training steps 5-10% faster on 2 cores. Read when NumPy
# loads OpenBLAS, so it only takes effect when minivit is imported before NumPy (the
# ``minivit`` command always is); set the variable yourself to override it.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


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


if _cli_launch():  # the `minivit` command: Ctrl-C during the imports is one line
    import signal as _signal
    try:
        _signal.signal(_signal.SIGINT, _interrupted_while_importing)
    except ValueError:  # not the main thread
        pass

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
