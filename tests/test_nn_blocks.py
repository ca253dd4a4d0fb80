"""The shared layers the models are built from (minivit/nn: Mlp, PatchEmbed, BatchNormAct*,
Conv2dSame, channels-last Conv2d, LinearColumns, the classifier heads, the helpers): each
against the plain ops it fuses or re-lays out, in float64, with the input's gradient checked
by finite differences and the parameters' gradients against the plain path's."""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit
import minivit.nn.functional as F
from minivit import nn
from harness import check_grad


def _t(a, grad=True):
    return minivit.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def _grads_match(layer_a, layer_b, out_a, out_b, g, atol=1e-10):
    """Backward the same upstream gradient through both; the parameter grads agree."""
    (out_a * _t(g, False)).sum().backward()
    (out_b * _t(g, False)).sum().backward()
    for (name, pa), (_, pb) in zip(layer_a.named_parameters(), layer_b.named_parameters()):
        np.testing.assert_allclose(pa.grad.numpy(), pb.grad.numpy(), atol=atol, rtol=1e-9, err_msg=name)


def _twin(layer, cls, **kw):
    """A second layer (another class or layout) with the same parameters as ``layer``."""
    other = cls(**kw).double()
    other.load_state_dict(layer.state_dict())
    return other


conv_cases = st.sampled_from([
    dict(k=3, stride=1, padding=1, groups=1, same=False),     # dense 3x3 (F.conv2d_nhwc)
    dict(k=1, stride=1, padding=0, groups=1, same=False),     # 1x1 (one Linear on the rows)
    dict(k=1, stride=2, padding=0, groups=1, same=False),     # strided 1x1 shortcut
    dict(k=3, stride=1, padding=1, groups=-1, same=False),    # depthwise
    dict(k=3, stride=2, padding=0, groups=-1, same=True),     # depthwise, TF 'SAME' stride 2
    dict(k=3, stride=2, padding=0, groups=1, same=True),      # dense, TF 'SAME' stride 2
])


