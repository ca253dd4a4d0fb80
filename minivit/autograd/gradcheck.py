"""Check analytic gradients against central finite differences.

``gradcheck`` compares every element (PyTorch's defaults: ``eps=1e-6, atol=1e-5, rtol=1e-3``);
``gradcheck_directional`` compares one random direction over all inputs and parameters with
two extra forward passes (Chainer's ``check_backward``), for layers and whole models.
Both contract the outputs with a random upstream gradient ``v`` (not ones: ones hide bugs
such as a BatchNorm backward that forgets the mean term), i.e. they check ``v^T J``.

Both run the ops on their *reference* bodies (``bodies="reference"``, the default): the math
of each op's docstring is what finite differences check, and ``tests/test_kernels.py`` checks
every fast body against its reference. ``bodies="fast"`` checks the fast bodies directly.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..kernels import reference_mode
from . import backend
from .grad_mode import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with finite differences."""


def _outputs(fn, inputs) -> tuple:
    out = fn(*inputs)
    return out if isinstance(out, (tuple, list)) else (out,)


def _checked(inputs, params) -> list[Tensor]:
    tensors = [t for t in list(inputs) + list(params) if isinstance(t, Tensor) and t.requires_grad]
    if not tensors:
        raise ValueError("gradcheck: no input or parameter has requires_grad=True")
    if any(t.dtype != np.float64 for t in tensors):
        warnings.warn("gradcheck on non-float64 tensors: finite differences in float32 are too "
                      "coarse for these tolerances; use .double()", stacklevel=3)
    return tensors


def _seeded_upstream(outs, seed):
    rng = np.random.default_rng(seed)
    ups = []
    for o in outs:
        v = rng.standard_normal(o.shape).astype(o.dtype)
        ups.append(backend.to_device(v, o.device) if o.device != "cpu" else v)
    return ups


def _analytic(fn, inputs, tensors, ups) -> list:
    saved = [t.grad for t in tensors]
    for t in tensors:
        t.grad = None
    outs = _outputs(fn, inputs)
    total = None
    for o, v in zip(outs, ups):
        if o.requires_grad:
            term = (o * Tensor(v)).sum()
            total = term if total is None else total + term
    if total is None:
        raise ValueError("gradcheck: no output depends on the checked tensors")
    total.backward()
    grads = [backend.as_numpy(t.grad.data) if t.grad is not None else np.zeros(t.shape, t.dtype)
             for t in tensors]
    for t, g in zip(tensors, saved):
        t.grad = g
    return grads


def _objective(fn, inputs, ups) -> float:
    with no_grad():
        outs = _outputs(fn, inputs)
    return float(sum(float((backend.as_numpy(o.data).astype(np.float64) * backend.as_numpy(v)).sum())
                     for o, v in zip(outs, ups)))


def gradient_pairs(fn, *inputs, eps: float = 1e-6, params=(), seed: int = 0) -> list:
    """For each checked tensor (inputs, then ``params``): ``(numeric, analytic)`` gradients of
    ``sum(v * fn(*inputs))`` as NumPy arrays, numeric by central differences element by element.
    """
    tensors = _checked(inputs, params)
    ups = _seeded_upstream(_outputs_meta(fn, inputs), seed)
    analytic = _analytic(fn, inputs, tensors, ups)
    pairs = []
    for t, ga in zip(tensors, analytic):
        numeric = np.zeros(t.shape, dtype=np.float64)
        if not t.data.flags.c_contiguous:  # (not ascontiguousarray: it makes 0-d arrays 1-d)
            t.data = t.data.copy()
        flat = t.data.reshape(-1)  # a view: nudging it nudges t
        for i in range(flat.size):
            orig = flat[i].item()
            flat[i] = orig + eps
            f_plus = _objective(fn, inputs, ups)
            flat[i] = orig - eps
            f_minus = _objective(fn, inputs, ups)
            flat[i] = orig
            numeric.reshape(-1)[i] = (f_plus - f_minus) / (2 * eps)
        pairs.append((numeric, ga))
    return pairs


def _bodies(bodies: str):
    if bodies not in ("reference", "fast"):
        raise ValueError(f"gradcheck: bodies must be 'reference' or 'fast', got {bodies!r}")
    return reference_mode(bodies == "reference")


def gradcheck(fn, *inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              params=(), seed: int = 0, bodies: str = "reference") -> bool:
    """Compare every element of the gradient of ``fn`` with central differences.

    Example::

        x = minivit.randn(3, 4, dtype="float64", requires_grad=True)
        gradcheck(lambda x: (x * x).sum(axis=1), x)     # True, or GradcheckError

    ``params`` are extra tensors (e.g. a module's parameters) to check besides the inputs.
    ``bodies``: run the ops on their ``"reference"`` bodies (default) or ``"fast"`` ones.
    """
    with _bodies(bodies):
        pairs = gradient_pairs(fn, *inputs, eps=eps, params=params, seed=seed)
    for k, (numeric, ga) in enumerate(pairs):
        bad = np.abs(ga - numeric) > atol + rtol * np.abs(numeric)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise GradcheckError(
                f"gradcheck failed for tensor {k} of {len(pairs)} (shape {numeric.shape}) at "
                f"element {idx}: numeric {numeric[idx]:.8g}, analytic {ga[idx]:.8g} "
                f"({int(bad.sum())} of {bad.size} elements out of tolerance; max abs error "
                f"{np.abs(ga - numeric).max():.3g})")
    return True


def directional_derivatives(fn, *inputs, eps: float = 1e-6, params=(),
                            seed: int = 0) -> tuple[float, float]:
    """``(numeric, analytic)`` derivative of ``sum(v * fn(*inputs))`` along one random unit
    direction over all inputs and ``params``: two forward passes and one backward."""
    tensors = _checked(inputs, params)
    ups = _seeded_upstream(_outputs_meta(fn, inputs), seed)
    analytic = _analytic(fn, inputs, tensors, ups)
    rng = np.random.default_rng(seed + 1)
    dirs = [rng.standard_normal(t.shape) for t in tensors]
    norm = np.sqrt(sum(float((d * d).sum()) for d in dirs))
    dirs = [d / norm for d in dirs]
    xp = backend.get_array_module(tensors[0].data)
    originals = [t.data.copy() for t in tensors]

    def shifted(step):
        for t, o, d in zip(tensors, originals, dirs):
            t.data[...] = o + xp.asarray(d * step, dtype=t.dtype)
        return _objective(fn, inputs, ups)

    try:
        numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
    finally:
        for t, o in zip(tensors, originals):
            t.data[...] = o
    return numeric, sum(float((g * d).sum()) for g, d in zip(analytic, dirs))


def gradcheck_directional(fn, *inputs, eps: float = 1e-6, atol: float = 1e-5,
                          rtol: float = 1e-3, params=(), seed: int = 0,
                          bodies: str = "reference") -> bool:
    """Check the derivative along one random unit direction over all inputs and ``params``.

    Two forward passes instead of two per element: the check for big layers and whole models.
    ``bodies`` as in ``gradcheck``.
    """
    with _bodies(bodies):
        numeric, exact = directional_derivatives(fn, *inputs, eps=eps, params=params,
                                                 seed=seed)
    if abs(exact - numeric) > atol + rtol * abs(numeric):
        n = len(_checked(inputs, params))
        raise GradcheckError(f"directional gradcheck failed: numeric {numeric:.10g}, analytic "
                             f"{exact:.10g} (difference {abs(exact - numeric):.3g}) over "
                             f"{n} tensors")
    return True


def _outputs_meta(fn, inputs):
    with no_grad():
        return _outputs(fn, inputs)
