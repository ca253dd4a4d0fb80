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


# --- PyTorch's schedules, by the closed forms of their documentation ---------------------------

class CosineAnnealingLR(LRScheduler):
    """PyTorch's ``CosineAnnealingLR``: from ``base_lr`` down to ``eta_min`` over ``T_max``
    steps (then back up, periodically, as PyTorch's closed form)::

        lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2

    >>> sched = CosineAnnealingLR(opt, T_max=epochs)
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0,  # noqa: N803
                 last_epoch: int = -1):
        if not isinstance(T_max, int) or T_max <= 0:
            raise ValueError(f"CosineAnnealingLR: T_max must be a positive integer, got {T_max!r}")
        self.T_max, self.eta_min = T_max, float(eta_min)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, step: int, group_index: int) -> float:
        lo = self.eta_min
        return lo + (base_lr - lo) * (1.0 + math.cos(math.pi * step / self.T_max)) / 2.0


class LinearLR(LRScheduler):
    """PyTorch's ``LinearLR``: the factor goes linearly from ``start_factor`` to ``end_factor``
    over ``total_iters`` steps, then stays::

        lr = base_lr * (start_factor + (end_factor - start_factor) * min(t, total_iters) / total_iters)

    >>> warmup = LinearLR(opt, start_factor=0.01, total_iters=500)
    """

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1):
        if not 0.0 < start_factor <= 1.0 or not 0.0 <= end_factor <= 1.0:
            raise ValueError(f"LinearLR: need 0 < start_factor <= 1 and 0 <= end_factor <= 1, got "
                             f"start_factor={start_factor}, end_factor={end_factor}")
        if not isinstance(total_iters, int) or total_iters <= 0:
            raise ValueError(f"LinearLR: total_iters must be a positive integer, got "
                             f"{total_iters!r}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = total_iters
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr: float, step: int, group_index: int) -> float:
        s, e = self.start_factor, self.end_factor
        return base_lr * (s + (e - s) * min(step, self.total_iters) / self.total_iters)


class SequentialLR(LRScheduler):
    """PyTorch's ``SequentialLR``: ``schedulers[i]`` from ``milestones[i-1]`` on, each restarted
    at step 0 when its turn comes::

        warmup = LinearLR(opt, start_factor=0.01, total_iters=5)
        cosine = CosineAnnealingLR(opt, T_max=95)
        sched = SequentialLR(opt, [warmup, cosine], milestones=[5])
    """

    def __init__(self, optimizer: Optimizer, schedulers: Sequence[LRScheduler],
                 milestones: Sequence[int], last_epoch: int = -1):
        if len(schedulers) < 1 or len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR: expected len(milestones) == len(schedulers) - 1, got "
                             f"{len(schedulers)} schedulers and {len(milestones)} milestones")
        for i, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler) or isinstance(s, ReduceLROnPlateau):
                raise TypeError(f"SequentialLR: schedulers[{i}] is a {type(s).__name__}, expected "
                                f"a step-based LRScheduler")
            if s.optimizer is not optimizer:
                raise ValueError(f"SequentialLR: schedulers[{i}] belongs to another optimizer")
        self._schedulers = list(schedulers)
        self.milestones = [int(m) for m in milestones]
        super().__init__(optimizer, last_epoch)   # step 0: schedulers[0]'s first lr, as PyTorch

    def _current(self, step: int) -> tuple[LRScheduler, int]:
        i = bisect.bisect_right(self.milestones, step)
        return self._schedulers[i], step - (self.milestones[i - 1] if i else 0)

    def lr_at(self, base_lr: float, step: int, group_index: int) -> float:
        sched, local = self._current(step)
        return sched.lr_at(sched.base_lrs[group_index], local, group_index)

    def _apply(self) -> None:
        sched, local = self._current(self.last_epoch)
        sched.last_epoch = local
        super()._apply()
        sched._last_lr = list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in super().state_dict().items() if k != "_schedulers"}
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        children = state.pop("_schedulers", None)
        if children is None or len(children) != len(self._schedulers):
            raise ValueError(f"SequentialLR.load_state_dict: expected the states of "
                             f"{len(self._schedulers)} schedulers under '_schedulers'")
        for s, sd in zip(self._schedulers, children):
            for k, v in sd.items():
                setattr(s, k, v)
        super().load_state_dict(state)


class OneCycleLR(LRScheduler):
    """PyTorch's ``OneCycleLR`` (Smith's 1cycle), stepped once per batch: from
    ``max_lr / div_factor`` up to ``max_lr`` over the first ``pct_start`` of the steps, then down
    to ``initial_lr / final_div_factor`` (``three_phase``: back to the initial lr first, then
    down). Each phase anneals by cosine (``end + (start - end) * (1 + cos(pi * p)) / 2``) or
    linearly; momentum (SGD's ``momentum`` or Adam's ``beta1``) cycles the other way between
    ``max_momentum`` and ``base_momentum``.

    >>> sched = OneCycleLR(opt, max_lr=0.01, epochs=10, steps_per_epoch=len(loader))
    """

    def __init__(self, optimizer: Optimizer, max_lr: float | Sequence[float],
                 total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum: float | Sequence[float] = 0.85,
                 max_momentum: float | Sequence[float] = 0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False, last_epoch: int = -1):
        n = len(optimizer.param_groups)
        if total_steps is None:
            if not (isinstance(epochs, int) and epochs > 0 and isinstance(steps_per_epoch, int)
                    and steps_per_epoch > 0):
                raise ValueError(f"OneCycleLR: give total_steps, or positive integers epochs and "
                                 f"steps_per_epoch; got total_steps=None, epochs={epochs!r}, "
                                 f"steps_per_epoch={steps_per_epoch!r}")
            total_steps = epochs * steps_per_epoch
        if not isinstance(total_steps, int) or total_steps <= 0:
            raise ValueError(f"OneCycleLR: total_steps must be a positive integer, got "
                             f"{total_steps!r}")
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"OneCycleLR: pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        self.total_steps, self.anneal_strategy = total_steps, anneal_strategy
        self.cycle_momentum, self.use_beta1 = bool(cycle_momentum), False
        if three_phase:
            ends = [pct_start * total_steps - 1, 2 * pct_start * total_steps - 2, total_steps - 1]
            lrs = [("initial_lr", "max_lr"), ("max_lr", "initial_lr"), ("initial_lr", "min_lr")]
            moms = [("max_momentum", "base_momentum"), ("base_momentum", "max_momentum"),
                    ("max_momentum", "max_momentum")]
        else:
            ends = [pct_start * total_steps - 1, total_steps - 1]
            lrs = [("initial_lr", "max_lr"), ("max_lr", "min_lr")]
            moms = [("max_momentum", "base_momentum"), ("base_momentum", "max_momentum")]
        self.phases = [{"end_step": float(e), "start_lr": a, "end_lr": b, "start_momentum": c,
                        "end_momentum": d} for e, (a, b), (c, d) in zip(ends, lrs, moms)]
        max_lrs = _per_group(max_lr, n, "max_lr", "OneCycleLR")
        if last_epoch == -1:
            for group, top in zip(optimizer.param_groups, max_lrs):
                group["initial_lr"] = top / div_factor
                group["max_lr"] = float(top)
                group["min_lr"] = group["initial_lr"] / final_div_factor
        if self.cycle_momentum:
            defaults = optimizer.param_groups[0]
            if "momentum" not in defaults and "betas" not in defaults:
                raise ValueError("OneCycleLR: the optimizer has no momentum or betas to cycle; "
                                 "pass cycle_momentum=False")
            self.use_beta1 = "betas" in defaults
            if last_epoch == -1:
                for group, lo, hi in zip(optimizer.param_groups,
                                         _per_group(base_momentum, n, "base_momentum", "OneCycleLR"),
                                         _per_group(max_momentum, n, "max_momentum", "OneCycleLR")):
                    group["base_momentum"], group["max_momentum"] = float(lo), float(hi)
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _phase_value(self, group: dict, step: int, kind: str) -> float:
        start_step = 0.0
        for i, phase in enumerate(self.phases):
            end_step = phase["end_step"]
            if step <= end_step or i == len(self.phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                return self._anneal(group[phase[f"start_{kind}"]], group[phase[f"end_{kind}"]], pct)
            start_step = end_step
        raise AssertionError("unreachable")

    def lr_at(self, base_lr: float, step: int, group_index: int) -> float:
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {step} times, more than total_steps="
                             f"{self.total_steps}")
        return self._phase_value(self.optimizer.param_groups[group_index], step, "lr")

    def _apply(self) -> None:
        super()._apply()
        if not self.cycle_momentum:
            return
        for group in self.optimizer.param_groups:
            m = self._phase_value(group, self.last_epoch, "momentum")
            if self.use_beta1:
                group["betas"] = (m, *group["betas"][1:])
            else:
                group["momentum"] = m


class ReduceLROnPlateau(LRScheduler):
    """PyTorch's ``ReduceLROnPlateau``: ``step(metric)`` once per evaluation; when the metric
    has not improved for more than ``patience`` evaluations, every group's lr is multiplied by
    ``factor`` (not below ``min_lr``), then ``cooldown`` evaluations pass before counting again.
    "Improved" (``mode="min"``, ``threshold_mode="rel"``) means ``metric < best * (1 - threshold)``;
    ``"abs"``: ``metric < best - threshold``; ``mode="max"`` mirrors both.

    >>> sched = ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=3)
    >>> sched.step(test_acc)
    """

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr: float | Sequence[float] = 0.0, eps: float = 1e-8):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"ReduceLROnPlateau: expected a minivit Optimizer, got "
                            f"{type(optimizer).__name__}")
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be below 1, got {factor}")
        if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max' and threshold_mode "
                             f"'rel' or 'abs', got mode={mode!r}, threshold_mode={threshold_mode!r}")
        self.optimizer = optimizer
        self.min_lrs = [float(m) for m in _per_group(min_lr, len(optimizer.param_groups),
                                                     "min_lr", "ReduceLROnPlateau")]
        self.mode, self.factor, self.patience = mode, float(factor), int(patience)
        self.threshold, self.threshold_mode = float(threshold), threshold_mode
        self.cooldown, self.eps = int(cooldown), float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = self.last_epoch = 0
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self._last_lr = list(self.base_lrs)

    def is_better(self, a: float, best: float) -> bool:
        rel, t = self.threshold_mode == "rel", self.threshold
        if self.mode == "min":
            return a < (best * (1.0 - t) if rel else best - t)
        return a > (best * (1.0 + t) if rel else best + t)

    def step(self, metrics: float) -> None:  # type: ignore[override]
        """Record one evaluation's ``metrics`` (a number) and reduce the lr on a plateau."""
        current = float(metrics)
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            for group, lo in zip(self.optimizer.param_groups, self.min_lrs):
                old = float(group["lr"])
                new = max(old * self.factor, lo)
                if old - new > self.eps:
                    group["lr"] = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for k, v in state_dict.items():
            setattr(self, k, v)
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]
