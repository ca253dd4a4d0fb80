"""Every layer of minivit.nn: gradient against finite differences in float64 with respect to
the input and every parameter, default initialisation, errors and repr."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit
import minivit.nn.functional as F
from minivit import nn
from harness import arrays


def check_layer(layer, x, seed=None):
    """gradcheck of ``layer`` (converted to float64) w.r.t. ``x`` and all its parameters;
    ``seed`` reseeds before every call (dropout-like layers draw the same mask each time)."""
    layer.double()
    x = minivit.tensor(np.asarray(x, dtype=np.float64), requires_grad=True)
    params = list(layer.parameters())

    def fn(x):
        if seed is not None:
            minivit.manual_seed(seed)
        return layer(x)

    assert minivit.gradcheck(fn, x, params=params)
    for p in params:
        p.grad = None
    fn(x).sum().backward()
    for t in [x] + params:
        assert t.grad is not None and t.grad.shape == t.shape and t.grad.dtype == np.float64
    return x


def conv_ref(x, w, b, stride, padding, groups):
    """The convolution written as loops over the output positions."""
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (W + 2 * padding - kw) // stride + 1
    out = np.zeros((N, O, Ho, Wo))
    og = O // groups
    for o in range(O):
        g = o // og
        for i in range(Ho):
            for j in range(Wo):
                y, x0 = i * stride, j * stride
                patch = xp[:, g * Cg:(g + 1) * Cg, y:y + kh, x0:x0 + kw]
                out[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3))
    return out + (0 if b is None else b[None, :, None, None])


# --- Linear and Conv2d -----------------------------------------------------------------------

@settings(max_examples=15)
@given(st.data(), st.lists(st.integers(1, 3), max_size=2), st.integers(1, 4), st.integers(1, 4),
       st.booleans())
def test_linear_layer_grad(data, lead, n_in, n_out, bias):
    layer = nn.Linear(n_in, n_out, bias=bias)
    x = data.draw(arrays(tuple(lead) + (n_in,)))
    check_layer(layer, x)
    w = layer.weight.numpy()
    expected = x @ w.T + (layer.bias.numpy() if bias else 0)
    np.testing.assert_allclose(layer(minivit.tensor(x)).numpy(), expected, rtol=1e-12)


@settings(max_examples=10)
@given(st.data(), st.sampled_from([1, 2]), st.integers(1, 3), st.sampled_from([1, 3]),
       st.sampled_from([1, 2]), st.sampled_from([0, 1]), st.booleans())
def test_conv2d_layer_grad_and_forward(data, groups, cpg, k, stride, padding, bias):
    c_in, c_out = groups * cpg, groups * 2
    layer = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, groups=groups, bias=bias)
    assert layer.weight.shape == (c_out, cpg, k, k)
    x = data.draw(arrays((2, c_in, 4, 4)))
    check_layer(layer, x)
    ref = conv_ref(x, layer.weight.numpy(), layer.bias.numpy() if bias else None, stride,
                   padding, groups)
    np.testing.assert_allclose(layer(minivit.tensor(x)).numpy(), ref, rtol=1e-10, atol=1e-12)


def test_default_init_matches_pytorch():
    minivit.manual_seed(0)
    lin = nn.Linear(50, 400)
    bound = 1 / math.sqrt(50)  # kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))
    w, b = lin.weight.numpy(), lin.bias.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    assert np.abs(b).max() <= bound and np.abs(b).max() > 0.9 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01 * bound
    conv = nn.Conv2d(4, 300, 3, groups=2)
    bound = 1 / math.sqrt(2 * 9)
    assert np.abs(conv.weight.numpy()).max() <= bound
    assert np.abs(conv.weight.numpy()).max() > 0.99 * bound
    assert np.abs(conv.bias.numpy()).max() <= bound
    assert lin.weight.dtype == np.float32 and lin.weight.requires_grad


def test_conv2d_wrong_channel_count_names_layer_and_shapes():
    conv = nn.Conv2d(3, 8, 3)
    with pytest.raises(ValueError, match=r"Conv2d\(3, 8, kernel_size=\(3, 3\).*expected input "
                                         r"\(N, 3, H, W\), got \(2, 4, 8, 8\)"):
        conv(minivit.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match=r"got \(3, 8, 8\)"):
        conv(minivit.randn(3, 8, 8))
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 8, 3, groups=2)
    with pytest.raises(ValueError, match=r"Linear\(in_features=4.*got \(2, 5\)"):
        nn.Linear(4, 2)(minivit.randn(2, 5))


# --- parameter-free layers -------------------------------------------------------------------

SIMPLE = {
    "GELU": (nn.GELU(), lambda x: F.gelu(x)),
    "GELU_tanh": (nn.GELU("tanh"), lambda x: F.gelu(x, "tanh")),
    "ReLU": (nn.ReLU(), lambda x: F.relu(x)),
    "SiLU": (nn.SiLU(), lambda x: F.silu(x)),
    "Sigmoid": (nn.Sigmoid(), lambda x: F.sigmoid(x)),
    "Tanh": (nn.Tanh(), lambda x: F.tanh(x)),
    "Softmax": (nn.Softmax(dim=1), lambda x: F.softmax(x, dim=1)),
    "Flatten": (nn.Flatten(), lambda x: x.reshape(x.shape[0], -1)),
    "Identity": (nn.Identity(), lambda x: x),
    "MaxPool2d": (nn.MaxPool2d(2), lambda x: F.max_pool2d(x, 2)),
    "AvgPool2d": (nn.AvgPool2d(3, 1, 1), lambda x: F.avg_pool2d(x, 3, 1, 1)),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d(1), lambda x: F.adaptive_avg_pool2d(x, 1)),
}


@pytest.mark.parametrize("name", sorted(SIMPLE))
def test_parameter_free_layers(name):
    layer, fn = SIMPLE[name]
    rng = np.random.default_rng(0)
    # distinct values away from 0 (ReLU's kink) and without ties (max pooling)
    x = rng.permutation(np.arange(1, 2 * 2 * 4 * 4 + 1)).reshape(2, 2, 4, 4) * 0.07
    x = x * np.where(rng.random(x.shape) < 0.5, -1, 1)
    np.testing.assert_array_equal(layer(minivit.tensor(x)).numpy(), fn(minivit.tensor(x)).numpy())
    check_layer(layer, x)


@pytest.mark.parametrize("layer", [nn.Dropout(0.3), nn.DropPath(0.5)])
def test_dropout_layers_train_and_eval(layer):
    x = np.random.default_rng(1).standard_normal((4, 3, 2))
    layer.train()
    check_layer(layer, x, seed=3)
    xt = minivit.tensor(x)
    assert not np.array_equal(layer(xt).numpy(), x)
    layer.eval()
    assert layer(xt) is xt


def test_norm_layers_grad():
    rng = np.random.default_rng(2)
    for layer, shape in [(nn.LayerNorm(5), (2, 3, 5)), (nn.LayerNorm((2, 3)), (4, 2, 3)),
                         (nn.BatchNorm1d(3), (4, 3)), (nn.BatchNorm1d(3), (2, 3, 4)),
                         (nn.BatchNorm2d(2), (3, 2, 2, 2))]:
        layer.double()
        for p in layer.parameters():  # non-trivial affine parameters
            nn.init.normal_(p)
        for mode in (True, False):
            layer.train(mode)
            check_layer(layer, rng.standard_normal(shape))


def test_mhsa_layer_grad_with_relative_bias():
    attn = nn.MultiheadSelfAttention(4, num_heads=2)
    x = np.random.default_rng(3).standard_normal((2, 3, 4))
    check_layer(attn, x)
    bias = minivit.tensor(np.random.default_rng(4).standard_normal((2, 3, 3)), requires_grad=True)
    xt = minivit.tensor(x, requires_grad=True)
    assert minivit.gradcheck(lambda x, b: attn(x, attn_bias=b), xt, bias,
                             params=list(attn.parameters()))


def test_layer_reprs():
    assert repr(nn.Linear(3, 4, bias=False)) == "Linear(in_features=3, out_features=4, bias=False)"
    assert repr(nn.Conv2d(3, 8, 4, stride=4)) == "Conv2d(3, 8, kernel_size=(4, 4), stride=(4, 4))"
    assert repr(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)) == \
        "Conv2d(8, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), groups=8, bias=False)"
    assert repr(nn.BatchNorm2d(4)) == \
        "BatchNorm2d(4, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)"
    assert repr(nn.GELU()) == "GELU()" and repr(nn.Dropout(0.1)) == "Dropout(p=0.1)"
    assert repr(nn.DropPath(0.1)) == "DropPath(drop_prob=0.100)"
    assert repr(nn.Identity()) == "Identity()"
