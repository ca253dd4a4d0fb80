"""Reductions and the softmax family: gradients through the harness, forwards against NumPy,
ties, and the PyTorch-style method forms (``dim=``, ``keepdim=``)."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minivit
from harness import arrays, axes, check_grad, distinct_arrays, reduced_count, shapes

SMALL = dict(max_dims=3, max_side=4)


def logsumexp_ref(x, axis=None, keepdims=False):
    m = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis if axis is not None else None)


def softmax_ref(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# name: (minivit reduction, NumPy reference)
REDUCTIONS = {
    "sum": (minivit.sum, np.sum),
    "mean": (minivit.mean, np.mean),
    "max": (minivit.max, np.max),
    "min": (minivit.min, np.min),
    "logsumexp": (minivit.logsumexp, logsumexp_ref),
}


@st.composite
def shape_axis(draw, min_dims=0, **kw):
    shape = draw(shapes(min_dims=min_dims, **{**SMALL, **kw}))
    return shape, draw(axes(len(shape))), draw(st.booleans())


# --- gradients ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@given(data=st.data())
def test_reduction_grad(name, data, device):
    op = REDUCTIONS[name][0]
    shape, axis, keepdims = data.draw(shape_axis())
    # max/min: distinct values, so no tie sits inside the finite-difference step
    x = data.draw(distinct_arrays(shape) if name in ("max", "min") else arrays(shape))
    check_grad(lambda x: op(x, axis=axis, keepdims=keepdims), x, device=device)


@pytest.mark.parametrize("op", [minivit.var, minivit.std])
@given(data=st.data())
def test_var_std_grad(op, data, device):
    shape, axis, keepdims = data.draw(shape_axis(min_dims=1))
    ddof = data.draw(st.sampled_from([0, 1]))
    assume(reduced_count(shape, axis) >= 2)
    x = data.draw(distinct_arrays(shape, gap=0.05))  # std: never a zero variance
    check_grad(lambda x: op(x, axis=axis, ddof=ddof, keepdims=keepdims), x, device=device)


@pytest.mark.parametrize("op", [minivit.softmax, minivit.log_softmax])
@given(data=st.data())
def test_softmax_grad(op, data, device):
    shape = data.draw(shapes(min_dims=1, **SMALL))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(arrays(shape, -5, 5))
    check_grad(lambda x: op(x, axis=axis), x, device=device)


# --- forwards against NumPy ------------------------------------------------------------------

CASES = [((), None), ((5,), None), ((5,), 0), ((5,), -1), ((3, 4), 0), ((3, 4), 1),
         ((3, 4), (0, 1)), ((2, 3, 4), (0, 2)), ((2, 3, 4), -2), ((2, 3, 4), None),
         ((2, 3, 4), (2, 0))]
TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}


def _check(y, expected, dtype, device):
    assert y.dtype == dtype, f"{y.dtype} != {dtype}"
    assert y.shape == np.shape(expected) and y.device == device
    np.testing.assert_allclose(y.numpy(), expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reduction_forward_matches_numpy(name, dtype, device):
    op, ref = REDUCTIONS[name]
    rng = np.random.default_rng(0)
    for shape, axis in CASES:
        x = rng.standard_normal(shape).astype(dtype)
        t = minivit.tensor(x, device=device)
        for keepdims in (False, True):
            _check(op(t, axis=axis, keepdims=keepdims), ref(x, axis=axis, keepdims=keepdims),
                   dtype, device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_var_std_forward_match_numpy(dtype, device):
    rng = np.random.default_rng(1)
    for shape, axis in CASES[1:]:
        x = rng.standard_normal(shape).astype(dtype)
        t = minivit.tensor(x, device=device)
        for ddof in (0, 1):
            if np.size(np.sum(x, axis=axis)) * (1 + ddof) > x.size:  # N - ddof would be 0
                continue
            for keepdims in (False, True):
                kw = dict(axis=axis, ddof=ddof, keepdims=keepdims)
                _check(minivit.var(t, **kw), np.var(x, **kw), dtype, device)
                _check(minivit.std(t, **kw), np.std(x, **kw), dtype, device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_forward_matches_numpy(dtype, device):
    rng = np.random.default_rng(2)
    for shape in [(5,), (3, 4), (2, 3, 4)]:
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        t = minivit.tensor(x, device=device)
        for axis in range(-len(shape), len(shape)):
            p = softmax_ref(x.astype(np.float64), axis)
            _check(minivit.softmax(t, axis=axis), p, dtype, device)
            _check(minivit.log_softmax(t, axis=axis), np.log(p), dtype, device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_family_is_stable_for_large_inputs(dtype, device):
    x = np.array([[1000.0, 1000.0, -1000.0], [-1e4, 0.0, 1e4]], dtype=dtype)
    t = minivit.tensor(x, device=device)
    np.testing.assert_allclose(minivit.softmax(t).numpy(), [[0.5, 0.5, 0.0], [0, 0, 1]])
    np.testing.assert_allclose(minivit.log_softmax(t).numpy()[0, :2], [-np.log(2)] * 2,
                               rtol=1e-6)
    np.testing.assert_allclose(minivit.logsumexp(t, axis=1).numpy(),
                               [1000 + np.log(2), 1e4], rtol=1e-6)
    np.testing.assert_allclose(minivit.log_softmax(t).numpy()[1], [-2e4, -1e4, 0.0])


# --- ties: the gradient splits evenly ---------------------------------------------------------

@pytest.mark.parametrize("op", [minivit.max, minivit.min])
def test_max_min_ties_split_evenly(op, device):
    sign = 1.0 if op is minivit.max else -1.0
    x = minivit.tensor(sign * np.array([[3.0, 1.0, 3.0, 3.0], [0.0, 2.0, 2.0, -1.0]]),
                       dtype=np.float32, device=device, requires_grad=True)
    op(x).backward()  # a single maximum value, 3, shared by three elements
    np.testing.assert_allclose(x.grad.numpy(), [[1 / 3, 0, 1 / 3, 1 / 3], [0, 0, 0, 0]])
    x.grad = None
    up = minivit.tensor([10.0, 4.0], device=device)
    (op(x, axis=1) * up).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[10 / 3, 0, 10 / 3, 10 / 3], [0, 2, 2, 0]])
    x.grad = None
    op(x, axis=0, keepdims=True).sum().backward()  # no tie down the columns
    np.testing.assert_allclose(x.grad.numpy(), [[1, 0, 1, 1], [0, 1, 0, 0]])
    assert x.grad.dtype == np.float32


def test_max_all_equal_spreads_uniformly(device):
    x = minivit.tensor(np.full((2, 3), 7.0), dtype=np.float64, device=device, requires_grad=True)
    minivit.max(x).backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 3), 1 / 6))


# --- the method forms ----------------------------------------------------------------------------

def test_methods_with_dim_and_keepdim(device):
    x = np.random.default_rng(3).standard_normal((2, 3, 4))
    t = minivit.tensor(x, dtype=np.float64, device=device)
    pairs = [
        (t.sum(dim=1, keepdim=True), x.sum(axis=1, keepdims=True)),
        (t.sum(axis=(0, 2)), x.sum(axis=(0, 2))),
        (t.sum(), x.sum()),
        (t.mean(dim=-1), x.mean(axis=-1)),
        (t.mean(dim=(0, 1), keepdim=True), x.mean(axis=(0, 1), keepdims=True)),
        (t.max(dim=2).values, x.max(axis=2)),
        (t.max(axis=2), x.max(axis=2)),
        (t.min(dim=0, keepdim=True).values, x.min(axis=0, keepdims=True)),
        (t.min(axis=0, keepdims=True), x.min(axis=0, keepdims=True)),
        (t.var(dim=1), x.var(axis=1)),
        (t.var(dim=1, ddof=1, keepdim=True), x.var(axis=1, ddof=1, keepdims=True)),
        (t.std(dim=-1), x.std(axis=-1)),
        (t.logsumexp(dim=1), logsumexp_ref(x, axis=1)),
        (t.softmax(dim=1), softmax_ref(x, axis=1)),
        (t.softmax(), softmax_ref(x, axis=-1)),
        (t.log_softmax(dim=0), np.log(softmax_ref(x, axis=0))),
    ]
    for got, want in pairs:
        assert got.shape == np.shape(want)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_method_forms_are_differentiable():
    x = np.random.default_rng(4).standard_normal((3, 4))
    check_grad(lambda t: t.sum(dim=1, keepdim=True) * t.mean(dim=0) + t.var(dim=1, keepdim=True)
               + t.logsumexp(dim=0) + t.softmax(dim=0) + t.log_softmax(dim=1), x)
    check_grad(lambda t: t.max(dim=1, keepdim=True)[0] - t.min(dim=0).values + t.std(dim=1, keepdim=True),
               x)


def test_reduce_bad_axis_names_the_op():
    t = minivit.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"sum: axis 2 is out of range .* 2 dimensions"):
        t.sum(axis=2)
    with pytest.raises(ValueError, match=r"var: .* no degrees of freedom"):
        t.var(axis=0, ddof=2)
    with pytest.raises(ValueError, match=r"max of an empty tensor"):
        minivit.max(minivit.tensor(np.ones((0, 3))))
