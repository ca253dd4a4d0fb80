"""Reverse-mode differentiation: the iterative backward pass.

Functions are visited newest first, from a heap keyed by generation (a function's generation is
that of its newest input), so every function runs once, after all the gradients of its outputs
have arrived. There is no recursion: a 10,000-deep chain is as easy as a 3-deep one. Gradients
of a tensor used several times (a diamond) are added up out of place before they flow on.
"""
from __future__ import annotations

import heapq
import itertools
import math
import weakref

from ..kernels import REFERENCE, parallel
from . import backend
from .function import Edge


def sum_to(grad, shape: tuple):
    """Undo broadcasting: sum ``grad`` down to ``shape`` (the one place this happens)."""
    if grad.shape == tuple(shape):
        return grad
    lead = grad.ndim - len(shape)
    if lead < 0:
        raise ValueError(f"cannot sum a gradient of shape {grad.shape} to shape {tuple(shape)}")
    axes = tuple(range(lead)) + tuple(
        i + lead for i, n in enumerate(shape) if n == 1 and grad.shape[i + lead] != 1)
    out = _sum_axes(grad, axes)
    if lead:
        out = out.reshape(out.shape[lead:])
    return out


def _sum_axes(grad, axes: tuple):
    """``grad.sum(axis=axes, keepdims=True)``, on all cores for big arrays: per row when axis 0
    is kept (bit-identical), down the columns when only leading axes go (``column_sums``: one
    gemv)."""
    if (not axes or REFERENCE[0] or grad.size < parallel.MIN_ELEMENTS
            or backend.device_of(grad) != "cpu"):
        return grad.sum(axis=axes, keepdims=True)
    if 0 not in axes:
        return parallel.blockwise(lambda g: g.sum(axis=axes, keepdims=True), grad)
    k = len(axes)
    if axes == tuple(range(k)) and grad.flags.c_contiguous:   # (batch..., rest): a bias
        lead_size = math.prod(grad.shape[:k])
        out = parallel.column_sums(grad.reshape(lead_size, -1))
        return out.reshape((1,) * k + grad.shape[k:])
    return grad.sum(axis=axes, keepdims=True)


def _check_grad(fn, tensor, grad):
    """Reduce a broadcast gradient, then insist on the tensor's own shape and dtype."""
    if not backend.is_array(grad):  # a NumPy scalar (0-d arithmetic returns those) or a number
        xp = tensor.xp if isinstance(tensor, Edge) else backend.get_array_module(tensor.data)
        grad = xp.asarray(grad)
    if grad.shape != tensor.shape:
        try:
            grad = sum_to(grad, tensor.shape)
        except ValueError:
            pass
        if grad.shape != tensor.shape:
            raise RuntimeError(f"op '{fn.op_name()}' returned a gradient of shape {grad.shape} "
                               f"for an input of shape {tensor.shape}")
    if grad.dtype != tensor.dtype:
        raise RuntimeError(f"op '{fn.op_name()}' returned a {grad.dtype} gradient "
                           f"for a {tensor.dtype} input")
    return grad


def backward(root, grad=None, retain_graph: bool = False) -> None:
    """Accumulate d(root)/d(leaf) into ``leaf.grad`` for every leaf that requires grad."""
    from .tensor import Tensor  # noqa: PLC0415

    if not root.requires_grad:
        raise RuntimeError("backward() on a tensor that does not require grad "
                           "(no input had requires_grad=True, or it was made under no_grad)")
    xp = backend.get_array_module(root.data)
    if grad is None:
        if root.data.size != 1:
            raise RuntimeError(f"backward() without a gradient needs a scalar output; this one "
                               f"has shape {root.shape}: pass grad= of that shape, or reduce it "
                               f"first (e.g. loss.sum())")
        grad = xp.ones_like(root.data)
    else:
        grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=root.dtype)
        if grad.shape != root.shape:
            raise ValueError(f"backward(): grad has shape {grad.shape}, expected {root.shape}")
        grad = grad.astype(root.dtype, copy=False)

    if root.creator is None:  # backward on a leaf: its gradient is the seed itself
        _accumulate_leaf(root, _run_hooks(root._grad_hooks, grad, root) if root._grad_hooks
                         else grad)
        return

    # gradients not yet passed on, by (op, output index): the tensors themselves may be gone
    pending = {(id(root.creator), root.output_index): grad}
    heap, seen, order = [], set(), itertools.count()

    def push(fn):
        if id(fn) not in seen:
            seen.add(id(fn))
            heapq.heappush(heap, (-fn.generation, next(order), fn))

    push(root.creator)
    hooked_leaves = {}   # leaves with hooks: their gradient is summed first, then hooked
    while heap:
        fn = heapq.heappop(heap)[2]
        if fn._freed:
            raise RuntimeError(fn.freed_message())
        grads_out = []
        for i, (ref, (shape, dtype, out_xp)) in enumerate(zip(fn.outputs, fn.output_meta)):
            g = pending.pop((id(fn), i), None)
            if g is not None and fn._tensor_hooks and fn._tensor_hooks.get(i):
                g = _run_hooks(fn._tensor_hooks[i], g, _Like(shape, dtype))
            out = ref()
            if g is not None and out is not None and out.retains_grad:
                out.grad = Tensor(g)
            grads_out.append(out_xp.zeros(shape, dtype) if g is None else g)
        if GRAD_SLOTS:
            fn.grad_slots = _open_slots(fn.inputs)
        grads_in = fn.backward(*grads_out)
        if not isinstance(grads_in, tuple):
            grads_in = (grads_in,)
        if len(grads_in) != len(fn.inputs):
            raise RuntimeError(f"op '{fn.op_name()}' returned {len(grads_in)} gradients "
                               f"for {len(fn.inputs)} inputs")
        inputs = fn.inputs
        if not retain_graph:
            fn.release()
        for t, g in zip(inputs, grads_in):
            if g is None or not t.requires_grad:
                continue
            g = _check_grad(fn, t, g)
            if t.creator is None:
                if t._grad_hooks:
                    prev = hooked_leaves.get(id(t))
                    hooked_leaves[id(t)] = (t, g if prev is None else parallel.add(prev[1], g))
                else:
                    _accumulate_leaf(t, g)
                continue
            key = (id(t.creator), t.index)   # the op stays alive in the heap until it runs
            if key in pending:
                pending[key] = pending[key] + g if REFERENCE[0] else parallel.add(pending[key], g)
            else:
                pending[key] = g
                push(t.creator)

    for t, g in hooked_leaves.values():
        _accumulate_leaf(t, _run_hooks(t._grad_hooks, g, t))


