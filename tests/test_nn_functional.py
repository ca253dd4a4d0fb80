"""minivit.nn.functional (linear, activations, dropout, drop_path) and minivit.nn.init:
gradients against finite differences (the harness) and forwards against NumPy references."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit
import minivit.nn.functional as F
from minivit import nn
from harness import arrays, check_grad

erf_ref = np.vectorize(math.erf, otypes=[np.float64])


# --- linear ----------------------------------------------------------------------------------

@given(st.data(), st.lists(st.integers(1, 3), max_size=2), st.integers(1, 4),
       st.integers(1, 4), st.booleans())
def test_linear_grad_and_forward(data, lead, n_in, n_out, bias):
    x = data.draw(arrays(tuple(lead) + (n_in,)))
    w = data.draw(arrays((n_out, n_in)))
    b = data.draw(arrays((n_out,)))
    expected = x @ w.T + (b if bias else 0)
    got = F.linear(minivit.tensor(x), minivit.tensor(w), minivit.tensor(b) if bias else None)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    if bias:
        check_grad(lambda x, w, b: F.linear(x, w, b), x, w, b)
    else:
        check_grad(lambda x, w: F.linear(x, w), x, w)


def test_linear_accepts_a_weight_view_and_float32():
    w = minivit.randn(6, 4, requires_grad=True)
    x = minivit.randn(2, 3, 4)
    y = F.linear(x, w[:3])  # a slice of a weight, as CeiT's class-token attention does
    assert y.shape == (2, 3, 3) and y.dtype == np.float32
    y.sum().backward()
    assert w.grad.shape == (6, 4) and np.all(w.grad.numpy()[3:] == 0)


def test_linear_feature_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"5 features.*\(3, 4\).*expects 4"):
        F.linear(minivit.randn(2, 5), minivit.randn(3, 4))


@given(st.data(), st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.booleans())
def test_linear_columns_grad_and_forward(data, n_in, n_out, m, bias):
    """W x + b on the columns of x (in, M): a loop over the columns, and finite differences."""
    x = data.draw(arrays((n_in, m)))
    w = data.draw(arrays((n_out, n_in)))
    b = data.draw(arrays((n_out,)))
    expected = np.stack([w @ x[:, j] + (b if bias else 0) for j in range(m)], axis=1)
    got = F.linear_columns(minivit.tensor(x), minivit.tensor(w),
                           minivit.tensor(b) if bias else None)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    if bias:
        check_grad(lambda x, w, b: F.linear_columns(x, w, b), x, w, b)
    else:
        check_grad(lambda x, w: F.linear_columns(x, w), x, w)


def test_linear_columns_shape_errors_name_shapes():
    with pytest.raises(ValueError, match=r"got weight \(3, 4\) and input \(5, 2\)"):
        F.linear_columns(minivit.randn(5, 2), minivit.randn(3, 4))
    with pytest.raises(ValueError, match=r"bias of shape \(2,\)"):
        F.linear_columns(minivit.randn(4, 2), minivit.randn(3, 4), minivit.randn(2))


GELU_REFS = {
    "gelu": lambda y: 0.5 * y * (1 + erf_ref(y / math.sqrt(2))),
    "gelu_tanh": lambda y: 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3))),
}


@settings(max_examples=15)
@given(st.data(), st.sampled_from(sorted(GELU_REFS)), st.booleans(), st.integers(1, 4),
       st.integers(1, 4), st.integers(1, 5), st.booleans())
def test_linear_act_gelu_grad_and_forward(data, act, columns, n_in, n_out, m, bias):
    """F.linear / F.linear_columns with act=: GELU of the affine map by the formula, and its
    gradients (bias included) against finite differences."""
    x = data.draw(arrays((n_in, m) if columns else (m, n_in)))
    w = data.draw(arrays((n_out, n_in)))
    b = data.draw(arrays((n_out,)))
    affine = (w @ x + (b[:, None] if bias else 0)) if columns else x @ w.T + (b if bias else 0)
    op = F.linear_columns if columns else F.linear
    got = op(minivit.tensor(x), minivit.tensor(w), minivit.tensor(b) if bias else None, act=act)
    np.testing.assert_allclose(got.numpy(), GELU_REFS[act](affine), rtol=1e-7, atol=1e-9)
    if bias:
        check_grad(lambda x, w, b: op(x, w, b, act=act), x, w, b)
    else:
        check_grad(lambda x, w: op(x, w, act=act), x, w)


@pytest.mark.parametrize("act", sorted(GELU_REFS))
@pytest.mark.parametrize("columns", [False, True])
def test_linear_act_gelu_matches_the_two_ops_on_large_float32(act, columns):
    """Large enough for the block-by-block passes on all cores (the bias add inside the GELU's
    pass, the bias gradient summed in its derivative's): the same numbers as Linear then GELU."""
    minivit.manual_seed(0)
    shape, approximate = ((64, 6000) if columns else (6000, 64)), ("tanh" if act == "gelu_tanh" else "none")
    x0 = minivit.randn(*shape)
    w0, b0 = minivit.randn(96, 64) * 0.2, minivit.randn(96)
    g = minivit.randn(*((96, 6000) if columns else (6000, 96)))
    results = []
    for fused in (True, False):
        x, w, b = (t.detach().requires_grad_() for t in (x0, w0, b0))
        op = F.linear_columns if columns else F.linear
        y = op(x, w, b, act=act) if fused else F.gelu(op(x, w, b), approximate=approximate)
        (y * g).sum().backward()
        results.append([y.numpy(), x.grad.numpy(), w.grad.numpy(), b.grad.numpy()])
    for got, want, name in zip(*results, ["y", "dx", "dW", "db"]):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-3, err_msg=name)


