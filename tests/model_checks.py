"""Checks shared by the whole-model tests (tests/test_models_*.py).

Importing a model file while others are missing, parameter counts, non-trivial float64
parameters for gradient checks, timm's key lists, forward/train/eval checks, the directional
gradient check over every parameter, reference-fixture logits, and overfitting the 64-image
CIFAR-10 subset. Model-specific configurations and checks stay in each test file.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time

import numpy as np

import minivit
import minivit.nn.functional as F

HERE = os.path.dirname(__file__)
FIXTURES = os.path.join(HERE, "fixtures")
REFERENCE_DIR = os.path.join(HERE, "fixtures", "reference")   # key lists written from timm


def model_module(name: str):
    """Import ``minivit.models.<name>`` even while the package ``__init__`` (which imports all
    five model files) fails on a file that is not there yet."""
    full = f"minivit.models.{name}"
    try:
        importlib.import_module(full)
    except ImportError:
        if full not in sys.modules:
            raise
    return sys.modules[full]


def n_params(model) -> int:
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def _norm_scale(name: str) -> bool:
    return "norm" in name and name.endswith("weight")


def randomize_(model, seed=0, dtype=np.float64, *, is_scale=_norm_scale, scale_std=0.1,
               std_for=None):
    """Non-trivial values (and ``dtype``) for every parameter, so that no gradient check is
    vacuous (a zero-initialised head or last BN would zero most gradients).

    Matrices and kernels get N(0, 1/fan_in); parameters named by ``is_scale(name)`` (norm
    scales) 1 + N(0, scale_std^2); other vectors N(0, 0.01); a parameter whose name contains a
    key of ``std_for`` gets N(0, std_for[key]^2) whatever its shape.
    """
    if dtype == np.float64:
        model.double()      # parameters and floating buffers (BatchNorm running statistics)
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        stds = [s for key, s in (std_for or {}).items() if key in name]
        if stds:
            v = stds[0] * rng.standard_normal(p.shape)
        elif p.ndim >= 2:
            v = rng.standard_normal(p.shape) / np.sqrt(np.prod(p.shape[1:]))
        elif is_scale(name):
            v = 1.0 + scale_std * rng.standard_normal(p.shape)
        else:
            v = 0.1 * rng.standard_normal(p.shape)
        p.data = v.astype(dtype)
    return model


# --------------------------------------------------------------------------------------------
# sizes, shapes and modes


def state_shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def assert_reference_keys(shapes: dict, filename: str) -> None:
    """``shapes`` equals the key list ``filename`` (lines ``key<TAB>(shape)<TAB>...``, timm's or
    the official code's state dict) in tests/fixtures/reference."""
    path = os.path.join(REFERENCE_DIR, filename)
    ref = {}
    for line in open(path):
        if not line.startswith("#") and line.strip():
            key, shape, _ = line.rstrip("\n").split("\t")
            ref[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    assert shapes == ref


def assert_forward_finite(model, img_size: int, num_classes: int = 1000) -> None:
    """One random image through ``model`` in eval mode: finite logits of the right shape."""
    model.eval()
    with minivit.no_grad():
        y = model(minivit.randn(1, 3, img_size, img_size))
    assert y.shape == (1, num_classes)
    assert np.isfinite(y.numpy()).all()


def assert_train_and_eval_shapes(model, num_classes: int = 10, img_size: int = 32) -> None:
    """A batch of 2 in train mode (finite logits) and in eval mode without a graph."""
    x = minivit.randn(2, 3, img_size, img_size)
    model.train()
    y = model(x)
    assert y.shape == (2, num_classes) and np.isfinite(y.numpy()).all()
    model.eval()
    with minivit.no_grad():
        assert model(x).shape == (2, num_classes)


def assert_random_in_train_only(model, x) -> None:
    """Two train-mode passes differ (dropout / drop path); two eval-mode passes are equal."""
    model.train()
    a, b = model(x).numpy(), model(x).numpy()
    assert not np.allclose(a, b)
    model.eval()
    with minivit.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())


# --------------------------------------------------------------------------------------------
# gradients


def check_whole_model_gradients(model, img_size: int, nonzero: bool = False) -> None:
    """Directional gradient check (float64, train mode: BatchNorm with batch statistics) over a
    batch of 2 images and all parameters; then every parameter must get a gradient, and with
    ``nonzero`` a gradient that is not all zero."""
    model.train()
    x = minivit.tensor(np.random.default_rng(1).standard_normal((2, 3, img_size, img_size)),
                       dtype=np.float64, requires_grad=True)
    params = list(model.parameters())
    assert minivit.gradcheck_directional(model, x, params=params, atol=1e-6, rtol=1e-5)
    for p in params:
        p.grad = None
    model(x).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    if nonzero:
        assert all(np.abs(p.grad.numpy()).max() > 0 for p in params)


# --------------------------------------------------------------------------------------------
# reference fixtures (tests/fixtures/*.npz made by tools/make_reference_*.py)


def load_fixture(filename: str):
    return np.load(os.path.join(FIXTURES, filename), allow_pickle=False)


def fixture_state(ref, prefix: str) -> dict:
    """The state dict stored in fixture ``ref`` under keys ``<prefix><name>``."""
    return {k[len(prefix):]: ref[k] for k in ref.files if k.startswith(prefix)}


def config_fixture_model(ref, build):
    """``build(**config)`` for the JSON ``config`` of fixture ``ref``, loaded (strictly) with the
    state stored under ``sd/``."""
    model = build(**json.loads(str(ref["config"])))
    model.load_state_dict(fixture_state(ref, "sd/"), strict=True)
    return model


def eval_logits(model, x):
    model.eval()
    with minivit.no_grad():
        return model(minivit.tensor(x)).numpy()


def assert_logits_match(out, expected, rtol: float = 1e-5) -> float:
    """max |out - expected| <= rtol * max(1, max |expected|); returns that scale."""
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(out - expected).max() <= rtol * scale, np.abs(out - expected).max()
    return scale


def check_timm_fixture(model_cls, filename: str) -> None:
    """A fixture with ``meta`` (JSON: num_classes, minivit_kwargs, num_params), the timm state
    under ``state/``, ``input``, float32 ``logits`` and float64 ``logits64``: same parameter
    count, logits within 1e-5, and within 1e-10 with float64 arithmetic on the same weights."""
    ref = load_fixture(filename)
    meta = json.loads(str(ref["meta"]))
    model = model_cls(num_classes=meta["num_classes"], **meta["minivit_kwargs"])
    assert n_params(model) == meta["num_params"]
    model.load_state_dict(fixture_state(ref, "state/"), strict=True)
    scale = assert_logits_match(eval_logits(model, ref["input"]), ref["logits"])
    model.double()       # same float32 weights, float64 arithmetic on both sides
    out64 = eval_logits(model, ref["input"].astype(np.float64))
    assert np.abs(out64 - ref["logits64"]).max() <= 1e-10 * scale


# --------------------------------------------------------------------------------------------
# overfitting 64 real CIFAR images


def load_cifar64():
    """The first 64 training images of the CIFAR-10 subset, normalised, NCHW float32."""
    path = os.path.join(os.path.dirname(minivit.__file__), "data", "cifar10_subset.npz")
    if not os.path.exists(path):
        path = os.path.join(HERE, "..", "..", "shared", "data", "cifar10-exact-subset.npz")
    d = np.load(path, allow_pickle=False)
    x = d["x_train"][:64].astype(np.float32) / 255.0
    mean = np.array([125.3, 123.0, 113.9], np.float32) / 255
    std = np.array([63.0, 62.1, 66.7], np.float32) / 255
    x = ((x - mean) / std).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), d["y_train"][:64].astype(np.int64)