@settings(max_examples=12, deadline=None)
@given(case=conv_cases, n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(3, 6),
       w=st.integers(3, 6), bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_channels_last_conv_is_the_nchw_conv_permuted(case, n, c, h, w, bias, seed):
    rng = np.random.default_rng(seed)
    groups = c if case["groups"] == -1 else 1
    out = c if groups != 1 else c + 1
    cls = nn.Conv2dSame if case["same"] else nn.Conv2d
    kw = dict(in_channels=c, out_channels=out, kernel_size=case["k"], stride=case["stride"],
              padding=case["padding"], groups=groups, bias=bias)
    first = cls(**kw).double()
    last = _twin(first, cls, channels_last=True, **kw)
    x = rng.standard_normal((n, c, h, w))
    xf, xl = _t(x), _t(x.transpose(0, 2, 3, 1))
    yf, yl = first(xf), last(xl)
    np.testing.assert_allclose(yl.numpy(), yf.numpy().transpose(0, 2, 3, 1), atol=1e-12)
    g = rng.standard_normal(yl.shape)
    _grads_match(last, first, yl, yf.permute(0, 2, 3, 1), g)
    np.testing.assert_allclose(xl.grad.numpy(), xf.grad.numpy().transpose(0, 2, 3, 1), atol=1e-12)
    check_grad(lambda t: last(t), x.transpose(0, 2, 3, 1))


def test_conv2d_same_pads_as_tf_and_residual_adds():
    assert nn.same_padding(32, 3, 2) == (0, 1) and nn.same_padding(7, 3, 2) == (1, 1)
    assert nn.same_padding(5, 3, 1, dilation=2) == (2, 2)
    conv = nn.Conv2d(2, 3, 1, channels_last=True).double()
    x, r = minivit.randn(2, 4, 4, 2).double(), minivit.randn(2, 4, 4, 3).double()
    np.testing.assert_allclose(conv(x, residual=r).numpy(), (conv(x) + r).numpy(), atol=1e-12)
    with pytest.raises(ValueError, match=r"expected a channels-last input \(N, H, W, 2\)"):
        conv(minivit.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="groups=2"):
        nn.Conv2d(4, 4, 3, groups=2, channels_last=True)(minivit.randn(1, 4, 4, 4))
    assert "channels_last=True" in repr(conv)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), p=st.integers(1, 3), gh=st.integers(1, 3),
       gw=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_patch_conv_and_patch_embed_match_the_strided_conv(n, c, p, gh, gw, seed):
    """A kernel == stride Conv2d runs as patch rows and one GEMM: the numbers and gradients of
    the im2col convolution; PatchEmbed gives its (B, N, D) token rows."""
    rng = np.random.default_rng(seed)
    conv = nn.Conv2d(c, 4, p, stride=p).double()
    x = rng.standard_normal((n, c, gh * p, gw * p))
    xt, xr = _t(x), _t(x)
    y = conv(xt)
    ref = F.conv2d(xr, conv.weight, conv.bias, stride=p)
    np.testing.assert_allclose(y.numpy(), ref.numpy(), atol=1e-12)
    check_grad(lambda t: conv(t), x)
    emb = nn.PatchEmbed((gh * p, gw * p), p, c, 4).double()
    emb.load_state_dict({"proj." + k: v for k, v in conv.state_dict().items()})
    tokens = emb(_t(x)).numpy()
    np.testing.assert_allclose(tokens, ref.numpy().reshape(n, 4, gh * gw).transpose(0, 2, 1),
                               atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(i=st.integers(1, 4), o=st.integers(1, 4), rest=st.lists(st.integers(1, 3), min_size=1,
                                                                 max_size=2),
       bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_linear_columns_is_linear_on_the_first_axis(i, o, rest, bias, seed):
    rng = np.random.default_rng(seed)
    cols = nn.LinearColumns(i, o, bias=bias).double()
    rows = _twin(cols, nn.Linear, in_features=i, out_features=o, bias=bias)
    x = rng.standard_normal((i, *rest))
    xc, xr = _t(x), _t(np.moveaxis(x, 0, -1))
    yc, yr = cols(xc), rows(xr)
    np.testing.assert_allclose(yc.numpy(), np.moveaxis(yr.numpy(), -1, 0), atol=1e-12)
    _grads_match(cols, rows, yc, yr.permute(len(rest), *range(len(rest))),
                 rng.standard_normal(yc.shape))
    check_grad(lambda t: cols(t), x)
    r = rng.standard_normal(yc.shape)
    check_grad(lambda t, rr: cols(t, act=nn.GELU(), residual=rr), x, r)


@pytest.mark.parametrize("act", [None, nn.GELU(), nn.GELU("tanh"), nn.SiLU(), nn.ReLU()])
@pytest.mark.parametrize("with_residual", [False, True])
def test_linear_act_and_residual_are_the_separate_ops(act, with_residual):
    rng = np.random.default_rng(0)
    lin = nn.Linear(3, 4).double()
    x, r = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 4))
    y = lin(_t(x), act=act, residual=_t(r) if with_residual else None).numpy()
    ref = lin(_t(x))
    ref = act(ref) if act is not None else ref
    ref = ref.numpy() + (r if with_residual else 0)
    np.testing.assert_allclose(y, ref, atol=1e-12)
    check_grad(lambda t, rr: lin(t, act=act, residual=rr if with_residual else None), x, r)