def test_linear_act_rejects_unknown_activations():
    with pytest.raises(ValueError, match=r"act must be None, 'gelu' or 'gelu_tanh', got 'relu'"):
        F.linear(minivit.randn(2, 3), minivit.randn(4, 3), act="relu")
    with pytest.raises(ValueError, match=r"got 'swish'"):
        F.linear_columns(minivit.randn(3, 2), minivit.randn(4, 3), act="swish")


@settings(max_examples=15)
@given(st.data(), st.booleans(), st.integers(1, 4), st.integers(1, 4), st.integers(1, 5),
       st.booleans())
def test_linear_residual_grad_and_forward(data, columns, n_in, n_out, m, bias):
    """residual= r: r + the affine map, and the gradients of x, W, b and r."""
    x = data.draw(arrays((n_in, m) if columns else (m, n_in)))
    w = data.draw(arrays((n_out, n_in)))
    b = data.draw(arrays((n_out,)))
    r = data.draw(arrays((n_out, m) if columns else (m, n_out)))
    affine = (w @ x + (b[:, None] if bias else 0)) if columns else x @ w.T + (b if bias else 0)
    op = F.linear_columns if columns else F.linear
    got = op(minivit.tensor(x), minivit.tensor(w), minivit.tensor(b) if bias else None,
             residual=minivit.tensor(r))
    np.testing.assert_allclose(got.numpy(), r + affine, rtol=1e-12, atol=1e-12)
    if bias:
        check_grad(lambda x, w, b, r: op(x, w, b, residual=r), x, w, b, r)
    else:
        check_grad(lambda x, w, r: op(x, w, residual=r), x, w, r)


