"""Hook handles and the module backward hook (PyTorch's ``torch/utils/hooks.py``).

Every ``register_*hook`` returns a ``RemovableHandle``; ``handle.remove()`` takes the hook out
(also usable as ``with model.register_forward_hook(f): ...``).

A module's full backward hook ``hook(module, grad_input, grad_output)`` needs the gradients
with respect to the module's inputs and outputs, which no single op of the graph sees. As in
PyTorch, ``BackwardHook`` puts an identity op around them: one over the module's tensor
inputs, one over its outputs. Backward reaches the outputs' identity first (it stores
``grad_output``), then, after every op inside the module, the inputs' identity, which calls
the hooks with both and passes on what they return in place of ``grad_input``.
"""
from __future__ import annotations

import itertools
from collections import OrderedDict

from .function import Function

_ids = itertools.count()


class RemovableHandle:
    """Removes the hook it was returned for from its dict(s); ``remove()`` twice is harmless."""

    def __init__(self, *hooks_dicts: dict):
        self.id = next(_ids)
        self._dicts = hooks_dicts

    def remove(self) -> None:
        for d in self._dicts:
            if isinstance(d, set):
                d.discard(self.id)
            else:
                d.pop(self.id, None)

    def __enter__(self) -> "RemovableHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def add_hook(hooks: OrderedDict, hook, prepend: bool = False, *extra: dict) -> RemovableHandle:
    """Put ``hook`` into ``hooks`` (first when ``prepend``); the handle also clears ``extra``."""
    if not callable(hook):
        raise TypeError(f"a hook must be callable, got {type(hook).__name__}")
    handle = RemovableHandle(hooks, *extra)
    hooks[handle.id] = hook
    if prepend:
        hooks.move_to_end(handle.id, last=False)
    return handle


class _Identity(Function):
    """Passes its inputs through unchanged; its backward calls ``fn(grads)`` (a module's
    backward hook) and returns what that gives."""
    name = "backward_hook"

    def forward(ctx, *arrays, fn=None):
        ctx.fn = fn
        return tuple(arrays)

    def backward(ctx, *grads):
        return tuple(ctx.fn(grads))


class BackwardHook:
    """The backward hooks of one module call (made by ``Module.__call__`` only when hooks are
    registered)."""

    def __init__(self, module, hooks):
        self.module, self.hooks = module, list(hooks)
        self.grad_output = None
        self.n_inputs = 0
        self.input_positions: list = []   # positions of the tensor args that require grad

    def _wrap(self, items, on_backward):
        from .grad_mode import is_grad_enabled  # noqa: PLC0415
        from .tensor import Tensor  # noqa: PLC0415

        positions = [i for i, x in enumerate(items) if isinstance(x, Tensor) and x.requires_grad]
        if not positions or not is_grad_enabled():
            return items, positions
        wrapped = _Identity.apply(*[items[i] for i in positions], fn=on_backward)
        wrapped = wrapped if isinstance(wrapped, tuple) else (wrapped,)
        items = list(items)
        for i, t in zip(positions, wrapped):
            items[i] = t
        return items, positions

    def setup_input_hook(self, args: tuple) -> tuple:
        from .tensor import Tensor  # noqa: PLC0415

        self.n_inputs = sum(isinstance(x, Tensor) for x in args)
        self.tensor_index = {}  # position among args -> position among tensor args
        for i, x in enumerate(args):
            if isinstance(x, Tensor):
                self.tensor_index[i] = len(self.tensor_index)
        items, self.input_positions = self._wrap(args, self._on_input_grads)
        return tuple(items)

    def setup_output_hook(self, output):
        from .tensor import Tensor  # noqa: PLC0415

        single = isinstance(output, Tensor)
        items = [output] if single else list(output) if isinstance(output, (tuple, list)) \
            else None
        if items is None:
            return output
        self.n_outputs = len(items)
        items, self.output_positions = self._wrap(items, self._on_output_grads)
        if single:
            return items[0]
        return type(output)(items)

    def _on_output_grads(self, grads):
        full = [None] * self.n_outputs
        for i, g in zip(self.output_positions, grads):
            full[i] = g
        self.grad_output = tuple(full)
        if not self.input_positions:   # no input wants a gradient: the hooks run now
            self._call_hooks((None,) * self.n_inputs)
        return grads

    def _on_input_grads(self, grads):
        full = [None] * self.n_inputs
        for pos, g in zip(self.input_positions, grads):
            full[self.tensor_index[pos]] = g
        full = self._call_hooks(tuple(full))
        return [full[self.tensor_index[pos]] for pos in self.input_positions]

    def _call_hooks(self, grad_input: tuple) -> tuple:
        from .tensor import Tensor  # noqa: PLC0415

        grad_output = tuple(None if g is None else Tensor(g) for g in (self.grad_output or ()))
        current = tuple(None if g is None else Tensor(g) for g in grad_input)
        for hook in self.hooks:
            result = hook(self.module, current, grad_output)
            if result is None:
                continue
            result = tuple(result) if isinstance(result, (tuple, list)) else (result,)
            if len(result) != len(current):
                raise RuntimeError(f"backward hook {getattr(hook, '__name__', hook)!r} of "
                                   f"{type(self.module).__name__} returned {len(result)} "
                                   f"gradients; expected {len(current)} (one per tensor input)")
            current = result
        out = []
        for g, old in zip(current, grad_input):
            if g is None or old is None:
                out.append(None if old is None else old * 0)
            else:
                out.append(g.data if isinstance(g, Tensor) else g)
        return tuple(out)
