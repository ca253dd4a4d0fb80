"""Autocast: the matrix products of a region in bfloat16 or float16 precision (mixed precision).

    with minivit.autocast("bf16"):          # or "fp16"; PyTorch's torch.autocast
        loss = F.cross_entropy(model(x), y)
    loss.backward()                         # outside, as in PyTorch

Inside the region, each op registered here with ``cast_inputs`` (Linear, matmul, einsum,
convolutions, attention: the products, where the arithmetic is) sees its float32 operands
rounded to the low precision and returns its result rounded to it; every other op (softmax,
LayerNorm and BatchNorm statistics, the loss, reductions, elementwise ops, the residual
stream) runs in float32 on whatever it is given, as PyTorch's autocast lists have it. The
rounding is an op, ``AutocastRound``: forward x -> round(x), backward g -> round(g), so the
gradients of a product come back in the low precision too (the incoming gradient and the two
gradient products are rounded), then flow into the float32 parameters: float32 master weights.
float64 tensors are never cast (PyTorch leaves float64 alone too): a float64 gradient check
of an autocast region checks the float32 math.

Storage stays float32: ``round_to`` gives float32 arrays holding exactly representable
bfloat16 / float16 values. A product of two such values is exact in float32 (8 + 8 or
11 + 11 significand bits < 24), so a float32 matrix product of rounded operands followed by a
rounding of the result is what a bfloat16 / float16 GEMM with float32 accumulation computes
(cuBLAS's default for both), up to the order of the sums. NumPy has no bfloat16 and no fast
float16 product, so on the CPU this is for checking numerics, not for speed; see docs/gpu.md
for what runs in which dtype on the CPU and the GPU.
"""
from __future__ import annotations

import contextlib

import numpy as np

from . import backend
from .function import Function

DTYPES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
          "half": "fp16"}

_state: list = [None]   # the active precision ("bf16", "fp16") or None; read by Function.apply
CAST_INPUTS: dict = {}  # op class -> how many leading inputs are operands (int or f(attrs))
RESIDUAL_OPS: set = set()   # ops whose input after the operands is a residual (added in float32)


def cast_inputs(op: type, count, residual: bool = False) -> type:
    """Register ``op`` as a product that autocast runs in the low precision: its first
    ``count`` inputs (an int, a function of the op's attributes, or None: all) are rounded, and so are
    its outputs. ``residual``: an input after those is a residual added to the output: under
    autocast it is added in float32 after the rounding (the residual stream stays float32)."""
    CAST_INPUTS[op] = count
    if residual:
        RESIDUAL_OPS.add(op)
    return op


def parse_dtype(dtype) -> str:
    """"bf16" or "fp16" from any of their names; a one-line error for anything else."""
    name = getattr(dtype, "__name__", None) or str(dtype)
    key = DTYPES.get(name.lower()) if isinstance(name, str) else None
    if key is None:
        raise ValueError(f"autocast: unknown precision {dtype!r}; expected 'bf16' (bfloat16) "
                         f"or 'fp16' (float16)")
    return key


def get_autocast_dtype() -> str | None:
    """The precision of the enclosing ``autocast`` region ("bf16", "fp16"), or None."""
    return _state[0]


def is_autocast_enabled() -> bool:
    return _state[0] is not None


@contextlib.contextmanager
def autocast(dtype="bf16", enabled: bool = True):
    """Run the products of the region in ``dtype`` ("bf16" or "fp16"): see the module doc.
    ``enabled=False`` turns autocast off inside (PyTorch's ``autocast(enabled=False)``)."""
    new = parse_dtype(dtype) if enabled else None
    prev = _state[0]
    _state[0] = new
    try:
        yield
    finally:
        _state[0] = prev


# --- rounding float32 values to bfloat16 / float16 -----------------------------------------

