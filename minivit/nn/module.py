"""``Module`` and ``Parameter``: the containers every layer and model is built from.

A Module registers what is assigned to it: ``self.w = Parameter(...)`` becomes a parameter,
``self.fc = Linear(...)`` a sub-module, and ``self.register_buffer("idx", array)`` a buffer
(saved in ``state_dict`` but not trained). Names are dotted paths, as in PyTorch::

    class Net(Module):
        def __init__(self):
            super().__init__()
            self.fc = Linear(4, 2)            # parameters "fc.weight", "fc.bias"
        def forward(self, x):
            return self.fc(x)
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple
from typing import Callable, Iterator

import numpy as np

from ..autograd import backend
from ..autograd.hooks import BackwardHook, RemovableHandle, add_hook
from ..autograd.tensor import Tensor


class Parameter(Tensor):
    """A trainable tensor: ``requires_grad=True``; lists and Python floats become float32.

    ``Parameter(minivit.zeros(3))``, ``Parameter(np.ones((2, 2), np.float32))``.
    Arrays keep their floating dtype; the array is used as is (no copy), as PyTorch does.
    """

    def __init__(self, data=None, requires_grad: bool = True):
        if data is None:
            data = np.zeros((0,), dtype=np.float32)
        if isinstance(data, Tensor):
            data = data.data
        if backend.is_array(data) and data.dtype.kind != "f":
            data = data.astype(np.float32)
        super().__init__(data, dtype=None if backend.is_array(data) else np.float32)
        self.requires_grad_(requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


def _as_array(value):
    """A buffer's raw array: accepts a Tensor, an array or anything ``np.asarray`` takes."""
    if isinstance(value, Tensor):
        return value.data
    if backend.is_array(value):
        return value
    return np.asarray(value)


_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class StateDictError(RuntimeError):
    """``load_state_dict`` found missing, unexpected or wrongly shaped keys (all listed)."""


