"""Mixed-precision training: ``autocast`` and ``GradScaler``, PyTorch's ``torch.amp`` names.

    scaler = minivit.amp.GradScaler()             # float16 only; bfloat16 needs no scaler
    for x, y in loader:
        with minivit.autocast("fp16"):            # the products in float16 precision
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        scaler.scale(loss).backward()             # loss * S: small gradients survive float16
        scaler.unscale_(opt)                      # optional: before clipping or logging
        clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)                          # undone on the device if a gradient is inf/NaN
        scaler.update()                           # S halves after such a step, doubles after
                                                  # growth_interval good ones

The parameters and the optimizer state stay float32 (master weights); ``autocast`` rounds the
operands and results of the products (``minivit/autograd/autocast.py``). float16 has 5
exponent bits: gradients below 6e-8 vanish and values above 65504 overflow. Scaling the loss
by S (2^16 to start) lifts the gradients into range; a step whose gradients overflowed is
skipped and S halved; after ``growth_interval`` steps without overflow S doubles.

Nothing here waits for the GPU: the scale, the count of good steps, the "found inf" flag
and the count of skipped steps are device scalars, the finiteness check is a reduction on
the device, and a skipped step is an update undone on the device
(``Optimizer.step_masked``). ``get_scale()`` and ``state_dict()`` read them (a sync: call
them between steps, e.g. at a log line or a checkpoint).
"""
from __future__ import annotations

import numpy as np

from .autograd import backend
from .autograd.autocast import (autocast, get_autocast_dtype, is_autocast_enabled,  # noqa: F401
                                round_to)
from .autograd.tensor import Tensor
from .optim.optimizer import grad_array

__all__ = ["autocast", "GradScaler", "get_autocast_dtype", "is_autocast_enabled", "round_to"]


