"""Matrix products: ``matmul`` (batched, NumPy's 1-D rules) and ``einsum``."""
from __future__ import annotations

import string

from .. import backend
from ..flops import add_flops
from ..autocast import cast_inputs
from ..function import Function

xp_of = backend.get_array_module


class MatMul(Function):
    """C = A @ B.  dA = dC @ B^T,  dB = A^T @ dC  (batch dims broadcast; the engine sums them).

    1-D operands follow NumPy: a vector on the left is a row (1, n), on the right a column (n, 1),
    and the added axis is dropped from the result. Fast body (stacks of small products split
    over the CPU threads): minivit/kernels/cpu_matmul.py.
    """

    def forward(ctx, a, b):
        check_matmul(a, b)
        ctx.save_for_backward(a, b)
        out = xp_of(a).matmul(a, b)
        add_flops(2 * out.size * a.shape[-1])
        return out

    def backward(ctx, g):
        return ctx.backward_with(g, xp_of(g).matmul)

    def backward_with(ctx, g, matmul):
        """dA and dB, the products computed by ``matmul``."""
        a, b = ctx.saved_tensors
        xp = xp_of(a)
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g[..., None] if b.ndim == 1 else g  # restore the dropped axes: first m, then n
        if a.ndim == 1:
            g2 = g2[..., None, :]
        ga = gb = None
        if ctx.needs_input_grad[0]:
            # for a 1-D `a` this is (..., 1, n): sum_to sums the leading axes, the 1 included
            ga = matmul(g2, xp.swapaxes(b2, -1, -2))
        if ctx.needs_input_grad[1]:
            gb = matmul(xp.swapaxes(a2, -1, -2), g2)
            if b.ndim == 1:
                gb = gb[..., 0]
        return ga, gb


def check_matmul(a, b) -> None:
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: both operands need at least one dimension")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match: "
                         f"{a.shape[-1]} (last dim of the first) != "
                         f"{b.shape[-2 if b.ndim > 1 else 0]} (first matrix dim of the second)")


def matmul(a, b):
    """Matrix product with NumPy's semantics (batched, broadcasting, 1-D cases)."""
    return MatMul.apply(a, b)


def _parse_einsum(subscripts: str, shapes) -> tuple[list[str], str]:
    """Explicit form: one letter per axis for every operand, ellipses expanded, and the output."""
    subscripts = subscripts.replace(" ", "")
    if "->" in subscripts:
        lhs, out = subscripts.split("->")
    else:
        lhs, out = subscripts, None
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(f"einsum: {len(terms)} operand subscripts for {len(shapes)} tensors")
    used = set(subscripts)
    spare = [c for c in string.ascii_letters if c not in used]
    n_ell = 0
    for t, s in zip(terms, shapes):
        if "..." in t:
            n_ell = max(n_ell, len(s) - (len(t) - 3))
    ell = "".join(spare[:n_ell])
    full = []
    for t, s in zip(terms, shapes):
        if "..." in t:
            k = len(s) - (len(t) - 3)
            t = t.replace("...", ell[n_ell - k:])
        if len(t) != len(s):
            raise ValueError(f"einsum: subscripts {t!r} do not match an operand of shape {tuple(s)}")
        full.append(t)
    if out is None:  # implicit mode: letters that appear once, sorted (ellipsis first)
        counts = {}
        for t in full:
            for c in t:
                counts[c] = counts.get(c, 0) + 1
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    else:
        out = out.replace("...", ell)
    return full, out


class Einsum(Function):
    """Each operand's gradient is itself an einsum: the output gradient contracted with the
    other operands, onto that operand's subscripts (letters it alone sums are broadcast back)."""

    def forward(ctx, *ops, subscripts=""):
        terms, out = _parse_einsum(subscripts, [o.shape for o in ops])
        for t in terms:
            if len(set(t)) != len(t):
                raise ValueError(f"einsum: repeated subscripts within one operand ({t!r}, a "
                                 f"diagonal) are not supported")
        ctx.terms, ctx.out = terms, out
        ctx.save_for_backward(*ops)
        sizes = {}
        for t, o in zip(terms, ops):
            for c, n in zip(t, o.shape):
                sizes[c] = max(sizes.get(c, 1), n)  # a size-1 '...' dim may broadcast
        count = 2
        for n in sizes.values():
            count *= n
        add_flops(count)  # every index combination is one multiply-add
        return xp_of(*ops).einsum(",".join(terms) + "->" + out, *ops)

    def backward(ctx, g):
        ops = ctx.saved_tensors
        xp = xp_of(g)
        grads = []
        for i, (term, op) in enumerate(zip(ctx.terms, ops)):
            if not ctx.needs_input_grad[i]:
                grads.append(None)
                continue
            others = [(t, o) for j, (t, o) in enumerate(zip(ctx.terms, ops)) if j != i]
            avail = set(ctx.out).union(*[set(t) for t, _ in others])
            kept = "".join(c for c in term if c in avail)
            expr = ",".join([ctx.out] + [t for t, _ in others]) + "->" + kept
            gi = xp.einsum(expr, g, *[o for _, o in others])
            if kept != term:  # letters summed only inside this operand: broadcast back
                shape = [op.shape[k] if c in avail else 1 for k, c in enumerate(term)]
                gi = xp.broadcast_to(gi.reshape(shape), op.shape)
            grads.append(gi)
        return tuple(grads)


# under minivit.autocast both products run in bf16/fp16 precision (minivit/autograd/autocast.py)
cast_inputs(MatMul, None)
cast_inputs(Einsum, None)


def einsum(subscripts: str, *tensors):
    """Einstein summation, as ``numpy.einsum`` (explicit or implicit output, ``...``)."""
    return Einsum.apply(*tensors, subscripts=subscripts)