def round_bf16(x):
    """float32 -> the nearest bfloat16 value (round to nearest, ties to even), kept float32.

    bfloat16 is the top 16 bits of a float32 (sign, 8 exponent bits, 7 mantissa bits): add
    0x7FFF plus the lowest kept bit to the bit pattern, then clear the low 16 bits; a carry
    rounds up, into the exponent if need be (the largest values become inf, as bfloat16's
    own overflow). NaN stays NaN. On the GPU: one kernel, ``kernels/cuda_rows.py``."""
    from ..kernels import cuda as cuda_kernels  # noqa: PLC0415

    if cuda_kernels.enabled(x) and x.dtype == np.float32:
        return cuda_kernels.cuda_rows.round_bf16(x)
    xp = backend.get_array_module(x)
    x = xp.ascontiguousarray(x, dtype=xp.float32)
    u = x.view(xp.uint32)
    lsb = (u >> 16) & 1
    r = ((u + lsb + 0x7FFF) & 0xFFFF0000).view(xp.float32)
    return xp.where(xp.isnan(x), x, r)


def round_fp16(x):
    """float32 -> the nearest float16 value (IEEE: ties to even, subnormals, overflow to
    inf beyond 65504), kept float32."""
    xp = backend.get_array_module(x)
    with np.errstate(over="ignore"):   # |x| > 65504 is inf in float16: the point of a scaler
        return x.astype(xp.float16).astype(xp.float32)


ROUND = {"bf16": round_bf16, "fp16": round_fp16}


def round_to(x, dtype: str):
    """``x`` (float32) rounded to the precision ``dtype`` ("bf16" or "fp16"), as float32."""
    return ROUND[parse_dtype(dtype)](x)


class AutocastRound(Function):
    """y = round(x) to bfloat16 / float16 precision, stored float32 (an autocast cast).

    Backward: g -> round(g). The cast's derivative is 1 (PyTorch's ``x.half()`` passes the
    gradient through as ``g.float()``), and a gradient arriving at a low-precision tensor is
    itself low precision, so it is rounded: at a product's output this is the incoming
    gradient in fp16/bf16, at its inputs the gradient products' fp16/bf16 results. (Rounding
    is piecewise constant, so finite differences cannot check this op; its tests check the
    rounding against an independent one and the backward against round(g).)"""

    name = "autocast"

    def forward(ctx, x, dtype="bf16"):
        ctx.dtype = dtype
        return ROUND[dtype](x)

    def backward(ctx, g):
        return ROUND[ctx.dtype](g)


def _castable(t) -> bool:
    return getattr(t, "dtype", None) == np.float32


def apply_autocast(cls, inputs: tuple, attrs: dict):
    """``cls.apply(*inputs, **attrs)`` in the autocast precision (called by ``Function.apply``
    for the ops registered with ``cast_inputs``)."""
    from .tensor import Tensor  # noqa: PLC0415

    dtype = _state[0]
    count = CAST_INPUTS[cls]
    n = len(inputs) if count is None else count(attrs) if callable(count) else count
    operands, rest = inputs[:n], inputs[n:]
    if not any(isinstance(t, Tensor) and _castable(t) for t in operands):
        return _plain(cls, inputs, attrs)   # float64 (or integer) operands: not cast
    residual = None
    if cls in RESIDUAL_OPS and rest:
        residual, rest = rest[-1], rest[:-1]
    cast = tuple(AutocastRound.apply(t, dtype=dtype) if isinstance(t, Tensor) and _castable(t)
                 else t for t in operands)
    out = _plain(cls, cast + rest, attrs)
    many = isinstance(out, tuple)
    out = tuple(AutocastRound.apply(o, dtype=dtype) if _castable(o) else o
                for o in (out if many else (out,)))
    if residual is not None:
        out = (out[0] + residual,)   # in float32: the residual stream is not rounded
    return out if many else out[0]


def _plain(cls, inputs, attrs):
    """The op itself, with autocast off (it must not cast again)."""
    prev = _state[0]
    _state[0] = None
    try:
        return cls.apply(*inputs, **attrs)
    finally:
        _state[0] = prev