class GradScaler:
    """Dynamic loss scaling for float16 training (PyTorch's ``torch.amp.GradScaler``, same
    defaults and rules): ``scale(loss)``, ``unscale_(opt)``, ``step(opt)``, ``update()``.

    ``enabled=False`` makes every method a pass-through (``step`` is ``opt.step()``), so one
    training loop serves float32, bfloat16 and float16."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, enabled: bool = True):
        checks = ((init_scale > 0, "init_scale", init_scale, "> 0"),
                  (growth_factor > 1, "growth_factor", growth_factor, "> 1"),
                  (0 < backoff_factor < 1, "backoff_factor", backoff_factor, "in (0, 1)"),
                  (isinstance(growth_interval, (int, np.integer)) and growth_interval >= 1,
                   "growth_interval", growth_interval, "an integer >= 1"))
        for ok, name, value, expected in checks:
            if not ok:
                raise ValueError(f"GradScaler: {name} must be {expected}, got {value!r}")
        self._enabled = bool(enabled)
        self._init_scale, self._growth_factor = float(init_scale), float(growth_factor)
        self._backoff_factor, self._growth_interval = float(backoff_factor), int(growth_interval)
        self._scale = self._growth_tracker = self._skipped = None   # device scalars, made lazily
        self._loaded: dict | None = None   # a state_dict loaded before the first scale()
        self._per_opt: dict = {}           # id(optimizer) -> {"found_inf": ..., "stepped": ...}

    def is_enabled(self) -> bool:
        return self._enabled

    # --- the device scalars ----------------------------------------------------------------
    def _init(self, xp) -> None:
        state = self._loaded or {"scale": self._init_scale, "_growth_tracker": 0,
                                 "skipped_steps": 0}
        self._scale = xp.asarray(state["scale"], dtype=np.float32)
        self._growth_tracker = xp.asarray(state["_growth_tracker"], dtype=np.int32)
        self._skipped = xp.asarray(state["skipped_steps"], dtype=np.float64)
        self._loaded = None

    def scale(self, outputs):
        """``outputs * scale`` (a Tensor, or a list/tuple of them): backward of that gives
        gradients multiplied by the scale."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        if not isinstance(outputs, Tensor):
            raise TypeError(f"GradScaler.scale: expected a Tensor (the loss), got "
                            f"{type(outputs).__name__}")
        xp = backend.get_array_module(outputs.data)
        if self._scale is None:
            self._init(xp)
        elif backend.get_array_module(self._scale) is not xp:
            raise RuntimeError("GradScaler.scale: the loss is on another device than the "
                               "scaler's first loss; use one scaler per device")
        return outputs * self._scale.astype(outputs.dtype)

    def _grad_arrays(self, optimizer):
        """Every gradient array of the optimizer's parameters (a group's flat gradient buffer
        when AdamW keeps one on the GPU: one launch for the whole group)."""
        for group in optimizer.param_groups:
            flat = optimizer._flat_group(group) if hasattr(optimizer, "_flat_group") else None
            if flat is not None and all(grad_array(p) is gv
                                        for p, gv in zip(group["params"], flat.grads)):
                yield flat.g
                continue
            for p in group["params"]:
                g = grad_array(p)
                if g is not None:
                    yield g

    def _opt_state(self, optimizer) -> dict:
        return self._per_opt.setdefault(id(optimizer), {"found_inf": None, "stepped": False})

    def unscale_(self, optimizer) -> None:
        """Divide the optimizer's gradients by the scale, in place, and note on the device
        whether any is inf or NaN. Call it before clipping the gradients or reading their
        norms; ``step`` calls it if you did not. Once per optimizer per ``update``."""
        if not self._enabled:
            return
        if self._scale is None:
            raise RuntimeError("GradScaler.unscale_: no loss was scaled yet (call "
                               "scaler.scale(loss).backward() first)")
        state = self._opt_state(optimizer)
        if state["found_inf"] is not None:
            raise RuntimeError("GradScaler.unscale_: already called on this optimizer since "
                               "the last update()")
        xp = backend.get_array_module(self._scale)
        inv = (1.0 / self._scale.astype(np.float64)).astype(np.float32)
        found = xp.zeros((), dtype=np.bool_)
        for g in self._grad_arrays(optimizer):
            if g.dtype == np.float16:   # PyTorch refuses these too: fp16 masters lose updates
                raise ValueError("GradScaler.unscale_: the gradients are float16; keep the "
                                 "parameters float32 (master weights) and run the products "
                                 "in float16 with minivit.autocast('fp16')")
            g *= inv.astype(g.dtype)
            found |= ~xp.isfinite(g).all()
        state["found_inf"] = found

    def step(self, optimizer) -> None:
        """``optimizer.step()``, undone on the device if a gradient was inf or NaN (the
        parameters and the optimizer's state are left as they were)."""
        if not self._enabled:
            optimizer.step()
            return
        state = self._opt_state(optimizer)
        if state["stepped"]:
            raise RuntimeError("GradScaler.step: already called on this optimizer since the "
                               "last update()")
        if state["found_inf"] is None:
            self.unscale_(optimizer)
        found = state["found_inf"]
        optimizer.step_masked(found, undone=self._skipped)
        self._skipped += found
        state["stepped"] = True

    def update(self, new_scale: float | None = None) -> None:
        """After a step: halve the scale (``backoff_factor``) if a gradient was inf/NaN, and
        restart the count of good steps; else count this one, and after ``growth_interval``
        good steps in a row multiply the scale by ``growth_factor`` (if that stays finite).
        ``new_scale``: set the scale to this instead."""
        if not self._enabled:
            return
        if self._scale is None:
            raise RuntimeError("GradScaler.update: no loss was scaled yet")
        xp = backend.get_array_module(self._scale)
        if new_scale is not None:
            self._scale[...] = float(new_scale)
        else:
            flags = [s["found_inf"] for s in self._per_opt.values() if s["found_inf"] is not None]
            if not flags:
                raise RuntimeError("GradScaler.update: no gradients were checked for inf/NaN "
                                   "since the last update (call scaler.step(opt) first)")
            found = flags[0]
            for f in flags[1:]:
                found = found | f
            good = xp.where(found, 0, self._growth_tracker + 1).astype(np.int32)
            grow = good >= self._growth_interval
            grown = self._scale * np.float32(self._growth_factor)
            factor = xp.where(found, np.float32(self._backoff_factor),
                              xp.where(grow & xp.isfinite(grown), np.float32(self._growth_factor),
                                       np.float32(1.0)))
            self._scale[...] = self._scale * factor
            self._growth_tracker[...] = xp.where(grow, 0, good)
        self._per_opt.clear()

    # --- reading and saving (each read waits for the GPU) -------------------------------------
    def _read(self, name: str, default):
        value = getattr(self, name)
        return default if value is None else backend.as_numpy(value).item()

    def get_scale(self) -> float:
        """The current scale (1.0 when disabled); a host read: not inside a step."""
        if not self._enabled:
            return 1.0
        if self._loaded is not None:
            return float(self._loaded["scale"])
        return float(self._read("_scale", self._init_scale))

    def get_growth_tracker(self) -> int:
        """Good steps in a row since the scale last changed."""
        if self._loaded is not None:
            return int(self._loaded["_growth_tracker"])
        return int(self._read("_growth_tracker", 0))

    def skipped_steps(self) -> int:
        """How many steps were skipped (undone) because a gradient was inf or NaN."""
        if self._loaded is not None:
            return int(self._loaded["skipped_steps"])
        return int(round(self._read("_skipped", 0)))

    def state_dict(self) -> dict:
        """PyTorch's keys (``scale``, ``growth_factor``, ``backoff_factor``,
        ``growth_interval``, ``_growth_tracker``) and ``skipped_steps``; empty when
        disabled, as in PyTorch."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self.get_growth_tracker(),
                "skipped_steps": self.skipped_steps()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` (taken on any device)."""
        if not self._enabled:
            return
        if not isinstance(state, dict) or not state:
            raise ValueError("GradScaler.load_state_dict: expected the non-empty dict of "
                             "GradScaler.state_dict() (was the saved scaler disabled?)")
        missing = [k for k in ("scale", "growth_factor", "backoff_factor", "growth_interval",
                               "_growth_tracker") if k not in state]
        if missing:
            raise ValueError(f"GradScaler.load_state_dict: the state has no {missing[0]!r}")
        scale, tracker = float(state["scale"]), int(state["_growth_tracker"])
        if not (np.isfinite(scale) and scale > 0) or tracker < 0:
            raise ValueError(f"GradScaler.load_state_dict: scale must be finite and > 0 and "
                             f"_growth_tracker >= 0, got {scale!r} and {tracker!r}")
        self.__init__(state["scale"], state["growth_factor"], state["backoff_factor"],
                      int(state["growth_interval"]), enabled=True)
        loaded = {"scale": scale, "_growth_tracker": tracker,
                  "skipped_steps": int(state.get("skipped_steps", 0))}
        self._loaded = loaded
