"""The property-test harness for op gradients (after MyGrad's ``tests/wrappers/uber.py``).

``check_grad(fn, *arrays)`` runs ``fn`` on float64 tensors made from ``arrays`` and checks:
the analytic gradient against central finite differences (``minivit.gradcheck``) with a
random upstream gradient, that the inputs were not mutated, that every gradient has its
input's shape and dtype, and that the graph is freed once the output is dropped.
Strategies draw shapes, mutually broadcastable shape pairs and values kept away from kinks.
``load_tool(name)`` imports a script of ``tools/`` (not part of the package) for its tests.
"""
from __future__ import annotations

import gc
import importlib.util
import weakref
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minivit
from minivit.autograd import backend, gradcheck, gradcheck_directional


def check_grad(fn, *arrays, device="cpu", directional=False, atol=1e-5, rtol=1e-3,
               requires_grad=None, seed=0):
    """Gradient of ``fn(*tensors)`` vs finite differences, plus the harness's invariants."""
    requires_grad = requires_grad or [True] * len(arrays)
    originals = [np.array(a, dtype=np.float64, copy=True) for a in arrays]
    tensors = [minivit.tensor(a, dtype=np.float64, device=device, requires_grad=r)
               for a, r in zip(originals, requires_grad)]
    check = gradcheck_directional if directional else gradcheck
    assert check(fn, *tensors, atol=atol, rtol=rtol, seed=seed)
    for t, a in zip(tensors, originals):
        assert t.shape == a.shape and t.dtype == a.dtype, "the input's shape or dtype changed"
        np.testing.assert_array_equal(t.numpy(), a, err_msg="the op mutated its input")
    out = fn(*tensors)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    total = sum((o * minivit.tensor(np.random.default_rng(seed).standard_normal(o.shape),
                                    dtype=np.float64, device=device)).sum() for o in outs)
    for t in tensors:
        t.grad = None
    total.backward()
    for t, r in zip(tensors, requires_grad):
        if r and t.grad is not None:
            assert t.grad.shape == t.shape, f"grad shape {t.grad.shape} != {t.shape}"
            assert t.grad.dtype == t.dtype, f"grad dtype {t.grad.dtype} != {t.dtype}"
            assert t.grad.device == t.device
    # the graph must be freed once the outputs are dropped
    creators = [weakref.ref(o.creator) for o in outs if o.creator is not None]
    del out, outs, total
    if not all(c() is None for c in creators):  # fast path: no cycles, refcounting frees it
        gc.collect()
    assert all(c() is None for c in creators), "graph still alive after the output was dropped"
    return tensors


def shapes(min_dims=0, max_dims=4, min_side=1, max_side=5):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def broadcastable_pair(min_dims=0, max_dims=4, max_side=5):
    """Two shapes that broadcast together (either may be the smaller)."""
    return hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=min_dims, max_dims=max_dims,
                                             max_side=max_side).map(lambda r: r.input_shapes)


def arrays(shape, lo=-3.0, hi=3.0, away_from=(), margin=0.05):
    """float64 arrays in [lo, hi], every element at least ``margin`` from each kink in
    ``away_from`` (e.g. 0 for relu/abs), so finite differences never straddle a kink."""
    elements = st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=64)
    if away_from:
        elements = elements.filter(lambda v: all(abs(v - k) > margin for k in away_from))
    return hnp.arrays(np.float64, shape, elements=elements)


def distinct_arrays(shape, lo=-3.0, hi=3.0, gap=1e-3):
    """Arrays whose elements are pairwise distinct (for max/min/sort without ties)."""
    size = int(np.prod(shape)) if shape else 1
    return st.lists(st.floats(lo, hi, allow_nan=False, width=64), min_size=size, max_size=size,
                    unique_by=lambda v: round(v / gap)).map(
        lambda v: np.array(v, dtype=np.float64).reshape(shape))


def upstream(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


__all__ = ["check_grad", "shapes", "broadcastable_pair", "arrays", "distinct_arrays",
           "upstream", "backend"]


# --- more strategies (engine op tests) -------------------------------------------------------

def axes(ndim, allow_none=True):
    """An ``axis`` argument for a reduction over ``ndim`` dims: None, an int (maybe negative),
    or a tuple of distinct axes."""
    options = []
    if allow_none:
        options.append(st.none())
    if ndim > 0:
        options.append(st.integers(-ndim, ndim - 1))
        options.append(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim,
                                unique=True).map(tuple))
    return st.one_of(*options) if options else st.none()


def offset_arrays(shape, lo=-3.0, hi=3.0, phase=0.0):
    """Arrays whose elements sit in ``[k + phase, k + phase + 0.4]`` for integers k: two draws
    with phases 0 and 0.5 differ by at least 0.1 everywhere (ties impossible, for max/min)."""
    def place(x):
        k = np.floor(x)
        return k + phase + 0.4 * (x - k)
    return arrays(shape, lo, hi).map(place)


def reduced_count(shape, axis) -> int:
    """How many elements a reduction over ``axis`` combines."""
    if axis is None:
        return int(np.prod(shape)) if shape else 1
    ax = (axis,) if isinstance(axis, int) else axis
    return int(np.prod([shape[a] for a in ax])) if ax else 1


def load_tool(name: str):
    """The module ``tools/<name>.py`` of this repository, imported from its file."""
    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
