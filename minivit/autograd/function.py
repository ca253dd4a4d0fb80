"""``Function``: the one way to add a differentiable op.

An op is a subclass with two methods on raw arrays, side by side::

    class Exp(Function):
        def forward(ctx, x):
            y = xp(x).exp(x)
            ctx.save_for_backward(y)
            return y

        def backward(ctx, grad):
            (y,) = ctx.saved_tensors
            return grad * y            # d exp(x)/dx = exp(x)

    def exp(x): return Exp.apply(x)

``ctx`` is the graph node itself. ``forward`` may take keyword attributes (axis, shape, ...)
that are not differentiated; it returns one array or a tuple of arrays. ``backward`` gets one
gradient per output (zeros where an output received none) and returns one gradient per input
(``None`` for inputs that need none). Gradients of broadcast inputs are summed back to the
input's shape by the engine, never by the op (see ``engine.sum_to``).

These two methods are the op's *reference body*, the math as written. An op may also have a
*fast body* in ``minivit/kernels`` (a subclass registered against it); ``apply`` runs that
one unless reference mode is on (``minivit.reference_mode()``, ``MINIVIT_REFERENCE=1``).
"""
from __future__ import annotations

import weakref

import numpy as np

from ..kernels import FAST, REFERENCE
from . import backend
from .grad_mode import is_grad_enabled


class Edge:
    """An input of a recorded op, without its data: which op made it and which of that op's
    outputs it was (``creator``, ``index``), its shape and dtype (to check the gradient that
    flows back), and whether it wants one. The graph links ops through these, so an
    activation that no backward saved is freed as soon as the forward code drops it (a qkv
    projection that attention copies into heads, a reshape's input): only
    ``save_for_backward`` keeps arrays alive. Leaves that require grad stay in the graph as
    the Tensors themselves, since their ``.grad`` is filled in."""

    __slots__ = ("creator", "index", "shape", "dtype", "xp", "requires_grad")

    def __init__(self, t):
        self.creator, self.index = t.creator, t.output_index
        self.shape, self.dtype = t.shape, t.dtype
        self.xp = backend.get_array_module(t.data)
        self.requires_grad = t.requires_grad

    def __repr__(self) -> str:
        made_by = "a constant" if self.creator is None else f"output {self.index} of " \
            f"'{self.creator.op_name()}'"
        return f"Edge({made_by}, shape={self.shape}, dtype={self.dtype})"


