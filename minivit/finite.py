"""Catching a run that diverged (NaN or inf) without slowing the training step down.

``LossWatch`` keeps each step's loss on the device (one tiny copy into a buffer, no
device-to-host transfer) and reads the buffer every ``log_interval`` steps and at the end
of the epoch: a non-finite loss is found within ``log_interval`` steps, named by its step,
and costs no host synchronisation per step on the GPU. ``non_finite_state`` checks the
weights, the optimizer state and the test loss before a checkpoint is written, so a
checkpoint never holds NaN or inf.
"""
from __future__ import annotations

import math

import numpy as np

from .autograd import backend


class NonFiniteLoss(ArithmeticError):
    """The training loss became NaN or inf at ``step``."""

    def __init__(self, step: int, value: float):
        super().__init__(f"loss became {value} at step {step}")
        self.step, self.value = step, value


class LossWatch:
    """The losses of the steps since the last ``check``, kept on the loss's device.

    ``add(loss, step)`` stores the 0-d loss array (no host sync) and says whether
    ``interval`` losses are waiting; ``check()`` reads them to the host in one transfer,
    raises ``NonFiniteLoss`` naming the first non-finite one, else returns them."""

    def __init__(self, interval: int):
        self.interval = int(interval)
        self.buffer = None
        self.count = 0
        self.first_step = 0

    def add(self, loss, step: int) -> bool:
        if self.buffer is None:
            xp = backend.get_array_module(loss)
            self.buffer = xp.empty(self.interval, dtype=loss.dtype)
        if self.count == 0:
            self.first_step = step
        self.buffer[self.count] = loss  # a device-side copy
        self.count += 1
        return self.count >= self.interval

    def check(self) -> np.ndarray:
        if self.count == 0:
            return np.empty(0, dtype=np.float32)
        losses = backend.as_numpy(self.buffer[:self.count])  # the one host read
        self.count = 0
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise NonFiniteLoss(self.first_step + int(bad[0]), float(losses[bad[0]]))
        return losses


def _array_leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _array_leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _array_leaves(v, f"{prefix}.{i}")
    elif backend.is_array(tree) and tree.dtype.kind in "fc":
        yield prefix, tree
    elif isinstance(tree, float):
        yield prefix, tree


def non_finite_state(model, optimizer, test_loss: float) -> str | None:
    """What is NaN or inf among the test loss, the parameters and buffers, and the
    optimizer state (``None`` if nothing): the thing to say before refusing to save."""
    if not math.isfinite(test_loss):
        return f"test loss ({test_loss})"
    for what, tree in (("parameter", model.state_dict()), ("optimizer state", optimizer.state_dict())):
        leaves = list(_array_leaves(tree))
        flags = [bool(backend.get_array_module(v).isfinite(v).all()) if backend.is_array(v)
                 else math.isfinite(v) for _, v in leaves]
        for (name, _), ok in zip(leaves, flags):
            if not ok:
                return f"{what} {name}"
    return None
