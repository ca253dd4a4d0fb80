"""LayerNorm and BatchNorm: forwards against their definitions, running statistics (momentum,
unbiased variance), and fused backwards against finite differences."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit
import minivit.nn.functional as F
from minivit import nn
from harness import arrays, check_grad


def layer_norm_ref(x, k, w=None, b=None, eps=1e-5):
    axes = tuple(range(x.ndim - k, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    return y * (1 if w is None else w) + (0 if b is None else b)


def batch_norm_ref(x, mean, var, w, b, eps=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * w.reshape(shape) \
        + b.reshape(shape)


def batch_stats(x):
    axes = (0,) + tuple(range(2, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes), x.var(axis=axes, ddof=1)


# --- layer norm ------------------------------------------------------------------------------

@settings(max_examples=20)
@given(st.data(), st.lists(st.integers(1, 3), max_size=2), st.integers(2, 5),
       st.sampled_from([1, 2]), st.booleans(), st.booleans())
def test_layer_norm_grad_and_forward(data, lead, d, k, affine, with_bias):
    shape = tuple(lead) + (2,) * (k - 1) + (d,)
    nshape = shape[len(shape) - k:]
    x = data.draw(arrays(shape))
    # keep the normalised groups away from zero variance (finite differences blow up there)
    x = x + np.arange(int(np.prod(nshape))).reshape(nshape) * 0.5
    w = data.draw(arrays(nshape))
    b = data.draw(arrays(nshape))
    got = F.layer_norm(minivit.tensor(x), nshape, minivit.tensor(w) if affine else None,
                       minivit.tensor(b) if with_bias else None)
    ref = layer_norm_ref(x, k, w if affine else None, b if with_bias else None)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-10)
    args = [x] + ([w] if affine else []) + ([b] if with_bias else [])

    def fn(x, *wb):
        wb = list(wb)
        ww = wb.pop(0) if affine else None
        bb = wb.pop(0) if with_bias else None
        return F.layer_norm(x, nshape, ww, bb)

    check_grad(fn, *args)


@pytest.mark.parametrize("which", ["weight", "bias", "both"])
@pytest.mark.parametrize("rows", [5, 4096])   # the plain call and the blocked, threaded one
def test_layer_norm_affine_grads_without_input_grad(which, rows):
    # An input that needs no gradient (a constant, a frozen stem): only dw / db are computed.
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((2, rows, 96))
    w, b = rng.standard_normal((2, 96))
    wt = minivit.tensor(w, requires_grad=which in ("weight", "both"))
    bt = minivit.tensor(b, requires_grad=which in ("bias", "both"))
    xt = minivit.tensor(x)
    F.layer_norm(xt, 96, wt, bt).backward(minivit.tensor(g))
    xhat = layer_norm_ref(x, 1)
    assert xt.grad is None
    if which != "bias":
        np.testing.assert_allclose(wt.grad.numpy(), (g * xhat).sum(0), rtol=1e-10, atol=1e-9)
    else:
        assert wt.grad is None
    if which != "weight":
        np.testing.assert_allclose(bt.grad.numpy(), g.sum(0), rtol=1e-10, atol=1e-9)
    else:
        assert bt.grad is None


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("rows", [5, 4096])   # the plain call and the blocked, threaded one
def test_layer_norm_fused_backward_against_its_formula(rows, affine):
    # dx = (ĝ - mean(ĝ) - x̂ mean(ĝ x̂)) / σ with ĝ = g w, dw = sum_rows g x̂, db = sum_rows g;
    # without weight and bias the op returns x̂ itself.
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((2, rows, 96)) * 3 + 1
    w, b = rng.standard_normal((2, 96))
    xt = minivit.tensor(x, requires_grad=True)
    wt, bt = (minivit.tensor(w, requires_grad=True), minivit.tensor(b, requires_grad=True)) \
        if affine else (None, None)
    y = F.layer_norm(xt, 96, wt, bt)
    xhat = layer_norm_ref(x, 1)
    np.testing.assert_allclose(y.numpy(), xhat * w + b if affine else xhat, rtol=1e-10,
                               atol=1e-10)
    y.backward(minivit.tensor(g))
    sigma = np.sqrt(x.var(axis=-1, keepdims=True) + 1e-5)
    gh = g * w if affine else g
    dx = (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True)) / sigma
    np.testing.assert_allclose(xt.grad.numpy(), dx, rtol=1e-9, atol=1e-10)
    if affine:
        np.testing.assert_allclose(wt.grad.numpy(), (g * xhat).sum(0), rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(bt.grad.numpy(), g.sum(0), rtol=1e-10, atol=1e-9)


def test_layer_norm_float32_and_eps():
    x = minivit.randn(4, 8) * 100 + 3
    y = F.layer_norm(x, 8, eps=1e-6)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), layer_norm_ref(x.numpy().astype(np.float64), 1, eps=1e-6),
                               rtol=1e-4, atol=1e-4)


def test_layer_norm_shape_errors():
    with pytest.raises(ValueError, match=r"normalized_shape \(5,\).*\(2, 4\)"):
        F.layer_norm(minivit.randn(2, 4), 5)
    with pytest.raises(ValueError, match=r"weight has shape \(3,\), expected \(4,\)"):
        F.layer_norm(minivit.randn(2, 4), 4, minivit.ones(3))


def test_layer_norm_layer():
    ln = nn.LayerNorm(6, eps=1e-6)
    assert np.all(ln.weight.numpy() == 1) and np.all(ln.bias.numpy() == 0)
    x = minivit.randn(2, 3, 6)
    np.testing.assert_allclose(ln(x).numpy(), layer_norm_ref(x.numpy(), 1, eps=1e-6), atol=1e-5)
    assert repr(ln) == "LayerNorm((6,), eps=1e-06, elementwise_affine=True)"


# --- batch norm ------------------------------------------------------------------------------

SHAPES = st.sampled_from([(4, 3), (3, 2, 4), (2, 3, 2, 2), (3, 1, 2, 3)])


@settings(max_examples=15)
@given(st.data(), SHAPES, st.booleans())
def test_batch_norm_train_grad_and_forward(data, shape, affine):
    C = shape[1]
    x = data.draw(arrays(shape))
    x = x + np.linspace(0, 1, x.size).reshape(shape)  # no channel of constant values
    w = data.draw(arrays((C,)))
    b = data.draw(arrays((C,)))
    mean, var, _ = batch_stats(x)
    got = F.batch_norm(minivit.tensor(x), None, None, minivit.tensor(w), minivit.tensor(b),
                       training=True)
    np.testing.assert_allclose(got.numpy(), batch_norm_ref(x, mean, var, w, b), rtol=1e-10,
                               atol=1e-10)
    if affine:
        check_grad(lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), x, w, b)
    else:
        check_grad(lambda x: F.batch_norm(x, None, None, training=True), x)


@settings(max_examples=15)
@given(st.data(), SHAPES)
def test_batch_norm_eval_grad_and_forward(data, shape):
    C = shape[1]
    x, w, b = data.draw(arrays(shape)), data.draw(arrays((C,))), data.draw(arrays((C,)))
    rm = data.draw(arrays((C,)))
    rv = data.draw(arrays((C,), 0.2, 3.0))
    got = F.batch_norm(minivit.tensor(x), minivit.tensor(rm), minivit.tensor(rv),
                       minivit.tensor(w), minivit.tensor(b), training=False)
    np.testing.assert_allclose(got.numpy(), batch_norm_ref(x, rm, rv, w, b), rtol=1e-10,
                               atol=1e-10)
    check_grad(lambda x, w, b: F.batch_norm(x, minivit.tensor(rm), minivit.tensor(rv), w, b),
               x, w, b)


def test_batch_norm_running_stats_momentum_and_unbiased_variance():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4, 4)) * 2 + 1
    rm, rv = minivit.zeros(3, dtype=np.float64), minivit.ones(3, dtype=np.float64)
    rm_arr = rm.data
    F.batch_norm(minivit.tensor(x), rm, rv, training=True, momentum=0.3)
    mean, _, var_unbiased = batch_stats(x)
    np.testing.assert_allclose(rm.numpy(), 0.7 * 0 + 0.3 * mean, rtol=1e-12)
    np.testing.assert_allclose(rv.numpy(), 0.7 * 1 + 0.3 * var_unbiased, rtol=1e-12)
    assert rm.data is rm_arr  # updated in place
    before = rm.numpy().copy()
    F.batch_norm(minivit.tensor(x), rm, rv, training=False)
    np.testing.assert_array_equal(rm.numpy(), before)  # eval leaves them alone


def test_batch_norm_layer_train_and_eval():
    bn = nn.BatchNorm2d(3, momentum=0.1)
    x = minivit.randn(4, 3, 2, 2) * 3 + 2
    xa = x.numpy().astype(np.float64)
    mean, var, var_u = batch_stats(xa)
    y = bn(x)
    np.testing.assert_allclose(y.numpy(), batch_norm_ref(xa, mean, var, np.ones(3), np.zeros(3)),
                               atol=1e-5)
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.9 + 0.1 * var_u, rtol=1e-5)
    assert bn.num_batches_tracked.numpy() == 1 and bn.num_batches_tracked.dtype == np.int64
    bn.eval()
    y = bn(x)
    ref = batch_norm_ref(xa, bn.running_mean.numpy(), bn.running_var.numpy(), np.ones(3),
                         np.zeros(3))
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-5)
    assert bn.num_batches_tracked.numpy() == 1


def test_batch_norm_cumulative_average_when_momentum_is_none():
    bn = nn.BatchNorm1d(2, momentum=None)
    xs = [minivit.randn(5, 2) + i for i in range(3)]
    for x in xs:
        bn(x)
    means = [x.numpy().mean(axis=0) for x in xs]
    np.testing.assert_allclose(bn.running_mean.numpy(), np.mean(means, axis=0), rtol=1e-5)


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5)])
def test_batch_norm1d_shapes_and_layer_grad(shape):
    bn = nn.BatchNorm1d(4).double()
    rng = np.random.default_rng(1)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    x = minivit.tensor(rng.standard_normal(shape), requires_grad=True)
    assert minivit.gradcheck(bn, x, params=list(bn.parameters()))
    bn.eval()
    assert minivit.gradcheck(bn, x, params=list(bn.parameters()))


def test_batch_norm_errors():
    with pytest.raises(ValueError,
                       match=r"BatchNorm2d\(3.*4-D input with 3 channels.*\(2, 5, 4, 4\)"):
        nn.BatchNorm2d(3)(minivit.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3.*got \(2, 3, 4, 4\)"):
        nn.BatchNorm1d(3)(minivit.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3)(minivit.randn(1, 3))
    with pytest.raises(ValueError, match=r"running_mean has shape \(2,\).*3 channels"):
        F.batch_norm(minivit.randn(2, 3), minivit.zeros(2), minivit.ones(2))


def test_batch_norm_without_running_stats_uses_batch_stats_in_eval():
    bn = nn.BatchNorm1d(3, track_running_stats=False).eval()
    assert "running_mean" not in bn.state_dict()
    x = minivit.randn(8, 3) * 5 + 1
    np.testing.assert_allclose(bn(x).numpy().mean(axis=0), 0, atol=1e-5)


ACTS = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}


@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("shape", [(64, 5), (6, 4, 3, 5), (700, 400)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_fused_activation_is_the_activation_of_batch_norm(shape, training, act):
    """act=...: the same output, running stats and gradients (input, weight, bias) as the
    activation applied to F.batch_norm's output."""
    rng = np.random.default_rng(sum(shape))
    x, g = rng.standard_normal(shape), rng.standard_normal(shape)
    c = shape[1]
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c) * 0.1, 1 + rng.random(c)
    results = []
    for fused in (True, False):
        t = [minivit.tensor(a, requires_grad=True) for a in (x, w, b)]
        stats = (minivit.tensor(rm.copy()), minivit.tensor(rv.copy()))
        if fused:
            y = F.batch_norm(t[0], *stats, t[1], t[2], training=training, act=act)
        else:
            y = ACTS[act](F.batch_norm(t[0], *stats, t[1], t[2], training=training))
        (y * minivit.tensor(g)).sum().backward()
        results.append([y.numpy(), stats[1].numpy()] + [a.grad.numpy() for a in t])
    assert act != "relu" or ((results[0][0] == 0).any() and (results[0][0] > 0).any())
    for a, b_ in zip(*results):
        np.testing.assert_allclose(a, b_, rtol=1e-10, atol=1e-10)


