"""conv2d: forward against a direct loop, gradients against finite differences (float64)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minivit
from minivit.nn.functional.conv import conv2d
from harness import check_grad


def conv2d_loop(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """The definition: out[n, o, y, x] = sum of W[o] times the window of x under it, plus b[o]."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, ho, wo), dtype=x.dtype)
    per_group = o // groups
    for b_ in range(n):
        for oc in range(o):
            first = (oc // per_group) * cg        # first input channel of this output's group
            for y in range(ho):
                for xx in range(wo):
                    window = xpad[b_, first:first + cg,
                                  y * sh:y * sh + dh * (kh - 1) + 1:dh,
                                  xx * sw:xx * sw + dw * (kw - 1) + 1:dw]
                    out[b_, oc, y, xx] = (window * w[oc]).sum() + (0.0 if b is None else b[oc])
    return out


@st.composite
def conv_cases(draw, kind=None):
    """Geometry (batch 1-2, channels 1-4, size 3-7, kernel 1-3, stride 1-2, padding 0-2,
    dilation 1-2, groups: 1, a divisor of the channels, or depthwise) and float64 data."""
    c = draw(st.integers(1, 4))
    kind = kind or draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    groups = {"dense": 1, "depthwise": c,
              "grouped": draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))}[kind]
    o = groups * draw(st.integers(1, 2 if groups > 1 else 4))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    # the input is at least as big as the dilated kernel once padded
    h = draw(st.integers(max(3, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 7))
    w = draw(st.integers(max(3, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 7))
    n = draw(st.integers(1, 2))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arrays = (rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c // groups, kh, kw)),
              rng.standard_normal(o))
    return arrays, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


@given(conv_cases())
def test_conv2d_matches_loop_and_finite_differences(case):
    (x, w, b), geo = case
    y = conv2d(minivit.tensor(x), minivit.tensor(w), minivit.tensor(b), **geo)
    np.testing.assert_allclose(y.numpy(), conv2d_loop(x, w, b, **geo), rtol=1e-10, atol=1e-10)
    check_grad(lambda x_, w_, b_: conv2d(x_, w_, b_, **geo), x, w, b)


@given(conv_cases(kind="depthwise"))
def test_depthwise_conv2d_matches_loop_and_finite_differences(case):
    (x, w, _), geo = case
    y = conv2d(minivit.tensor(x), minivit.tensor(w), **geo)
    np.testing.assert_allclose(y.numpy(), conv2d_loop(x, w, **geo), rtol=1e-10, atol=1e-10)
    check_grad(lambda x_, w_: conv2d(x_, w_, **geo), x, w)


@pytest.mark.parametrize("groups", [1, 3])
def test_conv2d_in_channel_blocks(monkeypatch, groups):
    """col2im and the depthwise loops run a few channels at a time; force one per block."""
    from minivit.kernels import cpu_conv as conv_module
    monkeypatch.setattr(conv_module, "CACHE_BLOCK", 1)
    rng = np.random.default_rng(3)
    x, w, b = (rng.standard_normal(s) for s in [(2, 3, 6, 5), (6, 3 // groups, 3, 2), (6,)])
    geo = dict(stride=(1, 2), padding=1, groups=groups)
    y = conv2d(minivit.tensor(x), minivit.tensor(w), minivit.tensor(b), **geo)
    np.testing.assert_allclose(y.numpy(), conv2d_loop(x, w, b, (1, 2), (1, 1), groups=groups),
                               rtol=1e-10, atol=1e-10)
    check_grad(lambda x_, w_, b_: conv2d(x_, w_, b_, **geo), x, w, b)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 5, 1, 1)])
def test_pointwise_conv2d_matches_loop_and_finite_differences(shape, with_bias):
    """1x1, stride 1, no padding: the (C, N, H*W) single-GEMM path."""
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal(shape), rng.standard_normal((4, shape[1], 1, 1)), \
        rng.standard_normal(4)
    bias = b if with_bias else None
    args = (x, w, b) if with_bias else (x, w)
    y = conv2d(*(minivit.tensor(a) for a in args))
    np.testing.assert_allclose(y.numpy(), conv2d_loop(x, w, bias), rtol=1e-10, atol=1e-10)
    check_grad(conv2d, *args)
    x_t = minivit.tensor(x.transpose(0, 1, 3, 2))  # a non-contiguous input
    np.testing.assert_allclose(conv2d(x_t, minivit.tensor(w)).numpy(),
                               conv2d_loop(x.transpose(0, 1, 3, 2), w), rtol=1e-10, atol=1e-10)


def test_conv2d_counts_flops():
    from minivit.autograd.flops import count_flops
    x, w = minivit.ones(2, 6, 5, 5), minivit.ones(4, 3, 3, 3)
    with count_flops() as c:
        conv2d(x, w, padding=1, groups=2)
    assert c.total == 2 * (2 * 4 * 5 * 5) * (3 * 3 * 3)  # 2 per multiply-add


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_conv2d_directional_gradient_at_a_bigger_shape(groups):
    rng = np.random.default_rng(groups)
    x = rng.standard_normal((2, 8, 11, 9))
    w = rng.standard_normal((16, 8 // groups, 3, 3))
    b = rng.standard_normal(16)
    check_grad(lambda x_, w_, b_: conv2d(x_, w_, b_, stride=(2, 1), padding=1, groups=groups),
               x, w, b, directional=True)


def test_conv2d_grad_only_for_what_requires_it():
    rng = np.random.default_rng(0)
    x = minivit.tensor(rng.standard_normal((2, 3, 5, 5)), dtype="float64")
    w = minivit.tensor(rng.standard_normal((4, 3, 3, 3)), dtype="float64", requires_grad=True)
    conv2d(x, w, padding=1).sum().backward()
    assert x.grad is None and w.grad.shape == (4, 3, 3, 3)
    # d(sum y)/dW[o, c, i, j] = sum of the input under offset (i, j): checks the no-bias path
    xpad = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)))
    expect = np.stack([xpad[:, :, i:i + 5, j:j + 5].sum(axis=(0, 2, 3))
                       for i in range(3) for j in range(3)], axis=-1).reshape(3, 3, 3)
    np.testing.assert_allclose(w.grad.numpy(), np.broadcast_to(expect, (4, 3, 3, 3)))


@pytest.mark.parametrize("groups", [1, 4])
def test_conv2d_float32_on_each_device(device, groups):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((8, 4 // groups, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    xt, wt, bt = (minivit.tensor(a, device=device, requires_grad=True) for a in (x, w, b))
    y = conv2d(xt, wt, bt, stride=2, padding=1, groups=groups)
    assert y.dtype == np.float32 and y.device == device and y.shape == (2, 8, 3, 3)
    np.testing.assert_allclose(y.numpy(), conv2d_loop(x, w, b, (2, 2), (1, 1), groups=groups),
                               rtol=1e-4, atol=1e-4)
    (y * y).sum().backward()
    for t in (xt, wt, bt):
        assert t.grad.dtype == np.float32 and t.grad.device == device
        assert t.grad.shape == t.shape
    if device == "cuda":  # the same gradients as on the CPU
        cpu = [minivit.tensor(a, requires_grad=True) for a in (x, w, b)]
        y = conv2d(*cpu, stride=2, padding=1, groups=groups)
        (y * y).sum().backward()
        for t, c in zip((xt, wt, bt), cpu):
            np.testing.assert_allclose(t.grad.numpy(), c.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("x_shape, w_shape, kwargs, message", [
    ((2, 3, 8, 8), (4, 2, 3, 3), {}, "input has 3 channels but the weight"),
    ((2, 4, 8, 8), (4, 1, 3, 3), {"groups": 2}, "expects 1*2=2"),
    ((2, 4, 8, 8), (6, 1, 3, 3), {"groups": 4}, "groups=4 must divide"),
    ((2, 3, 8, 8), (4, 1, 3, 3), {"groups": 2}, "groups=2 must divide"),
    ((2, 3, 4, 4), (4, 3, 5, 5), {}, "larger than the padded input 4x4"),
    ((2, 3, 4, 4), (4, 3, 3, 3), {"dilation": 2}, "dilated extent 5x5"),
    ((3, 8, 8), (4, 3, 3, 3), {}, "expected a 4-D input"),
    ((2, 3, 8, 8), (4, 3, 3), {}, "expected a 4-D weight"),
])
def test_conv2d_bad_input_names_op_and_shapes(x_shape, w_shape, kwargs, message):
    x, w = minivit.zeros(*x_shape), minivit.zeros(*w_shape)
    with pytest.raises(ValueError, match="conv2d") as err:
        conv2d(x, w, **kwargs)
    assert message in str(err.value)
    assert f"input shapes {x_shape}, {w_shape}" in str(err.value)


def test_conv2d_bad_arguments():
    x, w = minivit.zeros(1, 2, 5, 5), minivit.zeros(2, 2, 3, 3)
    with pytest.raises(ValueError, match=r"conv2d: bias of shape \(3,\)"):
        conv2d(x, w, minivit.zeros(3))
    with pytest.raises(ValueError, match="conv2d: stride must be >= 1"):
        conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="conv2d: padding must be an int or a pair"):
        conv2d(x, w, padding=(1, 1, 1))
    with pytest.raises(ValueError, match="conv2d: groups must be a positive int"):
        conv2d(x, w, groups=0)