def adamw_step(params, state, lr, t, betas=(0.9, 0.999), eps=1e-8, wd=0.0):
    """Minimal AdamW (decoupled weight decay), independent of minivit.optim."""
    b1, b2 = betas
    for i, p in enumerate(params):
        if p.grad is None:
            continue
        g = p.grad.data
        m, v = state.setdefault(i, (np.zeros_like(g), np.zeros_like(g)))
        m[...] = b1 * m + (1 - b1) * g
        v[...] = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p.data = p.data * (1 - lr * wd) - lr * mhat / (np.sqrt(vhat) + eps)


def overfit(model, max_steps, lr=1e-3, batch=None, target=0.95, log=None):
    """Train on the 64 images; every 10 steps measure the training accuracy in eval mode
    (BatchNorm running statistics) and stop once it exceeds ``target``.

    ``batch=None``: full batch with the minimal ``adamw_step`` above; ``batch=n``:
    ``minivit.optim.AdamW`` on a random n of the 64 images each step. ``log`` (a list) gets
    (step, loss, accuracy, seconds) every 10 steps. Returns (accuracy, steps taken).
    """
    x_all, y_all = load_cifar64()
    if batch is None:
        x, y = minivit.tensor(x_all), minivit.tensor(y_all)
        params = list(model.parameters())
        state = {}

        def step(t):
            for p in params:
                p.grad = None
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            adamw_step(params, state, lr, t)
            return loss
    else:
        from minivit.optim import AdamW

        opt = AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        rng = np.random.default_rng(0)

        def step(t):
            idx = rng.permutation(64)[:batch]
            opt.zero_grad()
            loss = F.cross_entropy(model(minivit.tensor(x_all[idx])),
                                   minivit.tensor(y_all[idx]))
            loss.backward()
            opt.step()
            return loss

    t0 = time.perf_counter()
    acc = 0.0
    for t in range(1, max_steps + 1):
        model.train()
        loss = step(t)
        if t % 10 == 0:
            acc = float((eval_logits(model, x_all).argmax(axis=1) == y_all).mean())
            if log is not None:
                log.append((t, round(float(loss.item()), 4), acc,
                            round(time.perf_counter() - t0, 1)))
            if acc > target:
                return acc, t
    return acc, max_steps


def assert_overfits(make_model, name: str, max_steps: int, batch=None) -> None:
    """With seed 0, ``make_model()`` reaches training accuracy > 0.95 on the 64 images within
    ``max_steps`` (see ``overfit``); prints the log."""
    minivit.manual_seed(0)
    model = make_model()
    log = []
    acc, steps = overfit(model, max_steps=max_steps, batch=batch, log=log)
    print(f"{name} overfit (step, loss, accuracy, seconds):", log)
    assert acc > 0.95, f"training accuracy {acc} after {steps} steps: {log}"