def test_batchnorm_layers_fuse_activations_in_both_layouts():
    bn = nn.BatchNorm2d(3).double()
    x = minivit.tensor(np.random.default_rng(1).standard_normal((4, 3, 2, 2)))
    np.testing.assert_allclose(bn(x, act="relu").numpy(), F.relu(bn(x)).numpy(), atol=1e-12)
    xl = x.permute(0, 2, 3, 1)
    np.testing.assert_allclose(bn.forward_channels_last(xl, act="gelu").numpy(),
                               F.gelu(bn(x)).permute(0, 2, 3, 1).numpy(), atol=1e-12)
    check_grad(lambda t: F.batch_norm(t, None, None, training=True, act="gelu_tanh"),
               np.random.default_rng(2).standard_normal((5, 3, 2)))
    with pytest.raises(ValueError, match="act must be None, 'relu', 'gelu' or 'gelu_tanh', got "
                                         "'tanh'"):
        F.batch_norm(x, None, None, training=True, act="tanh")


@pytest.mark.parametrize("act", [None, "relu"])
@pytest.mark.parametrize("shape", [(64, 5), (6, 4, 3, 5), (700, 400)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_residual_is_the_activation_of_batch_norm_plus_residual(shape, training, act):
    """residual=r: the same output, running stats and gradients (x, w, b, r) as
    act(F.batch_norm(x) + r) from separate ops."""
    rng = np.random.default_rng(sum(shape) + 1)
    x, r, g = (rng.standard_normal(shape) for _ in range(3))
    c = shape[1]
    w, b = rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c) * 0.1, 1 + rng.random(c)
    results = []
    for fused in (True, False):
        t = [minivit.tensor(a, requires_grad=True) for a in (x, w, b, r)]
        stats = (minivit.tensor(rm.copy()), minivit.tensor(rv.copy()))
        if fused:
            y = F.batch_norm(t[0], *stats, t[1], t[2], training=training, act=act, residual=t[3])
        else:
            y = F.batch_norm(t[0], *stats, t[1], t[2], training=training) + t[3]
            y = F.relu(y) if act else y
        (y * minivit.tensor(g)).sum().backward()
        results.append([y.numpy(), stats[0].numpy(), stats[1].numpy()]
                       + [a.grad.numpy() for a in t])
    assert act is None or ((results[0][0] == 0).any() and (results[0][0] > 0).any())
    for a, b_ in zip(*results):
        np.testing.assert_allclose(a, b_, rtol=1e-10, atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(st.data(), st.sampled_from([(6, 3), (3, 2, 4), (2, 3, 2, 2)]), st.booleans())
def test_batch_norm_residual_grad(data, shape, affine):
    x = data.draw(arrays(shape))
    r = data.draw(arrays(shape))
    c = shape[1]
    if affine:
        w = data.draw(arrays((c,), 0.5, 2.0))
        b = data.draw(arrays((c,)))
        check_grad(lambda x, r, w, b: F.batch_norm(x, None, None, w, b, training=True,
                                                   residual=r), x, r, w, b)
    else:
        check_grad(lambda x, r: F.batch_norm(x, None, None, training=True, residual=r), x, r)


def test_batch_norm_residual_relu_grad_and_layer():
    """Finite differences through act="relu" + residual (every pre-activation at least 0.01
    from the kink), and the layers' residual= in both layouts against the separate ops."""
    rng = np.random.default_rng(1)
    x, r = rng.standard_normal((8, 3, 2, 2)), rng.standard_normal((8, 3, 2, 2))
    xh = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(
        x.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    assert np.abs(xh + r).min() > 0.01
    check_grad(lambda x, r: F.batch_norm(x, None, None, training=True, act="relu", residual=r),
               x, r)
    bn = nn.BatchNorm2d(3).double()
    xt, rt = minivit.tensor(x), minivit.tensor(r)
    np.testing.assert_allclose(bn(xt, act="relu", residual=rt).numpy(),
                               F.relu(bn(xt) + rt).numpy(), atol=1e-12)
    xl, rl = xt.permute(0, 2, 3, 1), rt.permute(0, 2, 3, 1)
    np.testing.assert_allclose(bn.forward_channels_last(xl, act="relu", residual=rl).numpy(),
                               F.relu(bn(xt) + rt).permute(0, 2, 3, 1).numpy(), atol=1e-12)


def test_batch_norm_residual_errors():
    x = minivit.randn(4, 3, 2)
    with pytest.raises(ValueError, match=r"residual has shape \(4, 3\), expected the input's "
                                         r"\(4, 3, 2\)"):
        F.batch_norm(x, None, None, training=True, residual=minivit.randn(4, 3))
    with pytest.raises(ValueError, match="residual= goes with act None or 'relu', got "
                                         "act='gelu'"):
        F.batch_norm(x, None, None, training=True, act="gelu", residual=minivit.randn(4, 3, 2))
    with pytest.raises(ValueError, match=r"residual has shape \(2, 3\), expected the input's "
                                         r"\(2, 2, 3\)"):
        nn.BatchNorm2d(3).forward_channels_last(minivit.randn(2, 2, 3),
                                                residual=minivit.randn(2, 3))


def test_batch_norm_residual_float32_on_each_device(device):
    rng = np.random.default_rng(4)
    x, r = (rng.standard_normal((6, 5, 3, 3)).astype(np.float32) for _ in range(2))
    results = []
    for dev in (device, "cpu"):
        t = [minivit.tensor(a, device=dev, requires_grad=True) for a in (x, r)]
        bn = nn.BatchNorm2d(5).to(dev)
        y = bn(t[0], act="relu", residual=t[1])
        assert y.dtype == np.float32 and y.device == dev
        (y * y).sum().backward()
        results.append([y.numpy(), bn.running_var.numpy()] + [a.grad.numpy() for a in t]
                       + [bn.weight.grad.numpy(), bn.bias.grad.numpy()])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
