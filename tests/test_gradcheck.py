"""gradcheck and gradcheck_directional: they pass on correct gradients, catch wrong ones and say
where (tensor index, element, numeric and analytic values), warn on float32, and leave the
inputs as they found them."""
import re
import warnings

import numpy as np
import pytest

import minivit
from minivit import Function, GradcheckError, gradcheck, gradcheck_directional


def leaf(a, dtype=np.float64):
    return minivit.tensor(np.asarray(a, dtype=dtype), requires_grad=True)


class BrokenMul(Function):
    """a * b whose gradient for b is wrong in one element: element (1, 2) gets 10x."""

    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    def backward(ctx, g):
        a, b = ctx.saved_tensors
        gb = g * a
        gb[1, 2] *= 10.0
        return g * b, gb


class CenterForgetsMean(Function):
    """y = x - mean(x) with a backward that returns zeros instead of g - mean(g): right for an
    upstream of ones (g - mean(g) is then zero too), wrong for any other upstream."""

    def forward(ctx, x):
        return x - x.mean()

    def backward(ctx, g):
        return g - g  # should be g - g.mean()


def test_gradcheck_passes_on_correct_gradients():
    rng = np.random.default_rng(0)
    a, b = leaf(rng.standard_normal((2, 3))), leaf(rng.standard_normal(3))
    assert gradcheck(lambda a, b: (a * b).tanh(), a, b) is True
    assert gradcheck(lambda a, b: (a @ b, a.exp()), a, b)           # several outputs
    assert gradcheck_directional(lambda a, b: (a * b).sum(axis=0), a, b)
    w = leaf(rng.standard_normal((3, 2)))
    x = minivit.tensor(rng.standard_normal((4, 3)))                  # not checked
    assert gradcheck(lambda x: (x @ w).sigmoid(), x, params=[w])
    assert gradcheck_directional(lambda x: (x @ w).sigmoid(), x, params=[w])


def test_gradcheck_reports_where_it_fails():
    rng = np.random.default_rng(1)
    a, b = leaf(rng.uniform(1, 2, (2, 3))), leaf(rng.uniform(1, 2, (2, 3)))
    with pytest.raises(GradcheckError) as e:
        gradcheck(BrokenMul.apply, a, b)
    msg = str(e.value)
    assert "tensor 1 of 2" in msg and "(shape (2, 3))" in msg and "element (1, 2)" in msg
    assert "1 of 6 elements out of tolerance" in msg
    numeric = float(re.search(r"numeric (\S+),", msg).group(1))
    analytic = float(re.search(r"analytic (\S+) ", msg).group(1))
    assert np.isclose(analytic, 10 * numeric, rtol=1e-5)
    # the numeric value is the true derivative: upstream (seed 0) times a[1, 2]
    v = np.random.default_rng(0).standard_normal((2, 3))
    assert np.isclose(numeric, v[1, 2] * a.numpy()[1, 2], rtol=1e-6)


def test_gradcheck_directional_catches_it_too():
    rng = np.random.default_rng(2)
    a, b = leaf(rng.uniform(1, 2, (2, 3))), leaf(rng.uniform(1, 2, (2, 3)))
    with pytest.raises(GradcheckError, match=r"directional gradcheck failed: numeric \S+, "
                                             r"analytic \S+ \(difference .*\) over 2 tensors"):
        gradcheck_directional(BrokenMul.apply, a, b)


def test_random_upstream_catches_what_ones_would_hide():
    x = leaf(np.random.default_rng(3).standard_normal(5))
    y = CenterForgetsMean.apply(x)  # upstream of ones: broken and true gradients are both 0
    y.backward(np.ones(5))
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros(5))
    with pytest.raises(GradcheckError):
        gradcheck(CenterForgetsMean.apply, x)
    with pytest.raises(GradcheckError):
        gradcheck_directional(CenterForgetsMean.apply, x)


def test_gradcheck_warns_on_float32():
    x = leaf([1.0, 2.0], dtype=np.float32)
    with pytest.warns(UserWarning, match=r"non-float64.*use \.double\(\)"):
        gradcheck(lambda x: x * 2.0, x, atol=1e-2, rtol=1e-2, eps=1e-3)
    with pytest.warns(UserWarning, match="non-float64"):
        gradcheck_directional(lambda x: x * 2.0, x, atol=1e-2, rtol=1e-2, eps=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradcheck(lambda x: x * 2.0, leaf([1.0, 2.0]))  # float64: no warning


def test_gradcheck_needs_something_to_check():
    with pytest.raises(ValueError, match="no input or parameter has requires_grad=True"):
        gradcheck(lambda x: x * 2.0, minivit.tensor(np.ones(2)))
    c = minivit.tensor(np.ones(2))
    with pytest.raises(ValueError, match="no output depends on the checked tensors"):
        gradcheck(lambda x: c * 2.0, leaf([1.0, 2.0]))


def test_gradcheck_leaves_inputs_and_grads_as_they_were():
    x = leaf(np.arange(6.0).reshape(2, 3))
    data = x.data
    x.grad = minivit.tensor(np.full((2, 3), 7.0))
    s = leaf(1.5)                                            # 0-d stays 0-d
    t = minivit.tensor(np.arange(6.0).reshape(3, 2)).T       # a non-contiguous view
    t.requires_grad_()
    gradcheck(lambda x, s, t: x * s + t, x, s, t)
    gradcheck_directional(lambda x, s, t: x * s + t, x, s, t)
    assert x.data is data
    np.testing.assert_array_equal(x.numpy(), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 3), 7.0))
    assert s.shape == () and s.item() == 1.5 and s.grad is None
    np.testing.assert_array_equal(t.numpy(), np.arange(6.0).reshape(3, 2).T)


def test_gradcheck_tolerances_are_used():
    x = leaf([1.0, 2.0])

    class Slightly(Function):
        def forward(ctx, x):
            return x * 2

        def backward(ctx, g):
            return g * 2 * (1 + 1e-4)  # 1e-4 relative error

    with pytest.raises(GradcheckError):
        gradcheck(Slightly.apply, x, rtol=1e-6, atol=0)
    assert gradcheck(Slightly.apply, x, rtol=1e-3)
