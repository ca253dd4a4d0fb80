"""``minivit gradcheck [layers|MODEL]``: check gradients against finite differences, in float64.

``minivit gradcheck layers`` checks every element of the gradient of a few small layers
(Linear, strided and depthwise Conv2d, LayerNorm, BatchNorm2d in training mode, self-attention
with an additive bias, GELU, cross-entropy with label smoothing), inputs and parameters alike,
with :func:`minivit.autograd.gradcheck`, and prints one row per layer::

    layer                                elements   max abs error   result
    Linear(4 -> 3)                             23         2.1e-11   PASS

``minivit gradcheck vit_cifar`` builds the model (10 classes) in float64, in eval mode, and
compares the derivative of ``sum(v * model(x))`` along one random direction over the input and
every parameter, numeric (two forwards) against analytic (one backward), with
:func:`minivit.autograd.gradcheck_directional`.

Both exit with 0 when everything passes and 1 otherwise. The error figures use the same
random upstream gradient ``v`` as the engine's checks (``default_rng(seed)``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

import minivit
from minivit import nn
from minivit.autograd import GradcheckError, gradcheck, gradcheck_directional
from minivit.autograd.gradcheck import directional_derivatives, gradient_pairs
from minivit.nn import functional as F

EPS, ATOL, RTOL = 1e-6, 1e-5, 1e-3  # the engine's defaults (PyTorch's)


@dataclass
class Case:
    """One gradient check: ``fn(*inputs)`` with ``inputs`` and ``params`` checked."""

    name: str
    fn: Callable
    inputs: list
    params: list


def _x(rng, *shape, requires_grad=True) -> minivit.Tensor:
    return minivit.tensor(rng.standard_normal(shape), dtype="float64",
                          requires_grad=requires_grad)


def _layer(module: nn.Module) -> nn.Module:
    return module.to("float64")


def layer_cases(seed: int = 0) -> list[Case]:
    """The small float64 layers that ``minivit gradcheck layers`` checks."""
    rng = np.random.default_rng(seed)
    minivit.manual_seed(seed)
    cases = []

    lin = _layer(nn.Linear(4, 3))
    cases.append(Case("Linear(4 -> 3)", lin, [_x(rng, 2, 4)], list(lin.parameters())))

    conv = _layer(nn.Conv2d(2, 3, 3, stride=2, padding=1))
    cases.append(Case("Conv2d(2 -> 3, 3x3, stride 2, pad 1)", conv, [_x(rng, 2, 2, 5, 5)],
                      list(conv.parameters())))

    dw = _layer(nn.Conv2d(3, 3, 3, padding=1, groups=3))
    cases.append(Case("Conv2d depthwise(3, 3x3, pad 1)", dw, [_x(rng, 2, 3, 4, 4)],
                      list(dw.parameters())))

    ln = _layer(nn.LayerNorm(5))
    with minivit.no_grad():  # non-trivial affine parameters
        ln.weight.data[...] = rng.standard_normal(5)
        ln.bias.data[...] = rng.standard_normal(5)
    cases.append(Case("LayerNorm(5)", ln, [_x(rng, 2, 3, 5)], list(ln.parameters())))

    bn = _layer(nn.BatchNorm2d(3)).train()
    with minivit.no_grad():
        bn.weight.data[...] = rng.standard_normal(3)
        bn.bias.data[...] = rng.standard_normal(3)
    cases.append(Case("BatchNorm2d(3), train mode", bn, [_x(rng, 4, 3, 2, 2)],
                      list(bn.parameters())))

    attn = _layer(nn.MultiheadSelfAttention(4, num_heads=2, qkv_bias=True)).eval()
    bias = _x(rng, 1, 2, 3, 3)  # an additive attention bias (relative positions), per head
    cases.append(Case("MultiheadSelfAttention(4, 2 heads) + bias",
                      lambda x, b: attn(x, attn_bias=b), [_x(rng, 2, 3, 4), bias],
                      list(attn.parameters())))

    cases.append(Case("GELU (exact erf)", nn.GELU(), [_x(rng, 3, 4)], []))

    target = minivit.tensor(rng.integers(0, 5, size=4))
    cases.append(Case("cross_entropy, label smoothing 0.1",
                      lambda z: F.cross_entropy(z, target, label_smoothing=0.1),
                      [_x(rng, 4, 5)], []))
    return cases


# --- the comparison, element by element ------------------------------------------------------

def numeric_and_analytic(fn, inputs, params=(), seed: int = 0, eps: float = EPS):
    """For each checked tensor (inputs, then params): ``(numeric, analytic)`` gradients of
    ``sum(v * fn(*inputs))``, numeric by central differences one element at a time."""
    return gradient_pairs(fn, *inputs, eps=eps, params=params, seed=seed)


def check_case(case: Case, seed: int = 0) -> dict:
    """Run one layer check: elements, max abs error, pass (by the engine's gradcheck)."""
    pairs = numeric_and_analytic(case.fn, case.inputs, case.params, seed)
    err = max((float(np.abs(n - a).max()) if n.size else 0.0) for n, a in pairs)
    try:
        ok, why = gradcheck(case.fn, *case.inputs, params=case.params, seed=seed,
                            eps=EPS, atol=ATOL, rtol=RTOL), ""
    except GradcheckError as exc:
        ok, why = False, str(exc)
    return {"name": case.name, "elements": sum(n.size for n, _ in pairs), "max_abs_err": err,
            "ok": ok, "why": why}


def run_layers(cases: list[Case] | None = None, out=print) -> bool:
    cases = layer_cases() if cases is None else cases
    out(f"element-wise gradient checks in float64 (central differences, eps {EPS:g}; "
        f"pass: |analytic - numeric| <= {ATOL:g} + {RTOL:g} |numeric|)")
    out(f"{'layer':44s} {'elements':>8s} {'max abs error':>14s}  result")
    all_ok = True
    for case in cases:
        r = check_case(case)
        all_ok &= r["ok"]
        out(f"{r['name']:44s} {r['elements']:8d} {r['max_abs_err']:14.2e}  "
            f"{'PASS' if r['ok'] else 'FAIL'}")
        if not r["ok"]:
            out(f"    {r['why']}")
    out("all layers PASS" if all_ok else "some layers FAIL")
    return all_ok


# --- whole models, along one direction --------------------------------------------------------

# Smaller configurations for the ImageNet-size models, so that a check takes seconds.
SMALL = {
    "vit_tiny_patch16_224": {"depth": 2},
    "mixer_b16_224": {"depth": 2, "embed_dim": 64},
    "ceit_tiny_patch16_224": {"depth": 2},
    "botnet26t_256": {"depths": (1, 1, 2, 1), "widths": (64, 128, 256, 512)},
    "maxvit_tiny_tf_224": {"depths": (1, 1, 1, 1), "dims": (32, 64, 128, 256)},
}


def _input_size(model) -> tuple[int, int]:
    size = getattr(model, "img_size", None)
    if size is None:
        return (32, 32)
    return (size, size) if isinstance(size, int) else tuple(size)


def move_off_init(model: nn.Module, seed: int = 0) -> None:
    """Give every parameter a small random offset and BatchNorm random running statistics.

    At initialisation some checks are vacuous or sit on a kink: a zero-initialised head makes
    every other gradient zero, and a zero-initialised last BatchNorm of a residual block makes
    the block output ``relu(0 + shortcut)`` with many exact zeros, where central differences
    see half a slope.
    """
    rng = np.random.default_rng(seed + 2)
    with minivit.no_grad():
        for p in model.parameters():
            p.data[...] += 0.02 * rng.standard_normal(p.shape)
        for m in model.modules():
            mean, var = m._buffers.get("running_mean"), m._buffers.get("running_var")
            if mean is not None and var is not None:
                mean.data[...] = 0.1 * rng.standard_normal(mean.shape)
                var.data[...] = rng.uniform(0.5, 1.5, var.shape)


def directional(model: nn.Module, x: minivit.Tensor, seed: int = 0, eps: float = EPS):
    """(numeric, analytic) derivative of ``sum(v * model(x))`` along one random unit direction
    over ``x`` and every parameter, as ``gradcheck_directional`` computes them."""
    params = [p for p in model.parameters() if p.requires_grad]
    return directional_derivatives(model, x, eps=eps, params=params, seed=seed)


def run_model(name: str, out=print, seed: int = 0, overrides: dict | None = None) -> bool:
    """Directional gradient check of a registered model (10 classes, float64, eval mode)."""
    from .models import create_model, list_models

    if name not in list_models():
        raise ValueError(f"gradcheck: unknown target {name!r}; use 'layers' or a model name: "
                         f"{', '.join(list_models())}")
    minivit.manual_seed(seed)
    overrides = SMALL.get(name, {}) if overrides is None else overrides
    model = create_model(name, num_classes=10, **overrides).to("float64").eval()
    move_off_init(model, seed)
    n_params = sum(p.numel() for p in model.parameters())
    h, w = _input_size(model)
    x = minivit.tensor(np.random.default_rng(seed).standard_normal((2, 3, h, w)),
                       dtype="float64", requires_grad=True)
    small = f" (smaller: {overrides})" if overrides else ""
    out(f"{name}{small}: {n_params:,} parameters in float64 (moved off their initial values), "
        f"eval mode, input (2, 3, {h}, {w})")
    t0 = time.perf_counter()
    numeric, analytic = directional(model, x, seed)
    try:
        ok, why = gradcheck_directional(model, x, params=list(model.parameters()), seed=seed,
                                        eps=EPS, atol=ATOL, rtol=RTOL), ""
    except GradcheckError as exc:
        ok, why = False, str(exc)
    out(f"directional derivative over the input and {n_params:,} parameter elements:")
    out(f"  numeric  (central differences, eps {EPS:g}) {numeric: .12e}")
    out(f"  analytic (backward)                       {analytic: .12e}")
    out(f"  difference {abs(numeric - analytic):.2e} (tolerance {ATOL:g} + {RTOL:g} |numeric| = "
        f"{ATOL + RTOL * abs(numeric):.2e})  {'PASS' if ok else 'FAIL'}  "
        f"[{time.perf_counter() - t0:.1f}s]")
    if not ok:
        out(f"  {why}")
    return ok


def run(args) -> int:
    """Entry point of ``minivit gradcheck``: 0 when every check passes, 1 otherwise."""
    target = getattr(args, "target", "layers") or "layers"
    ok = run_layers() if target == "layers" else run_model(target)
    return 0 if ok else 1
