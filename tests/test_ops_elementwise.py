"""Elementwise ops: gradients against finite differences (the harness) and forwards against
NumPy, on every backend (the ``device`` fixture; CUDA skips without a GPU)."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minivit
from minivit.autograd import backend
from harness import arrays, broadcastable_pair, check_grad, offset_arrays, shapes

SMALL = dict(max_dims=3, max_side=4)  # gradcheck is per element: keep the arrays small
erf_ref = np.vectorize(math.erf, otypes=[np.float64])


def gelu_ref(x):
    return 0.5 * x * (1 + erf_ref(x / math.sqrt(2)))


def gelu_tanh_ref(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


# name: (minivit op, NumPy reference, value range, kinks/singular points to stay away from)
UNARY = {
    "neg": (minivit.neg, np.negative, (-3, 3), ()),
    "exp": (minivit.exp, np.exp, (-3, 3), ()),
    "log": (minivit.log, np.log, (0.1, 5), ()),
    "sqrt": (minivit.sqrt, np.sqrt, (0.1, 5), ()),
    "abs": (minivit.abs, np.abs, (-3, 3), (0.0,)),
    "tanh": (minivit.tanh, np.tanh, (-3, 3), ()),
    "sigmoid": (minivit.sigmoid, lambda x: 1 / (1 + np.exp(-x)), (-6, 6), ()),
    "relu": (minivit.relu, lambda x: np.maximum(x, 0), (-3, 3), (0.0,)),
    "gelu": (minivit.gelu, gelu_ref, (-4, 4), ()),
    "gelu_tanh": (lambda x: minivit.gelu(x, approximate="tanh"), gelu_tanh_ref, (-4, 4), ()),
    "erf": (minivit.erf, erf_ref, (-3, 3), ()),
    "rpow": (lambda x: 2.0 ** x, lambda x: 2.0 ** x, (-3, 3), ()),
}

# clip bounds and scalar exponents, each with the range of x it is drawn from
CLIPS = [(-1.0, 1.5), (0.5, None), (None, 0.5)]
EXPONENTS = {2: (-3, 3), 3: (-3, 3), 0.5: (0.1, 4), -1: (-3, 3), 2.5: (0.1, 3), -0.5: (0.2, 3),
             0: (-3, 3)}

# name: (minivit op, NumPy reference, range of a, range of b, b's singular points)
BINARY = {
    "add": (minivit.add, np.add, (-3, 3), (-3, 3), ()),
    "sub": (minivit.sub, np.subtract, (-3, 3), (-3, 3), ()),
    "mul": (minivit.mul, np.multiply, (-3, 3), (-3, 3), ()),
    "div": (minivit.div, np.divide, (-3, 3), (-3, 3), (0.0,)),
    "pow": (minivit.pow, np.power, (0.3, 3), (-2, 2), ()),
}


def _b_arrays(shape, lo, hi, singular):
    return arrays(shape, lo, hi, away_from=singular, margin=0.3)


# --- gradients ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data())
def test_unary_grad(name, data, device):
    op, _, (lo, hi), kinks = UNARY[name]
    x = data.draw(arrays(data.draw(shapes(**SMALL)), lo, hi, away_from=kinks, margin=0.05))
    check_grad(op, x, device=device)


@given(data=st.data())
def test_clip_grad(data, device):
    lo, hi = data.draw(st.sampled_from(CLIPS))
    kinks = tuple(v for v in (lo, hi) if v is not None)
    x = data.draw(arrays(data.draw(shapes(**SMALL)), away_from=kinks))
    check_grad(lambda x: minivit.clip(x, lo, hi), x, device=device)


@given(data=st.data())
def test_pow_scalar_grad(data, device):
    p = data.draw(st.sampled_from(sorted(EXPONENTS)))
    x = data.draw(arrays(data.draw(shapes(**SMALL)), *EXPONENTS[p], away_from=(0.0,), margin=0.2))
    check_grad(lambda x: x ** p, x, device=device)


@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data())
def test_binary_grad_broadcasting(name, data, device):
    op, _, ra, rb, singular = BINARY[name]
    sa, sb = data.draw(broadcastable_pair(max_dims=3, max_side=4))
    a = data.draw(arrays(sa, *ra))
    b = data.draw(_b_arrays(sb, *rb, singular))
    check_grad(op, a, b, device=device)


@pytest.mark.parametrize("op", [minivit.maximum, minivit.minimum])
@given(data=st.data())
def test_maximum_minimum_grad(op, data, device):
    sa, sb = data.draw(broadcastable_pair(max_dims=3, max_side=4))
    a = data.draw(offset_arrays(sa, phase=0.0))
    b = data.draw(offset_arrays(sb, phase=0.5))  # never equal to a: no tie inside eps
    check_grad(op, a, b, device=device)


@given(data=st.data())
def test_where_grad(data, device):
    sa, sb = data.draw(broadcastable_pair(max_dims=3, max_side=4))
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    cond = data.draw(arrays(np.broadcast_shapes(sa, sb))) > 0
    check_grad(lambda a, b: minivit.where(cond, a, b), a, b, device=device)


@given(data=st.data())
def test_where_scalar_branch_grad(data, device):
    x = data.draw(arrays(data.draw(shapes(**SMALL)), away_from=(0.0,)))
    check_grad(lambda x: minivit.where(x > 0, x, 0.0), x, device=device)


def test_grad_only_one_input(device):
    """needs_input_grad: an input without requires_grad gets no gradient, the other one does."""
    a = minivit.tensor(np.array([1.0, 2.0]), dtype=np.float64, device=device, requires_grad=True)
    b = minivit.tensor(np.array([3.0, 4.0]), dtype=np.float64, device=device)
    for op in (minivit.mul, minivit.div, minivit.pow, minivit.maximum):
        a.grad = None
        op(a, b).sum().backward()
        assert a.grad is not None and b.grad is None


# --- ties: the gradient splits evenly --------------------------------------------------------

@pytest.mark.parametrize("op", [minivit.maximum, minivit.minimum])
def test_maximum_minimum_ties_split_evenly(op, device):
    a = minivit.tensor([1.0, 2.0, 3.0], device=device, requires_grad=True)
    b = minivit.tensor([1.0, 0.0, 5.0], device=device, requires_grad=True)
    up = minivit.tensor([2.0, 4.0, 8.0], device=device)
    (op(a, b) * up).sum().backward()
    if op is minivit.maximum:
        ga, gb = [1.0, 4.0, 0.0], [1.0, 0.0, 8.0]
    else:
        ga, gb = [1.0, 0.0, 8.0], [1.0, 4.0, 0.0]
    np.testing.assert_array_equal(a.grad.numpy(), ga)
    np.testing.assert_array_equal(b.grad.numpy(), gb)
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float32


def test_maximum_tie_with_broadcast_scalar(device):
    """A broadcast operand collects its half of every tie it takes part in."""
    a = minivit.tensor([0.0, 0.0, 2.0], device=device, requires_grad=True)
    b = minivit.tensor(0.0, device=device, requires_grad=True)
    minivit.maximum(a, b).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [0.5, 0.5, 1.0])
    assert b.grad.item() == 1.0


# --- forwards against NumPy ------------------------------------------------------------------

TOL = {np.float32: dict(rtol=2e-6, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


FORWARD_SHAPES = [(), (1,), (7,), (3, 4), (2, 3, 4)]
PAIR_SHAPES = [((), ()), ((3,), ()), ((), (2, 3)), ((2, 1, 4), (3, 1)), ((4, 3), (4, 3))]


def _values(shape, lo, hi, away_from=(), seed=0):
    x = np.random.default_rng(seed).uniform(lo, hi, shape)
    for k in away_from:  # push values off the kinks/singular points
        x = np.where(np.abs(x - k) < 0.05, k + 0.1, x)
    return x


def _same(y, expected, dtype, device):
    assert y.dtype == dtype and y.shape == np.shape(expected) and y.device == device
    np.testing.assert_allclose(y.numpy(), expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_forward_matches_numpy(name, dtype, device):
    op, ref, (lo, hi), kinks = UNARY[name]
    for i, shape in enumerate(FORWARD_SHAPES):
        x = _values(shape, lo, hi, kinks, seed=i).astype(dtype)
        _same(op(minivit.tensor(x, device=device)), ref(x.astype(np.float64)), dtype, device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_and_pow_scalar_forward_match_numpy(dtype, device):
    for i, shape in enumerate(FORWARD_SHAPES):
        x = _values(shape, -3, 3, seed=i).astype(dtype)
        t = minivit.tensor(x, device=device)
        for lo, hi in CLIPS:
            _same(minivit.clip(t, lo, hi), np.clip(x, lo, hi), dtype, device)
        _same(t.clip(-1.0, 1.0), np.clip(x, -1, 1), dtype, device)
        _same(t.clamp(-1.0, 1.0), np.clip(x, -1, 1), dtype, device)
        for p, (lo, hi) in EXPONENTS.items():
            xp_ = _values(shape, lo, hi, (0.0,), seed=i).astype(dtype)
            tp = minivit.tensor(xp_, device=device)
            ref = xp_.astype(np.float64) ** p
            _same(tp ** p, ref, dtype, device)
            _same(minivit.pow(tp, p), ref, dtype, device)
            _same(tp.pow(p), ref, dtype, device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_forward_matches_numpy(name, dtype, device):
    op, ref, ra, rb, singular = BINARY[name]
    for i, (sa, sb) in enumerate(PAIR_SHAPES):
        a = _values(sa, *ra, seed=i).astype(dtype)
        b = _values(sb, *rb, singular, seed=100 + i).astype(dtype)
        ta, tb = minivit.tensor(a, device=device), minivit.tensor(b, device=device)
        _same(op(ta, tb), ref(a, b), dtype, device)


OPERATORS = [(lambda a, b: a + b, np.add), (lambda a, b: a - b, np.subtract),
             (lambda a, b: a * b, np.multiply), (lambda a, b: a / b, np.divide),
             (lambda a, b: a ** b, np.power)]


@pytest.mark.parametrize("i", range(len(OPERATORS)))
def test_python_operators(i, device):
    """``a + b`` etc. on Tensors, and with a NumPy array or a Python number on either side."""
    op, ref = OPERATORS[i]
    a = _values((2, 3), 0.5, 2, seed=1)
    b = _values((3,), 0.5, 2, seed=2)
    ta, tb = (minivit.tensor(v, dtype=np.float64, device=device) for v in (a, b))
    _same(op(ta, tb), ref(a, b), np.float64, device)
    _same(op(ta, 1.5), ref(a, 1.5), np.float64, device)
    _same(op(1.5, tb), ref(1.5, b), np.float64, device)
    if device == "cpu":
        _same(op(ta, b), ref(a, b), np.float64, device)  # an ndarray is a constant
    check_grad(op, a, b, device=device)
    _same(-ta, -a, np.float64, device)


@pytest.mark.parametrize("op, ref", [(minivit.maximum, np.maximum), (minivit.minimum, np.minimum)])
def test_maximum_minimum_forward(op, ref, device):
    a = np.array([[1.0, -2.0, 3.0], [0.5, 0.5, -1.0]], dtype=np.float32)
    b = np.array([1.0, 0.0, 4.0], dtype=np.float32)
    y = op(minivit.tensor(a, device=device), minivit.tensor(b, device=device))
    np.testing.assert_array_equal(y.numpy(), ref(a, b))
    assert y.dtype == np.float32


def test_where_forward(device):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    cond = np.array([True, False, True])
    y = minivit.where(minivit.tensor(cond), minivit.tensor(a, device=device), -1.0)
    np.testing.assert_array_equal(y.numpy(), np.where(cond, a, np.float32(-1)))
    assert y.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_no_overflow(dtype, device):
    x = minivit.tensor(np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0], dtype=dtype), device=device)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = minivit.sigmoid(x).numpy()
    np.testing.assert_allclose(y, [0.0, 1.9287498e-22, 0.5, 1.0, 1.0], rtol=1e-6)


def test_relu_clip_abs_gradient_conventions():
    """At the kink relu passes nothing, clip passes at its bounds, abs passes sign(0) = 0."""
    x = minivit.tensor([-1.0, 0.0, 1.0, 2.0], requires_grad=True)
    minivit.relu(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 1, 1])
    x.grad = None
    minivit.clip(x, 0.0, 1.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 1, 0])
    x.grad = None
    minivit.abs(x).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [-1, 0, 1, 1])


# --- erf: against math.erf --------------------------------------------------------------------

ERF_POINTS = np.concatenate([
    [0.0, 1e-30, 1e-9, 1e-6, 1e-4, 1e-2, 0.1, 0.5, 1.0, 1.4999, 1.5, 1.5001, 2.0, 3.0, 4.0, 5.0,
     6.0, 10.0, 30.0],
    np.linspace(0, 6, 601), np.geomspace(1e-12, 1.0, 200),
])
ERF_POINTS = np.concatenate([ERF_POINTS, -ERF_POINTS])


def test_erf_float64_matches_math_erf():
    x = ERF_POINTS.astype(np.float64)
    y = backend.erf(x)
    assert y.dtype == np.float64
    ref = erf_ref(x)
    np.testing.assert_allclose(y, ref, rtol=4 * np.finfo(np.float64).eps, atol=0)


def test_erf_float32_to_float32_precision():
    """A few ulps of float32, relative, down to tiny arguments (erf(x) ~ 2x/sqrt(pi))."""
    x = ERF_POINTS.astype(np.float32)
    y = backend.erf(x)
    assert y.dtype == np.float32
    ref = erf_ref(x.astype(np.float64))
    np.testing.assert_allclose(y, ref, rtol=8 * np.finfo(np.float32).eps, atol=1e-38)
    assert np.all(np.abs(y) <= 1.0)


@given(arrays(shapes(max_dims=2, max_side=30), -8, 8))
def test_erf_property_both_precisions(x):
    ref = erf_ref(x)
    np.testing.assert_allclose(minivit.erf(minivit.tensor(x)).numpy(), ref,
                               rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(minivit.erf(minivit.tensor(x.astype(np.float32))).numpy(),
                               ref, rtol=1e-6, atol=1e-38)


def test_erf_odd_and_limits():
    x = np.array([-np.inf, -40.0, 40.0, np.inf])
    for dtype in (np.float32, np.float64):
        np.testing.assert_array_equal(backend.erf(x.astype(dtype)), [-1, -1, 1, 1])
    assert np.isnan(backend.erf(np.array([np.nan]))).all()


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_float32_far_out_saturates_without_warnings(approximate):
    """Both GELUs compute their sigmoid as 1 / (1 + exp(...)): far left exp overflows to inf on
    purpose, which must give exactly 0 (GELU = -0.0 or 0), far right GELU(x) = x, no warning,
    and everywhere in between the float64 formula's value to float32 precision."""
    import warnings
    x64 = np.concatenate([np.linspace(-30, 30, 6001), -np.geomspace(30, 1e30, 50),
                          np.geomspace(30, 1e30, 50)])
    if approximate == "tanh":
        want = gelu_tanh_ref(x64)
    else:
        want = x64 * 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in x64]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = minivit.gelu(minivit.tensor(x64.astype(np.float32)), approximate=approximate).numpy()
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=2e-6, atol=2e-7)
    far_right = x64 > 30
    assert np.all(y[x64 < -30] == 0)
    np.testing.assert_array_equal(y[far_right], x64[far_right].astype(np.float32))
