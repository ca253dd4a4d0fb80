"""Ops that move elements without changing them: their backward moves the gradient back."""
from __future__ import annotations

from .. import backend
from ..function import Function
from .reduce import normalize_axis

xp_of = backend.get_array_module


class Reshape(Function):
    """The same elements in a new shape; the gradient is reshaped back. Fast body (the copy
    of a permuted view on all cores): minivit/kernels/cpu_shape.py."""

    def forward(ctx, x, shape=()):
        ctx.shape = x.shape
        return _reshape(x.reshape, x, shape)

    def backward(ctx, g):
        return g.reshape(ctx.shape)


def _reshape(reshape, x, shape):
    """``reshape(shape)`` with a message naming both shapes when they do not fit."""
    try:
        return reshape(shape)
    except ValueError:
        raise ValueError(f"cannot reshape a tensor of shape {x.shape} ({x.size} elements) "
                         f"into shape {tuple(shape)}") from None


class Permute(Function):
    def forward(ctx, x, axes=()):
        if any(not -x.ndim <= a < x.ndim for a in axes) or \
                sorted(a % x.ndim for a in axes) != list(range(x.ndim)):
            raise ValueError(f"permute: {tuple(axes)} is not a permutation of the {x.ndim} "
                             f"dimensions of shape {x.shape}")
        ctx.axes = tuple(a % x.ndim for a in axes)
        return x.transpose(ctx.axes)

    def backward(ctx, g):
        inverse = [0] * len(ctx.axes)
        for i, a in enumerate(ctx.axes):
            inverse[a] = i
        return g.transpose(inverse)


class BroadcastTo(Function):
    """Expand size-1 (or missing leading) axes; backward is the engine's ``sum_to``."""

    name = "broadcast_to"

    def forward(ctx, x, shape=()):
        try:
            return xp_of(x).broadcast_to(x, tuple(shape))
        except ValueError:
            raise ValueError(f"cannot broadcast shape {x.shape} to {tuple(shape)}") from None

    def backward(ctx, g):
        return g


def _array_index(index, xp):
    """Tensors in an index become arrays; boolean masks become integer arrays (for scatter)."""
    from ..tensor import Tensor  # noqa: PLC0415

    items = index if isinstance(index, tuple) else (index,)
    out, advanced = [], False
    for it in items:
        if isinstance(it, Tensor):
            it = it.data
        if isinstance(it, list) or backend.is_array(it):
            it = xp.asarray(it)  # on x's device (a NumPy index for a CuPy x, for scatter_add)
            advanced = True
            if it.dtype == bool:
                out.extend(xp.nonzero(it))
                continue
        out.append(it)
    return tuple(out), advanced


class GetItem(Function):
    """``x[index]``; backward scatters the gradient back (adding where an index repeats)."""

    name = "getitem"

    def forward(ctx, x, index=()):
        ctx.shape, ctx.index, ctx.advanced = x.shape, *_array_index(index, xp_of(x))
        try:
            return x[ctx.index]
        except IndexError as exc:
            raise IndexError(f"getitem: {exc} (tensor of shape {x.shape})") from None

    def backward(ctx, g):
        gx = xp_of(g).zeros(ctx.shape, dtype=g.dtype)
        if ctx.advanced:
            backend.scatter_add(gx, ctx.index, g)
        else:  # basic indexing selects each element at most once
            gx[ctx.index] = g
        return gx


class Concatenate(Function):
    name = "concatenate"

    def forward(ctx, *xs, axis=0):
        ctx.axis = axis
        ctx.sizes = [x.shape[axis] for x in xs]
        return xp_of(*xs).concatenate(xs, axis=axis)

    def backward(ctx, g):
        xp = xp_of(g)
        cuts = list(_cumsum(ctx.sizes)[:-1])
        return tuple(xp.split(g, cuts, axis=ctx.axis))


class Stack(Function):
    def forward(ctx, *xs, axis=0):
        ctx.axis = axis
        return xp_of(*xs).stack(xs, axis=axis)

    def backward(ctx, g):
        xp = xp_of(g)
        return tuple(xp.take(g, i, axis=ctx.axis) for i in range(g.shape[ctx.axis]))


class Split(Function):
    """Several outputs: backward joins their gradients (zeros for unused pieces)."""

    def forward(ctx, x, indices_or_sections=1, axis=0):
        ctx.axis = axis
        try:
            return tuple(xp_of(x).split(x, indices_or_sections, axis=axis))
        except ValueError:
            raise ValueError(f"split: cannot split axis {axis} of size {x.shape[axis]} into "
                             f"{indices_or_sections} equal parts") from None

    def backward(ctx, *gs):
        return xp_of(gs[0]).concatenate(gs, axis=ctx.axis)


class Pad(Function):
    """Constant padding, NumPy's ``pad_width``; backward crops the padding away."""

    def forward(ctx, x, pad_width=(), value=0.0):
        xp = xp_of(x)
        width = _normalize_pad(pad_width, x.ndim)
        ctx.crop = tuple(slice(b, b + n) for (b, _), n in zip(width, x.shape))
        return xp.pad(x, width, mode="constant", constant_values=value)

    def backward(ctx, g):
        return g[ctx.crop]


class Roll(Function):
    def forward(ctx, x, shift=0, axis=None):
        ctx.shift, ctx.axis = shift, axis
        return xp_of(x).roll(x, shift, axis=axis)

    def backward(ctx, g):
        back = tuple(-s for s in ctx.shift) if isinstance(ctx.shift, tuple) else -ctx.shift
        return xp_of(g).roll(g, back, axis=ctx.axis)


