"""Training diagnostics: ``minivit train --log-interval N`` writes ``steps.jsonl``.

Every N optimizer steps one JSON line: ``step`` (steps done), ``epoch`` (fractional: 1.5 is
half-way through the second epoch), ``loss`` (of that step's batch), ``lr`` (the rate that step
used), ``grad_norm`` (the global L2 norm of all gradients, before any clipping),
``grad_norm_blocks`` and ``update_ratio_blocks`` (per top-level block: the gradients' L2 norm,
and ||W_after - W_before|| / ||W_before|| of the step, Karpathy's update-to-weight ratio, about
1e-3 in a healthy run), and ``imgs_per_s`` since the previous line. Steps between the lines
cost nothing extra.

Blocks are the model's children, with containers (``ModuleList``, ``Sequential``) opened one
level: ``patch_embed``, ``blocks.0`` ... ``blocks.5``, ``norm``, ``head`` for ViT; parameters
held by the model itself (``cls_token``, ``pos_embed``) are blocks of their own.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from ..autograd import backend
from ..runfolder import append_record, read_log, reconcile_log, show


def parameter_blocks(model) -> dict:
    """``{block name: [parameters]}`` in the model's order (see the module docstring).

    >>> from minivit.models import create_model
    >>> list(parameter_blocks(create_model("vit_cifar", num_classes=10, depth=2)))
    ['cls_token', 'pos_embed', 'patch_embed', 'blocks.0', 'blocks.1', 'norm', 'head']
    """
    from ..nn.module import ModuleDict, ModuleList, Sequential  # noqa: PLC0415

    blocks: dict = {}
    seen = set()

    def add(name, params):
        params = [p for p in params if id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            blocks.setdefault(name, []).extend(params)

    for name, p in model._parameters.items():
        if p is not None:
            add(name, [p])
    for name, child in model.named_children():
        if isinstance(child, (ModuleList, Sequential, ModuleDict)):
            for sub, m in child.named_children():
                add(f"{name}.{sub}", m.parameters())
            add(name, child.parameters())     # a container's own parameters, if any
        else:
            add(name, child.parameters())
    return blocks


def _sq_norm(arrays) -> float:
    total = 0.0
    for a in arrays:
        total += float((a.astype("float64", copy=False) ** 2).sum())
    return total


class StepLog:
    """Writes ``steps.jsonl``; the training loop calls ``after_backward`` and ``after_step``
    around the optimizer step (both do nothing on steps that are not logged)."""

    def __init__(self, model, path: str | Path, interval: int, steps_per_epoch: int,
                 start_step: int = 0):
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"log_interval must be an integer >= 1, got {interval!r}")
        self.model, self.path, self.interval = model, Path(path), interval
        self.steps_per_epoch = steps_per_epoch
        self.blocks = parameter_blocks(model)
        self.pending = None
        self.images = 0
        self.t_last = time.perf_counter()
        # a resumed run: drop the lines past its checkpoint (and a line a kill cut short)
        reconcile_log(self.path, start_step, log=lambda *a: None, key="step")

    def after_backward(self, step: int, loss: float, lr: float) -> None:
        """``step``: steps done before this one. On a logged step, note the gradients' norms
        and keep a copy of the weights (for the update ratios)."""
        if (step + 1) % self.interval:
            return
        grads = {}
        for name, params in self.blocks.items():
            grads[name] = math.sqrt(_sq_norm(p.grad.data for p in params if p.grad is not None))
        self.pending = {"loss": loss, "lr": lr, "grad_norm_blocks": grads,
                        "grad_norm": math.sqrt(sum(g * g for g in grads.values())),
                        "before": {name: [p.data.copy() for p in params]
                                   for name, params in self.blocks.items()}}

    def after_step(self, step: int, n_images: int) -> None:
        """``step``: steps done, this one included; ``n_images`` in this step's batch."""
        self.images += n_images
        if self.pending is None:
            return
        p, self.pending = self.pending, None
        ratios = {}
        for name, params in self.blocks.items():
            before = p["before"][name]
            delta = _sq_norm(backend.get_array_module(w.data).subtract(w.data, b)
                             for w, b in zip(params, before))
            ratios[name] = math.sqrt(delta) / max(math.sqrt(_sq_norm(before)), 1e-30)
        now = time.perf_counter()
        row = {"step": step, "epoch": step / self.steps_per_epoch, "loss": p["loss"],
               "lr": p["lr"], "grad_norm": p["grad_norm"],
               "grad_norm_blocks": p["grad_norm_blocks"], "update_ratio_blocks": ratios,
               "imgs_per_s": self.images / max(now - self.t_last, 1e-9)}
        self.images, self.t_last = 0, now
        append_record(self.path, row)   # strict JSON (a NaN loss as null), flushed


def read_jsonl(path: Path, missing: str) -> list[dict]:
    """The JSON objects of a ``.jsonl`` file, one a line; ``missing`` ends the error message
    when the file is not there."""
    if not path.is_file():
        raise FileNotFoundError(f"{show(path)}: {missing}")
    return read_log(path, key=None)   # a torn last line left out; a bad one names its line


def read_steps(run: str | Path) -> list[dict]:
    """The lines of ``RUN/steps.jsonl`` (``minivit train --log-interval N``)."""
    return read_jsonl(Path(run) / "steps.jsonl",
                      "no per-step log (train with --log-interval N to write one)")
