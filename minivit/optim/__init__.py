"""Optimizers, learning-rate schedules and their helpers (PyTorch's ``torch.optim`` API).

    from minivit import optim
    groups = optim.param_groups_weight_decay(model, weight_decay=0.05)
    opt = optim.AdamW(groups, lr=1e-3)
    sched = optim.lr_scheduler.WarmupCosineLR(opt, warmup_steps=391, total_steps=391 * 100)
    ...
    loss.backward()
    optim.clip_grad_norm_(model.parameters(), 1.0)     # optional
    opt.step(); opt.zero_grad(); sched.step()
"""
from . import lr_scheduler
from .adam import Adam, AdamW
from .lr_scheduler import (CosineAnnealingLR, LambdaLR, LinearLR, LRScheduler, MultiStepLR,
                           OneCycleLR, ReduceLROnPlateau, SequentialLR, StepLR, WarmupCosineLR)
from .optimizer import Optimizer
from .sgd import SGD
from .utils import clip_grad_norm_, param_groups_weight_decay

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler", "LRScheduler", "LambdaLR",
           "WarmupCosineLR", "StepLR", "MultiStepLR", "CosineAnnealingLR", "LinearLR",
           "SequentialLR", "OneCycleLR", "ReduceLROnPlateau", "clip_grad_norm_",
           "param_groups_weight_decay"]