def _cumsum(sizes):
    out, total = [], 0
    for s in sizes:
        total += s
        out.append(total)
    return out


def _normalize_pad(pad_width, ndim):
    """NumPy's reading: an int, one (before, after) pair for every axis, or a pair per axis."""
    if isinstance(pad_width, int):
        return [(pad_width, pad_width)] * ndim
    pw = list(pad_width)
    if len(pw) == 2 and all(isinstance(p, int) for p in pw):
        pw = [tuple(pw)]  # (before, after), the same for every axis
    pw = [(p, p) if isinstance(p, int) else tuple(p) for p in pw]
    if len(pw) == 1:
        pw = pw * ndim
    if len(pw) != ndim or any(len(p) != 2 or min(p) < 0 for p in pw):
        raise ValueError(f"pad: pad_width {pad_width!r} does not fit {ndim} dimensions "
                         f"(expected {ndim} non-negative (before, after) pairs)")
    return pw


# --- the functional names -------------------------------------------------------------------

def reshape(x, *shape):
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Reshape.apply(x, shape=tuple(shape))


def permute(x, *axes):
    axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
    return Permute.apply(x, axes=tuple(axes))


def _dim(op: str, a: int, ndim: int) -> int:
    """A non-negative axis, or an error naming the op (no silent wrap-around)."""
    if not -ndim <= a < ndim:
        raise ValueError(f"{op}: dimension {a} is out of range for a tensor with {ndim} "
                         f"dimensions (expected {-ndim} to {ndim - 1})")
    return a % ndim


def swapaxes(x, a: int, b: int):
    axes = list(range(x.ndim))
    a, b = _dim("swapaxes", a, x.ndim), _dim("swapaxes", b, x.ndim)
    axes[a], axes[b] = axes[b], axes[a]
    return Permute.apply(x, axes=tuple(axes))


transpose = swapaxes  # PyTorch's transpose(dim0, dim1) swaps two dimensions


def broadcast_to(x, shape):
    return BroadcastTo.apply(x, shape=tuple(shape))


def flatten(x, start_dim: int = 0, end_dim: int = -1):
    if x.ndim == 0:
        return reshape(x, (1,))
    s, e = _dim("flatten", start_dim, x.ndim), _dim("flatten", end_dim, x.ndim)
    n = 1
    for d in x.shape[s:e + 1]:
        n *= d
    return reshape(x, x.shape[:s] + (n,) + x.shape[e + 1:])


def squeeze(x, axis=None, *, dim=None):
    axis = dim if dim is not None else axis
    if axis is None:
        return reshape(x, tuple(n for n in x.shape if n != 1))
    axes = normalize_axis(axis, x.ndim)
    for a in axes:
        if x.shape[a] != 1:
            raise ValueError(f"squeeze: axis {a} of shape {x.shape} has size {x.shape[a]}, not 1")
    return reshape(x, tuple(n for i, n in enumerate(x.shape) if i not in axes))


def unsqueeze(x, axis: int | None = None, *, dim: int | None = None):
    axis = dim if dim is not None else axis
    if axis is None:
        raise TypeError("unsqueeze: give the position of the new axis, e.g. unsqueeze(x, dim=0)")
    a = _dim("unsqueeze", axis, x.ndim + 1)
    return reshape(x, x.shape[:a] + (1,) + x.shape[a:])


def getitem(x, index):
    return GetItem.apply(x, index=index)


def concatenate(tensors, axis: int = 0, *, dim: int | None = None):
    axis = dim if dim is not None else axis
    if len(tensors) == 0:
        raise ValueError("concatenate: need at least one tensor")
    return Concatenate.apply(*tensors, axis=axis)


cat = concatenate


def stack(tensors, axis: int = 0, *, dim: int | None = None):
    axis = dim if dim is not None else axis
    if len(tensors) == 0:
        raise ValueError("stack: need at least one tensor")
    return Stack.apply(*tensors, axis=axis)


def split(x, indices_or_sections, axis: int = 0, *, dim: int | None = None):
    """NumPy's split: a number of equal sections, or the indices where to cut."""
    axis = dim if dim is not None else axis
    if isinstance(indices_or_sections, (list, tuple)):
        indices_or_sections = list(indices_or_sections)
    return list(Split.apply(x, indices_or_sections=indices_or_sections, axis=axis))


def chunk(x, chunks: int, axis: int = 0, *, dim: int | None = None):
    """PyTorch's chunk: ``chunks`` pieces of size ceil(n / chunks) (the last may be smaller)."""
    axis = dim if dim is not None else axis
    if not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"chunk: chunks must be a positive integer, got {chunks!r}")
    n = x.shape[axis]
    size = -(-n // chunks)
    cuts = list(range(size, n, size))
    return split(x, cuts, axis=axis)


def pad(x, pad_width, value: float = 0.0):
    """Constant padding with NumPy's ``pad_width`` (an int, or (before, after) per axis)."""
    return Pad.apply(x, pad_width=pad_width, value=value)


def roll(x, shift, axis=None, *, dims=None):
    axis = dims if dims is not None else axis
    if isinstance(shift, list):
        shift = tuple(shift)
    if isinstance(axis, list):
        axis = tuple(axis)
    return Roll.apply(x, shift=shift, axis=axis)
