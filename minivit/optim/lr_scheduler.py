"""Learning-rate schedules (PyTorch's ``torch.optim.lr_scheduler`` protocol), stepped per
optimizer step or per epoch — whatever the caller counts::

    sched = WarmupCosineLR(opt, warmup_steps=steps_per_epoch, total_steps=epochs * steps_per_epoch)
    for batch in loader:
        loss.backward(); opt.step(); opt.zero_grad(); sched.step()

Every schedule here is a closed form ``lr(t) = f(base_lr, t)`` of the step counter
``last_epoch`` (named as in PyTorch), so a resumed schedule gives exactly the same learning
rates as an uninterrupted one. The constructor sets the learning rates of step 0; the
base learning rates are the groups' ``initial_lr`` (set from ``lr`` on first use, as PyTorch).
"""
from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Any

from .optimizer import Optimizer


class LRScheduler:
    """Base class: subclasses implement ``lr_at(base_lr, step, group_index)``."""

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected a minivit Optimizer, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        for k, group in enumerate(optimizer.param_groups):
            if last_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise KeyError(f"{type(self).__name__}: param_groups[{k}] has no 'initial_lr'; "
                               f"resuming with last_epoch={last_epoch} needs the optimizer's "
                               f"state_dict loaded first")
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, base_lr: float, step: int, group_index: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        """The learning rates of the current step, one per parameter group."""
        return [float(self.lr_at(base, self.last_epoch, k)) for k, base in enumerate(self.base_lrs)]

    def get_last_lr(self) -> list[float]:
        """The learning rates last written to the optimizer."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance one step and write the new learning rates into the optimizer's groups."""
        self.last_epoch += 1
        self._apply()

    def _apply(self) -> None:
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr

    # --- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The step counter, the base learning rates and the schedule's settings (plain
        Python values: JSON-serialisable)."""
        return {k: (list(v) if isinstance(v, (list, tuple)) else v)
                for k, v in self.__dict__.items()
                if k not in ("optimizer", "lr_lambdas", "_last_lr") and not callable(v)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore ``state_dict()`` and set the optimizer's learning rates for that step."""
        if "last_epoch" not in state_dict or "base_lrs" not in state_dict:
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected a dict from "
                             f"state_dict() with 'last_epoch' and 'base_lrs'")
        if len(state_dict["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved schedule has "
                             f"{len(state_dict['base_lrs'])} parameter groups, the optimizer "
                             f"has {len(self.optimizer.param_groups)}")
        for k, v in state_dict.items():
            setattr(self, k, v)
        self.last_epoch = int(self.last_epoch)
        self.base_lrs = [float(b) for b in self.base_lrs]
        self._apply()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self.get_last_lr()})"


def _per_group(value, n: int, what: str, cls: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{cls}: expected {n} values of {what} (one per parameter group), "
                             f"got {len(value)}")
        return list(value)
    return [value] * n


class LambdaLR(LRScheduler):
    """``lr = base_lr * lr_lambda(step)``; ``lr_lambda`` is a function or one per group.

    >>> sched = LambdaLR(opt, lambda t: 0.95 ** t)
    """

    def __init__(self, optimizer: Optimizer, lr_lambda: Callable[[int], float] | Sequence[Callable],
                 last_epoch: int = -1):
        self.lr_lambdas = _per_group(lr_lambda, len(optimizer.param_groups), "lr_lambda", "LambdaLR")
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, step: int, group_index: int) -> float:
        return base_lr * self.lr_lambdas[group_index](step)


class WarmupCosineLR(LRScheduler):
    """Linear warmup, then cosine decay to ``min_lr`` (the default recipe, stepped per batch).

    With W = warmup_steps, T = total_steps, s = warmup_start_factor, base = the group's lr::

        t <  W:  lr = base * (s + (1 - s) * t / W)                   (s * base at t = 0)
        t >= W:  lr = min_lr + (base - min_lr) * (1 + cos(pi * min(1, (t - W) / (T - W)))) / 2

    so lr reaches ``base`` at t = W and ``min_lr`` at t = T (and stays there). ``min_lr`` is
    absolute (one value, or one per group).

    >>> sched = WarmupCosineLR(opt, warmup_steps=391, total_steps=391 * 100)
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int,
                 min_lr: float | Sequence[float] = 0.0, warmup_start_factor: float = 0.0,
                 last_epoch: int = -1):
        if warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
            raise ValueError(f"WarmupCosineLR: need 0 <= warmup_steps <= total_steps and "
                             f"total_steps > 0, got warmup_steps={warmup_steps}, "
                             f"total_steps={total_steps}")
        if not 0.0 <= warmup_start_factor <= 1.0:
            raise ValueError(f"WarmupCosineLR: warmup_start_factor must be in [0, 1], got "
                             f"{warmup_start_factor}")
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.min_lrs = [float(m) for m in _per_group(min_lr, len(optimizer.param_groups),
                                                     "min_lr", "WarmupCosineLR")]
        self.warmup_start_factor = float(warmup_start_factor)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, step: int, group_index: int) -> float:
        w, total, s = self.warmup_steps, self.total_steps, self.warmup_start_factor
        if step < w:
            return base_lr * (s + (1.0 - s) * step / w)
        progress = min(1.0, (step - w) / (total - w)) if total > w else 1.0
        lo = self.min_lrs[group_index]
        return lo + (base_lr - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (step // step_size)``.

    >>> sched = StepLR(opt, step_size=30, gamma=0.1)     # stepped once per epoch
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        if step_size <= 0:
            raise ValueError(f"StepLR: step_size must be a positive integer, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, step: int, group_index: int) -> float:
        return base_lr * self.gamma ** (step // self.step_size)


class MultiStepLR(LRScheduler):
    """``lr = base_lr * gamma ** (number of milestones <= step)``.

    >>> sched = MultiStepLR(opt, milestones=[30, 80], gamma=0.1)
    """

    def __init__(self, optimizer: Optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 last_epoch: int = -1):
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, step: int, group_index: int) -> float:
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, step)