class Module:
    """Base class of layers and models (PyTorch's ``nn.Module`` API)."""

    training: bool
    # hooks, by handle id; None until the first is registered, so that a call without hooks
    # costs one test of three attributes (see ``__call__``)
    _forward_pre_hooks: OrderedDict | None = None
    _forward_hooks: OrderedDict | None = None
    _backward_hooks: OrderedDict | None = None

    def __init__(self):
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())

    # --- registration ----------------------------------------------------------------------
    def _check_init(self, name: str) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__() is called "
                                 f"(call super().__init__() first in {type(self).__name__})")

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, Parameter):
            self._check_init(name)
            self._forget(name)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._check_init(name)
            self._forget(name)
            self._modules[name] = value
        elif "_parameters" in self.__dict__ and name in self._parameters:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to parameter {name!r} "
                                f"of {type(self).__name__} (expected nn.Parameter or None)")
            self._parameters[name] = None
        elif "_modules" in self.__dict__ and name in self._modules:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} to sub-module {name!r} "
                                f"of {type(self).__name__} (expected nn.Module or None)")
            self._modules[name] = None
        elif "_buffers" in self.__dict__ and name in self._buffers:
            self._buffers[name] = None if value is None else _buffer_tensor(value)
        else:
            object.__setattr__(self, name, value)

    def _forget(self, name: str) -> None:
        for d in (self.__dict__, self._parameters, self._modules, self._buffers):
            d.pop(name, None)
        self._non_persistent.discard(name)

    def __getattr__(self, name: str):
        # only called when normal lookup fails: parameters, buffers, sub-modules
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (or None, e.g. a disabled bias) under ``name``."""
        self._check_init(name)
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be an nn.Parameter or None, "
                            f"got {type(param).__name__}")
        self._forget(name)
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        """Register a non-trained array (running statistics, an index table).

        ``persistent=False`` keeps it out of ``state_dict`` (timm's relative position index).
        Accessing ``self.name`` returns a Tensor without gradient.
        """
        self._check_init(name)
        if "." in name or not name:
            raise KeyError(f"register_buffer: invalid buffer name {name!r}")
        self._forget(name)
        self._buffers[name] = None if tensor is None else _buffer_tensor(tensor)
        if not persistent:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        self._check_init(name)
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be an nn.Module, "
                            f"got {type(module).__name__}")
        self._forget(name)
        self._modules[name] = module

    register_module = add_module

    # --- iteration -------------------------------------------------------------------------
    def named_modules(self, prefix: str = "",
                      memo: set | None = None) -> Iterator[tuple[str, Module]]:
        """This module (name ``""``) and every sub-module, depth first, each once."""
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix: str = "",
                         recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """``("blocks.0.attn.qkv.weight", Parameter)``, in registration order, shared ones once."""
        seen = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mprefix, m in mods:
            for name, p in m._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mprefix}.{name}" if mprefix else name), p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Tensor]]:
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mprefix, m in mods:
            for name, b in m._buffers.items():
                if b is not None:
                    yield (f"{mprefix}.{name}" if mprefix else name), b

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Total number of parameter elements (``trainable_only``: those with requires_grad)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def get_submodule(self, target: str) -> Module:
        m = self
        for part in target.split(".") if target else []:
            if part not in m._modules or m._modules[part] is None:
                raise AttributeError(f"{type(m).__name__} has no sub-module {part!r} "
                                     f"(in {target!r})")
            m = m._modules[part]
        return m

    # --- modes, devices, gradients ---------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Training mode (dropout active, BatchNorm uses batch statistics), recursively."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's ``.grad`` (to None, or to zeros)."""
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad = Tensor(backend.get_array_module(p.data).zeros_like(p.data))

    def _apply_arrays(self, fn: Callable, floats_only: bool = False) -> Module:
        """Replace the array of every parameter, its gradient and every buffer by ``fn(array)``,
        keeping the Tensor objects (optimizers hold references to the Parameters)."""
        for m in self.modules():
            for store in (m._parameters, m._buffers):
                for t in store.values():
                    if t is None or (floats_only and t.dtype.kind != "f"):
                        continue
                    t.data = fn(t.data)
                    if t.grad is not None:
                        t.grad = Tensor(fn(t.grad.data))
        return self

    def to(self, target) -> Module:
        """``to("cpu" | "cuda")`` moves parameters and buffers; ``to("float64")`` (or a NumPy
        dtype) casts the floating ones. Parameter identity is kept; returns ``self``."""
        if isinstance(target, str) and target.split(":")[0] in backend.DEVICES:
            device = backend.check_device(target)
            return self._apply_arrays(lambda a: backend.to_device(a, device))
        try:
            dtype = np.dtype(target)
        except TypeError:
            raise ValueError(f"Module.to: unknown device or dtype {target!r}; expected 'cpu', "
                             f"'cuda' or a float dtype") from None
        if dtype.kind != "f":
            raise TypeError(f"Module.to: only floating dtypes are allowed, got {dtype}")
        return self._apply_arrays(lambda a: a.astype(dtype, copy=False), floats_only=True)

    def cpu(self) -> Module:
        return self.to("cpu")

    def cuda(self) -> Module:
        return self.to("cuda")

    def float(self) -> Module:
        return self.to(np.float32)

    def double(self) -> Module:
        return self.to(np.float64)

    def apply(self, fn: Callable[[Module], None]) -> Module:
        """Call ``fn`` on every sub-module (children first) and then on ``self``."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # --- state dict ------------------------------------------------------------------------
    def _state_items(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        """(dotted name, tensor) of every parameter and persistent buffer; a module shared
        under two names is listed under both (as PyTorch's state_dict)."""
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent:
                yield prefix + name, b
        for name, m in self._modules.items():
            if m is not None:
                yield from m._state_items(f"{prefix}{name}.")

    def state_dict(self) -> OrderedDict:
        """Parameters and persistent buffers as NumPy arrays (copies), by dotted name."""
        return OrderedDict((k, backend.as_numpy(t.data).copy()) for k, t in self._state_items())

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays into the existing parameters and buffers (in place, cast to their dtype).

        Missing and unexpected keys (with ``strict``) and shape mismatches (always) raise ONE
        ``StateDictError`` listing all of them, before anything is copied. Returns
        ``(missing_keys, unexpected_keys)`` like PyTorch.
        """
        own = OrderedDict(self._state_items())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = []
        arrays = {}
        for k, t in own.items():
            if k not in state_dict:
                continue
            a = _as_array(state_dict[k])
            if tuple(a.shape) != t.shape:
                mismatched.append(f"{k}: checkpoint {tuple(a.shape)}, model {t.shape}")
            arrays[k] = a
        problems = []
        if strict and missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            problems.append(f"wrong shapes ({len(mismatched)}): {'; '.join(mismatched)}")
        if problems:
            raise StateDictError(f"error(s) loading state_dict into {type(self).__name__}:\n  "
                                 + "\n  ".join(problems))
        for k, a in arrays.items():
            t = own[k]
            a = backend.to_device(backend.as_numpy(a) if backend.device_of(a) != t.device else a,
                                  t.device)
            t.data[...] = a.astype(t.dtype, copy=False)
        return _IncompatibleKeys(missing, unexpected)

    # --- calling and printing ----------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def __call__(self, *args, **kwargs):
        if self._forward_pre_hooks or self._forward_hooks or self._backward_hooks:
            return self._call_with_hooks(args, kwargs)
        return self.forward(*args, **kwargs)

    def _call_with_hooks(self, args: tuple, kwargs: dict):
        """``__call__`` when hooks are registered, in PyTorch's order: forward-pre hooks (may
        replace the args), the backward hook's identity over the tensor inputs, ``forward``,
        forward hooks (may replace the output), the backward hook's identity over the output."""
        for hook_id, hook in list((self._forward_pre_hooks or {}).items()):
            if hook_id in self._kwargs_hooks:
                result = hook(self, args, kwargs)
                if result is not None:
                    if not (isinstance(result, tuple) and len(result) == 2):
                        raise RuntimeError(f"forward pre-hook with kwargs of "
                                           f"{type(self).__name__} must return None or a tuple "
                                           f"(args, kwargs), got {type(result).__name__}")
                    args, kwargs = result
            else:
                result = hook(self, args)
                if result is not None:
                    args = result if isinstance(result, tuple) else (result,)
        bw = None
        if self._backward_hooks:
            bw = BackwardHook(self, self._backward_hooks.values())
            args = bw.setup_input_hook(args)
        output = self.forward(*args, **kwargs)
        for hook_id, hook in list((self._forward_hooks or {}).items()):
            if hook_id in self._kwargs_hooks:
                result = hook(self, args, kwargs, output)
            else:
                result = hook(self, args, output)
            if result is not None:
                output = result
        if bw is not None:
            output = bw.setup_output_hook(output)
        return output

    @property
    def _kwargs_hooks(self) -> set:
        if "_with_kwargs" not in self.__dict__:
            object.__setattr__(self, "_with_kwargs", set())
        return self.__dict__["_with_kwargs"]

    def _hook_dict(self, name: str) -> OrderedDict:
        if self.__dict__.get(name) is None:
            object.__setattr__(self, name, OrderedDict())
        return self.__dict__[name]

    def register_forward_pre_hook(self, hook: Callable, *, prepend: bool = False,
                                  with_kwargs: bool = False) -> RemovableHandle:
        """Call ``hook(module, args)`` before every ``forward``; a non-None result replaces the
        positional args (a single value is wrapped in a tuple). With ``with_kwargs=True`` it is
        ``hook(module, args, kwargs)`` and may return ``(args, kwargs)``. ``prepend`` runs it
        before the hooks already registered. Returns a handle whose ``.remove()`` undoes this.

        >>> import minivit
        >>> from minivit import nn
        >>> lin = nn.Linear(2, 2)
        >>> h = lin.register_forward_pre_hook(lambda m, args: (args[0] * 0,))
        >>> lin(minivit.ones(1, 2)).numpy().tolist() == [lin.bias.numpy().tolist()]
        True
        >>> h.remove()
        """
        handle = add_hook(self._hook_dict("_forward_pre_hooks"), hook, prepend,
                          self._kwargs_hooks)
        if with_kwargs:
            self._kwargs_hooks.add(handle.id)
        return handle

    def register_forward_hook(self, hook: Callable, *, prepend: bool = False,
                              with_kwargs: bool = False) -> RemovableHandle:
        """Call ``hook(module, args, output)`` after every ``forward``; a non-None result
        replaces the output. With ``with_kwargs=True`` it is ``hook(module, args, kwargs,
        output)``. Returns a handle whose ``.remove()`` undoes this.

        >>> import minivit
        >>> from minivit import nn
        >>> seen = []
        >>> mlp = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
        >>> h = mlp[1].register_forward_hook(lambda m, args, out: seen.append(out.shape))
        >>> _ = mlp(minivit.ones(3, 4)); seen
        [(3, 8)]
        >>> h.remove(); _ = mlp(minivit.ones(3, 4)); seen
        [(3, 8)]
        """
        handle = add_hook(self._hook_dict("_forward_hooks"), hook, prepend, self._kwargs_hooks)
        if with_kwargs:
            self._kwargs_hooks.add(handle.id)
        return handle

    def register_full_backward_hook(self, hook: Callable, *,
                                    prepend: bool = False) -> RemovableHandle:
        """Call ``hook(module, grad_input, grad_output)`` when the gradients with respect to
        the module's tensor inputs have been computed: tuples of Tensors (None where an input
        needs no gradient). A non-None result replaces ``grad_input`` for the rest of the
        backward pass. Implemented as PyTorch does, with identity ops around the module's
        inputs and outputs (``minivit/autograd/hooks.py``).

        >>> import minivit
        >>> from minivit import nn
        >>> lin = nn.Linear(3, 2)
        >>> h = lin.register_full_backward_hook(lambda m, gin, gout: (gin[0] * 2,))
        >>> x = minivit.ones(1, 3, requires_grad=True)
        >>> lin(x).sum().backward()   # d sum(x W^T + b)/dx = sum of W's rows, doubled
        >>> bool(np.allclose(x.grad.numpy(), 2 * lin.weight.numpy().sum(0)))
        True
        """
        return add_hook(self._hook_dict("_backward_hooks"), hook, prepend)

    def extra_repr(self) -> str:
        """The text inside the parentheses of this layer's repr (``in_features=4, ...``)."""
        return ""

    def __repr__(self) -> str:
        lines = []
        extra = self.extra_repr()
        if extra:
            lines.extend(extra.split("\n"))
        for name, m in self._modules.items():
            body = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {body}")
        if not lines:
            return f"{type(self).__name__}()"
        if len(lines) == 1 and not self._modules:
            return f"{type(self).__name__}({lines[0]})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def _buffer_tensor(value) -> Tensor:
    """A buffer is a Tensor that never requires grad (it keeps the given array's dtype)."""
    if isinstance(value, Tensor):
        return value if not value.requires_grad else value.detach()
    return Tensor(_as_array(value))


class Identity(Module):
    """Returns its input unchanged (a placeholder where a layer is optional)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class Sequential(Module):
    """Sub-modules called in order; named ``"0"``, ``"1"``, ... (or by an OrderedDict's keys).

    ``Sequential(Linear(4, 8), GELU(), Linear(8, 2))(x)``; ``seq[0]``, ``seq[1:]``, ``len(seq)``.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, m in modules[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(modules):
                self.add_module(str(i), m)

    def __getitem__(self, idx):
        items = list(self._modules.items())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(items[idx]))
        return items[_check_index(idx, len(items), "Sequential")][1]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module: Module) -> Sequential:
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class ModuleList(Module):
    """A list of sub-modules (registered as ``"0"``, ``"1"``, ...); no forward of its own."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(mods[idx])
        return mods[_check_index(idx, len(mods), "ModuleList")]

    def __setitem__(self, idx: int, module: Module) -> None:
        idx = _check_index(idx, len(self), "ModuleList")
        self.add_module(str(idx), module)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def append(self, module: Module) -> ModuleList:
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules) -> ModuleList:
        for m in modules:
            self.append(m)
        return self


class ModuleDict(Module):
    """A dict of sub-modules, by name."""

    def __init__(self, modules=None):
        super().__init__()
        for name, m in dict(modules or {}).items():
            self.add_module(name, m)

    def __getitem__(self, key: str) -> Module:
        return self._modules[key]

    def __setitem__(self, key: str, module: Module) -> None:
        self.add_module(key, module)

    def __contains__(self, key: str) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def values(self):
        return self._modules.values()

    def items(self):
        return self._modules.items()


def _check_index(idx: int, n: int, what: str) -> int:
    if not -n <= idx < n:
        raise IndexError(f"{what} index {idx} is out of range (length {n})")
    return idx % n