class Function:
    """A node of the graph: the op that made some tensors, and what its backward needs."""

    name: str | None = None  # the op's name in error messages; defaults to the class name

    def __init__(self):
        self.inputs: tuple = ()
        self.outputs: tuple = ()  # weak references: the graph holds no cycles
        self.output_meta: tuple = ()  # (shape, dtype, xp) of each output, for zero gradients
        self.generation = 0
        self.needs_input_grad: tuple[bool, ...] = ()
        self._saved: tuple = ()
        self._freed = False

    # --- what forward keeps for backward -------------------------------------------------
    def save_for_backward(self, *arrays) -> None:
        self._saved = arrays

    @property
    def saved_tensors(self) -> tuple:
        if self._freed:
            raise RuntimeError(self.freed_message())
        return self._saved

    def release(self) -> None:
        """Drop the saved arrays and the links to the inputs (after backward)."""
        self._saved = ()
        self.inputs = ()
        self._freed = True

    def freed_message(self) -> str:
        return (f"trying to backward through the graph a second time: the saved arrays of op "
                f"'{self.op_name()}' were freed after the first backward; call "
                f".backward(retain_graph=True) the first time if you need to backward twice")

    @classmethod
    def op_name(cls) -> str:
        return cls.name or cls.__name__.lower()

    def __repr__(self) -> str:
        # PyTorch's grad_fn names (<MulBackward0>); a fast body is named by the op it speeds up
        op = getattr(type(self), "reference", None) or type(self)
        return f"<{op.__name__}Backward>"

    _tensor_hooks = None   # hooks registered on this op's outputs: {output index: {id: hook}}

    def tensor_hooks(self, index: int) -> dict:
        """The hook dict of output ``index`` (``Tensor.register_hook`` of a non-leaf)."""
        if self._tensor_hooks is None:
            self._tensor_hooks = {}
        return self._tensor_hooks.setdefault(index, {})

    @property
    def next_functions(self) -> tuple:
        """``(node, output index)`` of each input, as PyTorch's ``grad_fn.next_functions``: the
        op that made it, the leaf Tensor itself when it requires grad, or None (a constant,
        or an input whose gradient is not needed). Empty after a backward without
        ``retain_graph`` (the links are freed)."""
        out = []
        for t in self.inputs:
            if isinstance(t, Edge):
                out.append((t.creator, t.index) if t.requires_grad else (None, 0))
            else:
                out.append((t, 0))
        return tuple(out)

    # --- the op itself (subclasses) ------------------------------------------------------
    def forward(self, *arrays, **attrs):
        raise NotImplementedError

    def backward(self, *grads):
        raise NotImplementedError

    # --- recording -----------------------------------------------------------------------
    @classmethod
    def apply(cls, *inputs, **attrs):
        """Run the op on Tensors (or constants) and, when grad is on, record it in the graph."""
        from .tensor import Tensor  # noqa: PLC0415 (tensor.py imports the ops, which import us)

        if _autocast._state[0] is not None and cls in _autocast.CAST_INPUTS:
            return _autocast.apply_autocast(cls, inputs, attrs)   # a product under autocast
        tensors = _as_tensors(cls, inputs, Tensor)
        # the op's fast body (a subclass registered in minivit/kernels) unless in reference mode
        ctx = cls() if REFERENCE[0] else FAST.get(cls, cls)()
        record = is_grad_enabled() and any(t.requires_grad for t in tensors)
        # as PyTorch's ctx.needs_input_grad, known in forward: a body may skip work that only
        # backward needs (all False when nothing is recorded)
        ctx.needs_input_grad = tuple(record and t.requires_grad for t in tensors)
        try:
            raw = ctx.forward(*[t.data for t in tensors], **attrs)
        except ValueError as exc:
            shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
            msg = str(exc)
            if not msg.startswith(f"{cls.op_name()}:"):  # the op may have named itself already
                msg = f"{cls.op_name()}: {msg}"
            raise ValueError(f"{msg} (input shapes {shapes})") from None
        many = isinstance(raw, tuple)
        arrays = raw if many else (raw,)
        outputs = tuple(Tensor._from_op(a, record) for a in arrays)
        if record:
            ctx.inputs = tuple(t if t.creator is None and t.requires_grad else Edge(t)
                               for t in tensors)
            ctx.generation = max(t.generation for t in tensors)
            ctx.output_meta = tuple((a.shape, a.dtype, backend.get_array_module(a)) for a in arrays)
            ctx.outputs = tuple(weakref.ref(t) for t in outputs)
            for i, t in enumerate(outputs):
                t.creator, t.output_index = ctx, i
                t.generation = ctx.generation + 1
        return outputs if many else outputs[0]


def _as_tensors(cls, inputs, Tensor) -> tuple:
    """Wrap constants as Tensors of the op's dtype; check devices and floating dtypes agree."""
    ref = next((t for t in inputs if isinstance(t, Tensor) and t.dtype.kind == "f"), None)
    if ref is None:
        ref = next((t for t in inputs if isinstance(t, Tensor)), None)
    dtype = ref.dtype if ref is not None else None
    if (dtype is None or dtype.kind != "f") and any(isinstance(x, float) for x in inputs):
        dtype = np.dtype(np.float32)  # int_tensor * 0.5 is float32, never truncated to int
    out = []
    for x in inputs:
        if not isinstance(x, Tensor):
            # A Python scalar or array is a constant of the tensor's dtype: x * 2.0 stays float32.
            xp = backend.get_array_module(ref.data) if ref is not None else None
            x = Tensor(x if xp is None else xp.asarray(x, dtype=dtype), dtype=dtype,
                       device=ref.device if ref is not None else "cpu")
        elif dtype is not None and dtype.kind == "f" and x.dtype.kind in "biu":
            # an integer/boolean tensor in a float op is a constant of the float dtype
            # (NumPy would promote float32 with int64 to float64)
            x = Tensor._from_op(x.data.astype(dtype), False)
        out.append(x)
    devices = {t.device for t in out}
    if len(devices) > 1:
        raise RuntimeError(f"{cls.op_name()}: tensors on different devices {sorted(devices)}; "
                           f"move them to one device with .to('cpu') or .to('cuda')")
    floats = {t.dtype for t in out if t.dtype.kind == "f"}  # (str(dtype) is slow: errors only)
    if len(floats) > 1:
        names = sorted(str(d) for d in floats)
        raise TypeError(f"{cls.op_name()}: tensors of different float dtypes {names}; "
                        f"convert one with .float() or .double() (minivit never promotes silently)")
    return tuple(out)


from . import autocast as _autocast  # noqa: E402  (autocast.py defines an op: imported last)