class _Like:
    """The shape and dtype a hook's replacement gradient must have."""
    __slots__ = ("shape", "dtype")

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), dtype


def _run_hooks(hooks: dict, g, like):
    """``Tensor.register_hook`` hooks, in order, each given the gradient as a Tensor; a
    non-None result replaces it (same shape and dtype)."""
    from .tensor import Tensor  # noqa: PLC0415

    for hook in list(hooks.values()):
        result = hook(Tensor(g))
        if result is None:
            continue
        r = result.data if isinstance(result, Tensor) else result
        if not backend.is_array(r) or r.shape != tuple(like.shape) or r.dtype != like.dtype:
            got = f"{r.shape} {r.dtype}" if backend.is_array(r) else type(result).__name__
            raise RuntimeError(f"tensor hook {getattr(hook, '__name__', hook)!r} returned a "
                               f"gradient of {got}; expected {tuple(like.shape)} {like.dtype}")
        g = r
    return g


# Gradient slots: a GPU optimizer that updates all its parameters in one kernel keeps their
# gradients in one flat buffer and registers each parameter's view of it here; a leaf's
# gradient is then written into (and accumulated in) its slot, in place.
# (Keyed by id: a Tensor's == is elementwise, so it cannot be a dictionary key by value.)
GRAD_SLOTS: dict = {}


def set_grad_slot(t, slot) -> None:
    """Make ``slot`` (an array of ``t``'s shape) where ``t``'s gradient is accumulated."""
    if id(t) not in GRAD_SLOTS:
        weakref.finalize(t, GRAD_SLOTS.pop, id(t), None)
    GRAD_SLOTS[id(t)] = slot


def _open_slots(inputs) -> tuple:
    """For each input, its gradient slot if the backward may write the gradient straight into
    it (a leaf with a slot and no gradient yet, its first occurrence among the inputs)."""
    seen, out = set(), []
    for t in inputs:
        slot = GRAD_SLOTS.get(id(t))
        ok = (slot is not None and t.creator is None and t.grad is None and t.requires_grad
              and not t._grad_hooks and id(t) not in seen)   # hooked: summed at the end
        seen.add(id(t))
        out.append(slot if ok else None)
    return tuple(out)


def grad_slot(ctx, i: int):
    """Where the backward of ``ctx`` may write input ``i``'s gradient, or None: the GPU
    optimizer's buffer for a parameter (the input's shape), so its gradient needs no copy.
    The backward returns that very array as the gradient."""
    slots = getattr(ctx, "grad_slots", None)
    return slots[i] if slots else None


def _accumulate_leaf(t, g) -> None:
    from .tensor import Tensor  # noqa: PLC0415

    slot = GRAD_SLOTS.get(id(t)) if GRAD_SLOTS else None
    if slot is not None and (slot.shape != g.shape or slot.dtype != g.dtype):
        slot = None
    if t.grad is None:
        if slot is None:
            t.grad = Tensor(g.copy())  # a copy: g may be shared with another input's gradient
        else:
            if g is not slot:   # the backward did not write into the slot itself
                slot[...] = g              # the same one copy, into the optimizer's buffer
            t.grad = Tensor(slot)
    elif slot is not None and t.grad.data is slot:
        slot += g
    else:
        t.grad = Tensor(t.grad.data + g)
    if t._post_accumulate_grad_hooks:   # e.g. data parallelism: this gradient is ready
        for hook in list(t._post_accumulate_grad_hooks.values()):
            hook(t)
