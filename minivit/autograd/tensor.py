"""``Tensor``: an array (NumPy or CuPy), its gradient, and the op that made it."""
from __future__ import annotations

import numpy as np

from . import backend
from .grad_mode import is_grad_enabled


class Tensor:
    """A node value of the graph.

    ``data`` is the raw array; ``grad`` is a Tensor (or None) filled by ``backward``;
    ``creator`` is the ``Function`` that produced it (None for leaves, e.g. parameters).
    """

    __array_priority__ = 1000  # ndarray (op) Tensor -> Tensor's reflected operator
    __hash__ = object.__hash__  # hashable by identity, although == is elementwise

    def __init__(self, data, requires_grad: bool = False, dtype=None, device: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        if isinstance(data, np.generic):  # a NumPy scalar keeps its dtype, like an array
            data = np.asarray(data)
        if device is not None:
            device = backend.check_device(device)
        if backend.is_array(data):
            if dtype is not None and data.dtype != np.dtype(dtype):
                data = data.astype(dtype)
            if device is not None:
                data = backend.to_device(data, device)
        else:
            arr = np.asarray(data, dtype=dtype)
            if dtype is None and arr.dtype == np.float64:
                arr = arr.astype(np.float32)  # Python floats make float32 tensors
            data = arr if device in (None, "cpu") else backend.to_device(arr, device)
        self.data = data
        self.grad: Tensor | None = None
        self.creator = None
        self.output_index = 0   # which of its creator's outputs this is
        self.generation = 0
        self.retains_grad = False
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _from_op(cls, array, requires_grad: bool) -> "Tensor":
        if isinstance(array, np.generic):  # NumPy ops on 0-d arrays return scalars
            array = np.asarray(array)
        t = cls.__new__(cls)
        t.data, t.grad, t.creator, t.output_index, t.generation = array, None, None, 0, 0
        t.retains_grad = False
        t.requires_grad = requires_grad and array.dtype.kind == "f"
        return t

    # --- autograd ------------------------------------------------------------------------
    def requires_grad_(self, flag: bool = True) -> "Tensor":
        if flag and self.data.dtype.kind not in "fc":
            raise TypeError(f"only floating-point tensors can require gradients; this one is "
                            f"{self.data.dtype} (convert it with .float() first)")
        self.requires_grad = flag
        return self

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Fill ``.grad`` of every leaf this tensor depends on (see ``engine.backward``)."""
        from .engine import backward  # noqa: PLC0415

        backward(self, grad, retain_graph)

    def retain_grad(self) -> None:
        """Keep this non-leaf tensor's gradient in ``.grad`` after backward."""
        self.retains_grad = True

    _post_accumulate_grad_hooks = None   # {id: hook}, made on first registration

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(self)`` right after backward has added a gradient into this leaf's
        ``.grad`` (PyTorch's name), while the rest of backward still runs. Data parallelism
        uses it to start reducing a bucket of gradients as soon as they are all there.
        Returns a handle; ``handle.remove()`` takes the hook out.

        >>> import minivit
        >>> w = minivit.tensor([1.0, 2.0], requires_grad=True)
        >>> seen = []
        >>> h = w.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.tolist()))
        >>> (w * 3).sum().backward(); seen
        [[3.0, 3.0]]
        """
        from collections import OrderedDict  # noqa: PLC0415

        from .hooks import add_hook  # noqa: PLC0415

        if self.creator is not None:
            raise RuntimeError("register_post_accumulate_grad_hook: only a leaf tensor (a "
                               "parameter) accumulates into .grad; this one was made by an op")
        if self._post_accumulate_grad_hooks is None:
            self._post_accumulate_grad_hooks = OrderedDict()
        return add_hook(self._post_accumulate_grad_hooks, hook)

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor._from_op(self.data, False)

    @property
    def is_leaf(self) -> bool:
        return self.creator is None

    @property
    def grad_fn(self):
        """The graph node (``Function``) that made this tensor; None for leaves and for tensors
        made without gradient. Its repr names the op: ``<GeluBackward>``.

        >>> import minivit
        >>> x = minivit.tensor([1.0, 2.0], requires_grad=True)
        >>> x.grad_fn is None, (x * 2).grad_fn
        (True, <MulBackward>)
        """
        return self.creator

    _grad_hooks = None   # hooks of a leaf, by handle id (a non-leaf's live on its creator)

    def register_hook(self, hook):
        """Call ``hook(grad)`` each time this tensor's gradient has been computed (the sum of
        every use of it in the graph); a non-None result replaces the gradient from there on
        (what flows to the inputs, ``.grad`` of a leaf). Returns a handle with ``.remove()``.

        >>> import minivit
        >>> x = minivit.tensor([1.0, 2.0], requires_grad=True)
        >>> y = x * 3
        >>> h = y.register_hook(lambda g: g * 10)
        >>> y.sum().backward(); x.grad.numpy().tolist()
        [30.0, 30.0]
        """
        from .hooks import add_hook  # noqa: PLC0415

        if not self.requires_grad:
            raise RuntimeError("register_hook: this tensor does not require grad, so no "
                               "gradient will be computed for it (set requires_grad=True "
                               "on a leaf it depends on)")
        if self.creator is None:
            if self._grad_hooks is None:
                self._grad_hooks = {}
            return add_hook(self._grad_hooks, hook)
        return add_hook(self.creator.tensor_hooks(self.output_index), hook)

    # --- array facts ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    def size(self, dim: int | None = None):
        """PyTorch's ``size()``: the shape as a tuple, or the length of dimension ``dim``
        (the number of elements is ``numel()``)."""
        if dim is None:
            return self.shape
        if not isinstance(dim, int) or not -max(self.ndim, 1) <= dim < max(self.ndim, 1):
            raise IndexError(f"size: dimension {dim!r} is out of range for a tensor with "
                             f"{self.ndim} dimensions")
        return self.shape[dim]

    def dim(self) -> int:
        """The number of dimensions (``ndim``), as PyTorch's ``dim()``."""
        return self.data.ndim

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    def numel(self) -> int:
        """The number of elements."""
        return int(self.data.size)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def numpy(self) -> np.ndarray:
        """The data as a NumPy array (copied from the GPU if needed; shares memory on the CPU)."""
        return backend.as_numpy(self.data)

    def item(self) -> float:
        if self.numel() != 1:
            raise ValueError(f"item() needs a tensor with one element, this one has shape {self.shape}")
        return self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        extra = ""
        if self.dtype != np.float32:
            extra += f", dtype={self.dtype}"
        if self.device != "cpu":
            extra += f", device='{self.device}'"
        if self.creator is not None:
            extra += f", grad_fn={self.creator!r}"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    # --- conversions ---------------------------------------------------------------------
    def to(self, target) -> "Tensor":
        """``to("cpu" | "cuda")`` moves the tensor; ``to(np.float64)`` or ``to("float64")``
        changes its dtype. Both are differentiable."""
        if isinstance(target, str) and target.split(":")[0] in backend.DEVICES:
            device = backend.check_device(target)
            if device == self.device:
                return self
            return ops.ToDevice.apply(self, device=device)
        return self.astype(target)

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def cuda(self) -> "Tensor":
        return self.to("cuda")

    def astype(self, dtype) -> "Tensor":
        dtype = np.dtype(dtype)
        if dtype == self.dtype:
            return self
        if self.requires_grad and dtype.kind == "f":
            return ops.Cast.apply(self, dtype=dtype)
        return Tensor._from_op(self.data.astype(dtype), False)

    def float(self) -> "Tensor":
        return self.astype(np.float32)

    def double(self) -> "Tensor":
        return self.astype(np.float64)

    def long(self) -> "Tensor":
        return self.astype(np.int64)

    def contiguous(self) -> "Tensor":
        return self

    # --- operators -----------------------------------------------------------------------
    def __add__(self, o): return ops.add(self, o)
    def __radd__(self, o): return ops.add(o, self)
    def __sub__(self, o): return ops.sub(self, o)
    def __rsub__(self, o): return ops.sub(o, self)
    def __mul__(self, o): return ops.mul(self, o)
    def __rmul__(self, o): return ops.mul(o, self)
    def __truediv__(self, o): return ops.div(self, o)
    def __rtruediv__(self, o): return ops.div(o, self)
    def __neg__(self): return ops.neg(self)
    def __pow__(self, o): return ops.pow(self, o)
    def __rpow__(self, o): return ops.Pow.apply(o, self)
    def __matmul__(self, o): return ops.matmul(self, o)
    def __rmatmul__(self, o): return ops.matmul(o, self)
    def __getitem__(self, index): return ops.getitem(self, index)

    def _compare(self, other, fn) -> "Tensor":
        other = other.data if isinstance(other, Tensor) else other
        return Tensor._from_op(fn(self.data, other), False)

    def __eq__(self, o): return self._compare(o, lambda a, b: a == b)  # type: ignore[override]
    def __ne__(self, o): return self._compare(o, lambda a, b: a != b)  # type: ignore[override]
    def __lt__(self, o): return self._compare(o, lambda a, b: a < b)
    def __le__(self, o): return self._compare(o, lambda a, b: a <= b)
    def __gt__(self, o): return self._compare(o, lambda a, b: a > b)
    def __ge__(self, o): return self._compare(o, lambda a, b: a >= b)

    def __bool__(self) -> bool:
        if self.numel() != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous; "
                             f"use .any() or .all()")
        return bool(self.item())

    def __float__(self) -> float:
        return float(self.item())   # float(loss), as PyTorch: one element only

    def __int__(self) -> int:
        return int(self.item())

    def any(self) -> bool:
        return bool(self.data.any())

    def all(self) -> bool:
        return bool(self.data.all())

    def argmax(self, dim=None, keepdim=False, *, axis=None, keepdims=None) -> "Tensor":
        axis, keepdims = ops.axis_of("argmax", axis, dim, keepdims, keepdim)
        return Tensor._from_op(self.data.argmax(axis=axis, keepdims=keepdims), False)

    def argmin(self, dim=None, keepdim=False, *, axis=None, keepdims=None) -> "Tensor":
        axis, keepdims = ops.axis_of("argmin", axis, dim, keepdims, keepdim)
        return Tensor._from_op(self.data.argmin(axis=axis, keepdims=keepdims), False)

    # --- methods (PyTorch names; ``dim``/``keepdim`` are accepted for ``axis``/``keepdims``) -
    def sum(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return ops.sum(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def mean(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return ops.mean(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def max(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        """Max; over one ``dim`` the pair ``(values, indices)`` as in PyTorch, over ``axis``
        (NumPy) the values only."""
        return ops.max(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def min(self, dim=None, keepdim=False, *, axis=None, keepdims=None):
        return ops.min(self, dim, keepdim, axis=axis, keepdims=keepdims)

    def var(self, axis=None, ddof=0, keepdims=False, *, dim=None, keepdim=None, correction=None):
        return ops.var(self, axis, ddof, keepdims, dim=dim, keepdim=keepdim, correction=correction)

    def std(self, axis=None, ddof=0, keepdims=False, *, dim=None, keepdim=None, correction=None):
        return ops.std(self, axis, ddof, keepdims, dim=dim, keepdim=keepdim, correction=correction)

    def logsumexp(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return ops.logsumexp(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def softmax(self, axis=-1, *, dim=None):
        return ops.softmax(self, axis, dim=dim)

    def log_softmax(self, axis=-1, *, dim=None):
        return ops.log_softmax(self, axis, dim=dim)

    def norm(self, p=2, dim=None, keepdim=False):
        """The p-norm over ``dim`` (all elements by default), as ``torch.norm``."""
        return ops.norm(self, p, dim, keepdim)

    def clone(self) -> "Tensor":
        """A differentiable copy with its own memory."""
        return ops.clone(self)

    def repeat(self, *sizes) -> "Tensor":
        """Tile along each dimension, as PyTorch's ``repeat`` (NumPy's ``tile``)."""
        return ops.repeat(self, *sizes)

    def masked_fill(self, mask, value) -> "Tensor":
        """``value`` where the boolean ``mask`` is True."""
        return ops.masked_fill(self, mask, value)

    def t(self) -> "Tensor":
        """The transpose of a matrix (a tensor of at most 2 dimensions), as PyTorch's ``t()``."""
        if self.ndim > 2:
            raise ValueError(f"t() expects a tensor with at most 2 dimensions, got shape "
                             f"{self.shape}; use transpose(dim0, dim1) or mT")
        return self if self.ndim < 2 else ops.swapaxes(self, 0, 1)

    def reshape(self, *shape): return ops.reshape(self, *shape)
    view = reshape
    def permute(self, *axes): return ops.permute(self, *axes)
    def transpose(self, dim0: int, dim1: int): return ops.swapaxes(self, dim0, dim1)
    def swapaxes(self, a: int, b: int): return ops.swapaxes(self, a, b)
    def flatten(self, start_dim=0, end_dim=-1): return ops.flatten(self, start_dim, end_dim)
    def squeeze(self, axis=None, *, dim=None): return ops.squeeze(self, axis, dim=dim)
    def unsqueeze(self, axis=None, *, dim=None): return ops.unsqueeze(self, axis, dim=dim)
    def broadcast_to(self, shape): return ops.broadcast_to(self, shape)

    def expand(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        lead = len(shape) - self.ndim
        if -1 in shape[:max(lead, 0)]:  # shape[i - lead] would wrap around to another dim
            raise ValueError(f"expand: -1 (keep the size) is not allowed in a new leading "
                             f"dimension; expanding shape {self.shape} to {tuple(shape)}")
        full = [n if n != -1 else self.shape[i - lead] for i, n in enumerate(shape)]
        return ops.broadcast_to(self, tuple(full))

    @property
    def T(self):
        return ops.permute(self, tuple(reversed(range(self.ndim))))

    @property
    def mT(self):
        return ops.swapaxes(self, -1, -2)

    def matmul(self, o): return ops.matmul(self, o)
    def exp(self): return ops.exp(self)
    def log(self): return ops.log(self)
    def sqrt(self): return ops.sqrt(self)
    def abs(self): return ops.abs(self)
    def tanh(self): return ops.tanh(self)
    def sigmoid(self): return ops.sigmoid(self)
    def relu(self): return ops.relu(self)
    def clip(self, lo=None, hi=None): return ops.clip(self, lo, hi)
    clamp = clip
    def pow(self, p): return ops.pow(self, p)


# --- creation ---------------------------------------------------------------------------------

def tensor(data, requires_grad: bool = False, dtype=None, device: str = "cpu") -> Tensor:
    """A new leaf tensor: ``minivit.tensor([[1., 2.]], requires_grad=True)``.

    Python floats give float32, ints int64; NumPy arrays keep their dtype unless ``dtype`` says.
    """
    if isinstance(data, Tensor):
        data = data.data
    if backend.is_array(data):
        data = data.copy()
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def _shape(shape) -> tuple:
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape


def _xp(device: str):
    device = backend.check_device(device)
    return np if device == "cpu" else backend._import_cupy()


def zeros(*shape, dtype=np.float32, device="cpu", requires_grad=False) -> Tensor:
    return Tensor(_xp(device).zeros(_shape(shape), dtype=dtype), requires_grad=requires_grad)


def ones(*shape, dtype=np.float32, device="cpu", requires_grad=False) -> Tensor:
    return Tensor(_xp(device).ones(_shape(shape), dtype=dtype), requires_grad=requires_grad)


def full(shape, value, dtype=np.float32, device="cpu", requires_grad=False) -> Tensor:
    return Tensor(_xp(device).full(_shape((shape,)), value, dtype=dtype), requires_grad=requires_grad)


def randn(*shape, dtype=np.float32, device="cpu", requires_grad=False) -> Tensor:
    """Standard normal samples from minivit's generator (``minivit.manual_seed``)."""
    device = backend.check_device(device)
    data = backend.rng(device).standard_normal(_shape(shape)).astype(dtype)
    return Tensor(data, requires_grad=requires_grad)


def rand(*shape, dtype=np.float32, device="cpu", requires_grad=False) -> Tensor:
    device = backend.check_device(device)
    data = backend.rng(device).random(_shape(shape)).astype(dtype)
    return Tensor(data, requires_grad=requires_grad)


def arange(start, stop=None, step=1, dtype=None, device="cpu") -> Tensor:
    data = _xp(device).arange(start, stop, step) if stop is not None else _xp(device).arange(start)
    if dtype is None and data.dtype == np.float64:
        dtype = np.float32
    return Tensor(data, dtype=dtype)


def zeros_like(t: Tensor, dtype=None) -> Tensor:
    return Tensor(backend.get_array_module(t.data).zeros_like(t.data, dtype=dtype))


def ones_like(t: Tensor, dtype=None) -> Tensor:
    return Tensor(backend.get_array_module(t.data).ones_like(t.data, dtype=dtype))


from . import ops  # noqa: E402  (the ops import Function, which imports this module lazily)