@pytest.mark.parametrize("columns", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_residual_matches_the_two_ops_on_large_float32(columns, bias):
    """Large enough for the blocked pass on all cores: r + Linear(x) as two ops gives the same
    output and gradients (the residual's gradient is the incoming one)."""
    minivit.manual_seed(0)
    shape, out = ((64, 6000), (96, 6000)) if columns else ((2, 3000, 64), (2, 3000, 96))
    x0, w0, b0 = minivit.randn(*shape), minivit.randn(96, 64) * 0.2, minivit.randn(96)
    r0, g = minivit.randn(*out), minivit.randn(*out)
    results = []
    for fused in (True, False):
        x, w, b, r = (t.detach().requires_grad_() for t in (x0, w0, b0, r0))
        op = F.linear_columns if columns else F.linear
        bb = b if bias else None
        y = op(x, w, bb, residual=r) if fused else r + op(x, w, bb)
        (y * g).sum().backward()
        results.append([y.numpy(), x.grad.numpy(), w.grad.numpy(), r.grad.numpy()]
                       + ([b.grad.numpy()] if bias else []))
    for got, want, name in zip(*results, ["y", "dx", "dW", "dr", "db"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=name)


def test_linear_residual_errors_name_shapes():
    with pytest.raises(ValueError, match=r"residual of shape \(2, 3\) does not match the output "
                                         r"shape \(2, 4\)"):
        F.linear(minivit.randn(2, 3), minivit.randn(4, 3), residual=minivit.randn(2, 3))
    with pytest.raises(ValueError, match=r"residual of shape \(4, 3\) does not match the output "
                                         r"shape \(4, 2\)"):
        F.linear_columns(minivit.randn(3, 2), minivit.randn(4, 3), residual=minivit.randn(4, 3))
    with pytest.raises(ValueError, match="cannot follow act="):
        F.linear(minivit.randn(2, 3), minivit.randn(4, 3), act="gelu", residual=minivit.randn(2, 4))


# --- activations and softmax -----------------------------------------------------------------

def _softmax_ref(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


ACTIVATIONS = {
    "gelu": (F.gelu, lambda x: 0.5 * x * (1 + erf_ref(x / math.sqrt(2))), ()),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi)
                                                   * (x + 0.044715 * x ** 3))),
                  ()),
    "relu": (F.relu, lambda x: np.maximum(x, 0), (0.0,)),
    "silu": (F.silu, lambda x: x / (1 + np.exp(-x)), ()),
    "sigmoid": (F.sigmoid, lambda x: 1 / (1 + np.exp(-x)), ()),
    "tanh": (F.tanh, np.tanh, ()),
    "softmax": (lambda x: F.softmax(x, dim=-1), lambda x: _softmax_ref(x, -1), ()),
    "softmax0": (lambda x: F.softmax(x, dim=0), lambda x: _softmax_ref(x, 0), ()),
    "log_softmax": (lambda x: F.log_softmax(x, dim=-1), lambda x: np.log(_softmax_ref(x, -1)), ()),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@settings(max_examples=10)
@given(data=st.data(), shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple))
def test_activation_grad_and_forward(name, data, shape):
    fn, ref, kinks = ACTIVATIONS[name]
    x = data.draw(arrays(shape, -4, 4, away_from=kinks))
    np.testing.assert_allclose(fn(minivit.tensor(x)).numpy(), ref(x), rtol=1e-7, atol=1e-12)
    check_grad(fn, x)


def test_silu_is_stable_for_large_inputs():
    x = minivit.tensor([-1000.0, 0.0, 1000.0])
    y = F.silu(x).numpy()
    assert np.all(np.isfinite(y)) and y[0] == 0 and y[2] == 1000


# --- dropout ---------------------------------------------------------------------------------

def test_dropout_statistics_and_scaling():
    x = minivit.ones(200, 100)
    y = F.dropout(x, 0.25, training=True).numpy()
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    assert y.dtype == np.float32


def test_dropout_identity_cases():
    x = minivit.randn(3, 4)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0, training=True) is x
    assert np.all(F.dropout(x, 1.0, training=True).numpy() == 0)
    with pytest.raises(ValueError, match="dropout.*1.5"):
        F.dropout(x, 1.5)


def test_dropout_reproducible_with_manual_seed():
    x = minivit.ones(10, 10)
    minivit.manual_seed(3)
    a = F.dropout(x, 0.5).numpy()
    minivit.manual_seed(3)
    b = F.dropout(x, 0.5).numpy()
    np.testing.assert_array_equal(a, b)


@settings(max_examples=10)
@given(st.data(), st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
       st.sampled_from([0.2, 0.5]))
