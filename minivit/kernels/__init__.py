"""Fast bodies: the blocked, threaded, fused and CUDA versions of the engine's ops.

Every op (a ``Function`` in ``minivit/autograd/ops`` or ``minivit/nn/functional``) has a
*reference body*, its own ``forward``/``backward`` written as the math of its docstring. Some
ops also have a *fast body* here: a subclass of the op that overrides ``forward`` and
``backward`` with code that computes the same numbers faster (cache-sized blocks on all
cores, several passes fused into one, a channels-last layout, a CUDA kernel), registered
against the op it accelerates::

    @register(GELU)
    class GELUFast(GELU):
        def forward(ctx, x, approximate="none"): ...
        def backward(ctx, g): ...

``Function.apply`` runs the fast body when one is registered, and the reference body in
reference mode: ``MINIVIT_REFERENCE=1`` in the environment, ``with minivit.reference_mode():``
in code, or ``minivit train --reference``. ``tests/test_kernels.py`` checks every fast body
against its reference on hypothesis-drawn inputs.

The files: ``parallel.py`` (blocks and threads), ``cuda.py`` (CUDA ElementwiseKernels),
``cuda_rows.py`` and ``cuda_conv.py`` (CUDA RawKernels: row-wise LayerNorm and softmax, the
depthwise convolution), ``normal_cdf.py`` (the float32 Φ and erf approximations), and one
``cpu_*.py`` per family of ops: elementwise (Add, Mul, ReLU, Erf, GELU), reduce (Softmax), matmul, shape (Reshape),
linear (Linear and LinearColumns with a fused GELU, bias and residual), norm (LayerNorm,
BatchNorm with a fused activation and residual), attention, loss (CrossEntropy), conv (NCHW),
conv_nhwc (the one fast im2col and the one fast depthwise conv, channels-last), pooling. This module imports nothing from the rest of minivit, so the engine can import it first;
``load()`` (called by ``import minivit``) imports the bodies, which registers them.
"""
from __future__ import annotations

import contextlib
import importlib
import os

__all__ = ["register", "fast_body", "registered", "reference_mode", "is_reference_mode", "load"]

# op class -> its fast body (a subclass of the op); Function.apply reads this dict directly
FAST: dict[type, type] = {}

# [on]: a list, so that Function.apply reads the flag without a function call
REFERENCE = [os.environ.get("MINIVIT_REFERENCE", "0") not in ("", "0")]

_BODIES = ("cpu_elementwise", "cpu_reduce", "cpu_matmul", "cpu_shape", "cpu_linear",
           "cpu_norm", "cpu_attention", "cpu_loss", "cpu_conv", "cpu_conv_nhwc", "cpu_pooling")


def register(op: type):
    """Class decorator: make the decorated subclass of ``op`` the fast body of ``op``."""

    def wrap(body: type) -> type:
        if not issubclass(body, op):
            raise TypeError(f"the fast body {body.__name__} must subclass the op {op.__name__}")
        body.name = op.op_name()          # errors and grad_fn name the op, not the body
        body.reference = op
        FAST[op] = body
        return body

    return wrap


def fast_body(op: type) -> type | None:
    """The fast body registered for ``op`` (None when the op has only its reference body)."""
    load()
    return FAST.get(op)


def registered() -> dict[type, type]:
    """Every op with a fast body: {op: body}."""
    load()
    return dict(FAST)


def is_reference_mode() -> bool:
    """True when ops run on their reference bodies."""
    return REFERENCE[0]


@contextlib.contextmanager
def reference_mode(on: bool = True):
    """Run every op on its reference body inside the block (``on=False``: the fast bodies).

    ``with minivit.reference_mode(): loss = model(x).sum(); loss.backward()``
    """
    before, REFERENCE[0] = REFERENCE[0], bool(on)
    try:
        yield
    finally:
        REFERENCE[0] = before


_loaded = False


def load() -> None:
    """Import the fast bodies (each registers itself); idempotent."""
    global _loaded
    if not _loaded:
        _loaded = True
        for name in _BODIES:
            importlib.import_module(f"{__name__}.{name}")