@pytest.mark.parametrize("drop", [0.0, 0.3])
def test_mlp_is_fc1_act_fc2_and_residual_adds(drop):
    rng = np.random.default_rng(1)
    mlp = nn.Mlp(3, 5, act_layer=partial(nn.GELU, approximate="tanh"), drop=drop).double()
    mlp.eval()
    x, r = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 3))
    ref = mlp.fc2(F.gelu(mlp.fc1(_t(x)), "tanh")).numpy()
    np.testing.assert_allclose(mlp(_t(x)).numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(mlp(_t(x), residual=_t(r)).numpy(), ref + r, atol=1e-12)
    check_grad(lambda t, rr: mlp(t, residual=rr), x, r)
    mlp.train()
    minivit.manual_seed(0)
    y = mlp(_t(x), residual=_t(r)).numpy()
    assert y.shape == x.shape and (drop == 0.0) == np.allclose(y, ref + r)
    assert [n for n, _ in mlp.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight",
                                                      "fc2.bias"]


norm_act_cases = st.sampled_from([
    (None, False), (nn.ReLU, False), (nn.GELU, False), (partial(nn.GELU, approximate="tanh"), False),
    (nn.SiLU, False), (None, True), (nn.ReLU, True), (nn.GELU, True), (nn.SiLU, True)])


@settings(max_examples=14, deadline=None)
@given(case=norm_act_cases, layout=st.sampled_from(["first", "last"]), two_d=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_batchnorm_act_is_bn_then_residual_then_act(case, layout, two_d, seed):
    act_layer, with_residual = case
    rng = np.random.default_rng(seed)
    cls, plain = (nn.BatchNormAct2d, nn.BatchNorm2d) if two_d else (nn.BatchNormAct1d,
                                                                     nn.BatchNorm1d)
    bn = cls(3, apply_act=act_layer is not None, act_layer=act_layer,
             channels_last=layout == "last").double()
    bn.weight.data = 1 + 0.2 * rng.standard_normal(3)
    bn.bias.data = 0.1 * rng.standard_normal(3)
    ref_bn = _twin(bn, plain, num_features=3)
    x = rng.standard_normal((4, 3, 2, 3) if two_d else (4, 3, 5))
    r = rng.standard_normal(x.shape)
    xl = np.moveaxis(x, 1, -1) if layout == "last" else x
    rl = np.moveaxis(r, 1, -1) if layout == "last" else r
    y = bn(_t(xl), residual=_t(rl) if with_residual else None).numpy()
    ref = ref_bn(_t(x)) + (_t(r) if with_residual else 0)
    ref = act_layer()(ref) if act_layer is not None else ref
    ref = np.moveaxis(ref.numpy(), 1, -1) if layout == "last" else ref.numpy()
    np.testing.assert_allclose(y, ref, atol=1e-10)
    np.testing.assert_allclose(bn.running_mean.numpy(), ref_bn.running_mean.numpy(), atol=1e-12)
    check_grad(lambda t, rr: bn(t, residual=rr if with_residual else None), xl, rl)
    assert set(bn.state_dict()) == set(ref_bn.state_dict())


def test_droppath_batch_dim_drops_whole_samples_on_axis_1():
    dp = nn.DropPath(0.5, batch_dim=1)
    x = minivit.ones(3, 32, 2)
    minivit.manual_seed(0)
    y = dp(x).numpy()
    kept = [bool(np.all(y[:, b] == 2.0)) for b in range(32)]
    assert all(k or np.all(y[:, b] == 0) for b, k in enumerate(kept))
    assert any(kept) and not all(kept)
    assert "batch_dim=1" in repr(dp)


def test_classifier_heads_pool_then_fc():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 3, 3))
    head = nn.ClassifierHead(4, 5).double()
    want = head.fc(_t(x.mean(axis=(2, 3)))).numpy()
    np.testing.assert_allclose(head(_t(x)).numpy(), want, atol=1e-12)
    nhwc = nn.ClassifierHead(4, 5, input_fmt="NHWC").double()
    nhwc.load_state_dict(head.state_dict())
    np.testing.assert_allclose(nhwc(_t(x.transpose(0, 2, 3, 1))).numpy(), want, atol=1e-12)
    norm_head = nn.NormMlpClassifierHead(4, 5, hidden_size=6).double()
    h = norm_head.pre_logits.fc(norm_head.norm(_t(x.mean(axis=(2, 3))))).numpy()
    np.testing.assert_allclose(norm_head(_t(x)).numpy(),
                               norm_head.fc(_t(np.tanh(h))).numpy(), atol=1e-12)
    assert set(norm_head.state_dict()) == {
        "norm.weight", "norm.bias", "pre_logits.fc.weight", "pre_logits.fc.bias", "fc.weight",
        "fc.bias"}
    with pytest.raises(ValueError, match="input_fmt must be 'NCHW' or 'NHWC', got 'NCL'"):
        nn.ClassifierHead(4, 5, input_fmt="NCL")


def test_helpers():
    assert nn.make_divisible(0.25 * 100) == 24 and nn.make_divisible(30) == 32
    assert nn.make_divisible(4) == 8 and nn.make_divisible(512 * 4) == 2048
    assert nn.to_2tuple(7) == (7, 7) and nn.to_2tuple([2, 3]) == (2, 3)
    with pytest.raises(ValueError, match=r"expected an int or a pair, got \(1, 2, 3\)"):
        nn.to_2tuple((1, 2, 3))