def test_dropout_grad_is_the_same_mask(data, shape, p):
    x = data.draw(arrays(shape))

    def fn(x):
        minivit.manual_seed(7)  # the same mask on every finite-difference evaluation
        return F.dropout(x, p, training=True)

    t = check_grad(fn, x)[0]
    mask = fn(minivit.ones(shape, dtype=np.float64)).numpy() != 0
    # grad = upstream * mask / (1 - p): zero exactly where the element was dropped
    assert np.all(t.grad.numpy()[~mask] == 0)


def test_drop_path_is_per_sample():
    x = minivit.ones(400, 3, 5)
    y = F.drop_path(x, 0.3, training=True).numpy()
    per_sample = y.reshape(400, -1)
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))  # whole sample kept or dropped
    kept = per_sample[:, 0] != 0
    assert abs(kept.mean() - 0.7) < 0.08
    np.testing.assert_allclose(per_sample[kept], 1 / 0.7, rtol=1e-6)
    unscaled = F.drop_path(x, 0.3, training=True, scale_by_keep=False).numpy()
    assert set(np.unique(unscaled)) <= {0.0, 1.0}
    assert F.drop_path(x, 0.3, training=False) is x


@settings(max_examples=10)
@given(st.data(), st.integers(1, 4), st.integers(1, 3))
def test_drop_path_grad(data, batch, n):
    x = data.draw(arrays((batch, n, 2)))

    def fn(x):
        minivit.manual_seed(5)
        return F.drop_path(x, 0.5, training=True)

    check_grad(fn, x)


def test_conv_and_pool_are_reexported():
    for name in ("conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"):
        assert callable(getattr(F, name))


# --- init ------------------------------------------------------------------------------------

def test_init_functions_fill_in_place_and_return_the_tensor():
    p = nn.Parameter(minivit.zeros(64, 32))
    data = p.data
    for fn in (nn.init.trunc_normal_, nn.init.normal_, nn.init.uniform_, nn.init.zeros_,
               nn.init.ones_, nn.init.xavier_uniform_, nn.init.xavier_normal_,
               nn.init.kaiming_normal_, nn.init.kaiming_uniform_):
        assert fn(p) is p
        assert p.data is data and p.dtype == np.float32
    assert nn.init.constant_(p, 0.5) is p and np.all(p.numpy() == 0.5)


def test_init_distributions():
    t = minivit.zeros(200, 300)
    nn.init.trunc_normal_(t, std=0.02)
    assert abs(t.numpy().std() - 0.02) < 0.001 and abs(t.numpy().max()) <= 2.0
    nn.init.trunc_normal_(t, mean=0.0, std=1.0, a=-0.5, b=1.0)
    assert t.numpy().min() >= -0.5 and t.numpy().max() <= 1.0
    nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu")
    assert abs(t.numpy().std() - math.sqrt(2 / 200)) < 0.003
    nn.init.kaiming_uniform_(t, a=math.sqrt(5))  # PyTorch's Linear default: U(+-1/sqrt(fan_in))
    bound = 1 / math.sqrt(300)
    assert np.abs(t.numpy()).max() <= bound and np.abs(t.numpy()).max() > 0.95 * bound
    nn.init.xavier_uniform_(t)
    bound = math.sqrt(6 / 500)
    assert np.abs(t.numpy()).max() <= bound and np.abs(t.numpy()).max() > 0.95 * bound
    nn.init.normal_(t, mean=1.0, std=0.5)
    assert abs(t.numpy().mean() - 1.0) < 0.01 and abs(t.numpy().std() - 0.5) < 0.01
    nn.init.uniform_(t, -2.0, 3.0)
    assert t.numpy().min() >= -2.0 and t.numpy().max() < 3.0


def test_init_fan_of_a_conv_weight():
    w = minivit.zeros(8, 4, 3, 3)
    assert nn.init._calculate_fan_in_and_fan_out(w) == (36, 72)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        nn.init.xavier_uniform_(minivit.zeros(5))


def test_manual_seed_makes_models_reproducible():
    minivit.manual_seed(11)
    a = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    nn.init.trunc_normal_(a[0].weight, std=0.02)
    minivit.manual_seed(11)
    b = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    nn.init.trunc_normal_(b[0].weight, std=0.02)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        np.testing.assert_array_equal(va, vb)
