"""depthwise_conv2d_nhwc (channels-last depthwise conv) and BatchNorm.forward_channels_last:
forwards against a direct loop and the NCHW ops, gradients against finite differences."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minivit
from minivit import nn
from minivit.nn.functional import conv2d, depthwise_conv2d_nhwc
from harness import check_grad


def depthwise_nhwc_loop(x, w, b=None, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1)):
    """The definition, one output number at a time: out[n, y, x, c] = <W[c, 0], window> + b[c]."""
    n, h, wd, c = x.shape
    kh, kw = w.shape[2:]
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = stride, padding, dilation
    xpad = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, ho, wo, c), dtype=x.dtype)
    for i_n in range(n):
        for y in range(ho):
            for xx in range(wo):
                for ch in range(c):
                    window = xpad[i_n, y * sh:y * sh + dh * (kh - 1) + 1:dh,
                                  xx * sw:xx * sw + dw * (kw - 1) + 1:dw, ch]
                    out[i_n, y, xx, ch] = (window * w[ch, 0]).sum() + (0.0 if b is None else b[ch])
    return out


@st.composite
def cases(draw):
    """Batch 1-3, channels 1-5, size 1-7, kernel 1-3, stride 1-2, asymmetric padding 0-2,
    dilation 1-2, with or without bias; float64 data."""
    c, n = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    h = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - sum(padding[0])), 7))
    w = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - sum(padding[1])), 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arrays = [rng.standard_normal((n, h, w, c)), rng.standard_normal((c, 1, kh, kw))]
    if draw(st.booleans()):
        arrays.append(rng.standard_normal(c))
    return arrays, dict(stride=stride, padding=padding, dilation=dilation)


@given(cases())
def test_matches_loop_and_finite_differences(case):
    arrays, geo = case
    y = depthwise_conv2d_nhwc(*(minivit.tensor(a) for a in arrays), **geo)
    np.testing.assert_allclose(y.numpy(), depthwise_nhwc_loop(*arrays, **geo),
                               rtol=1e-10, atol=1e-10)
    check_grad(lambda *t: depthwise_conv2d_nhwc(*t, **geo), *arrays)


@pytest.mark.parametrize("stride", [1, 2])
def test_same_numbers_and_gradients_as_the_nchw_conv(stride):
    """The channels-last op is the NCHW depthwise conv2d with the axes moved, forward and back."""
    rng = np.random.default_rng(stride)
    x, w, b = rng.standard_normal((3, 9, 8, 6)), rng.standard_normal((6, 1, 3, 3)), \
        rng.standard_normal(6)
    g = rng.standard_normal((3, (9 + 2 - 3) // stride + 1, (8 + 2 - 3) // stride + 1, 6))
    grads = []
    for layout in ("nhwc", "nchw"):
        t = [minivit.tensor(a, requires_grad=True) for a in (x, w, b)]
        if layout == "nhwc":
            y = depthwise_conv2d_nhwc(*t, stride=stride, padding=1)
        else:
            y = conv2d(t[0].permute(0, 3, 1, 2), t[1], t[2], stride=stride, padding=1,
                       groups=6).permute(0, 2, 3, 1)
        (y * minivit.tensor(g)).sum().backward()
        grads.append([y.numpy()] + [a.grad.numpy() for a in t])
    for a, b_ in zip(*grads):
        np.testing.assert_allclose(a, b_, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [(2, 1), (1, 1)])   # the scatter's dx, the flipped conv's
@pytest.mark.parametrize("block", [1, 40, 1 << 17])
def test_image_blocks_and_threads_give_identical_results(monkeypatch, block, stride):
    """The work is cut into blocks of images; the weight gradient's per-block sums are added in
    block order, so every block size gives the same numbers as one block."""
    from minivit.kernels import cpu_conv_nhwc as dw_module
    rng = np.random.default_rng(7)
    arrays = [rng.standard_normal((5, 6, 7, 4)).astype(np.float32),
              rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
              rng.standard_normal(4).astype(np.float32)]

    def run():
        t = [minivit.tensor(a, requires_grad=True) for a in arrays]
        y = depthwise_conv2d_nhwc(*t, stride=stride, padding=((0, 1), (1, 1)))
        (y * y).sum().backward()
        return [y.numpy()] + [a.grad.numpy() for a in t]

    monkeypatch.setattr(dw_module, "CACHE_BLOCK", block)
    got = run()
    expect = depthwise_nhwc_loop(*[a.astype(np.float64) for a in arrays], stride=stride,
                                 padding=((0, 1), (1, 1)))
    np.testing.assert_allclose(got[0], expect, rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(dw_module, "CACHE_BLOCK", 1 << 30)  # everything in one block
    for a, b in zip(got[1:], run()[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_float32_on_each_device(device):
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(2, 6, 6, 8), (8, 1, 3, 3), (8,)]]
    t = [minivit.tensor(a, device=device, requires_grad=True) for a in arrays]
    y = depthwise_conv2d_nhwc(*t, stride=2, padding=((0, 1), (0, 1)))
    assert y.dtype == np.float32 and y.device == device and y.shape == (2, 3, 3, 8)
    np.testing.assert_allclose(y.numpy(), depthwise_nhwc_loop(*arrays, (2, 2), ((0, 1), (0, 1))),
                               rtol=1e-4, atol=1e-4)
    (y * y).sum().backward()
    cpu = [minivit.tensor(a, requires_grad=True) for a in arrays]
    yc = depthwise_conv2d_nhwc(*cpu, stride=2, padding=((0, 1), (0, 1)))
    (yc * yc).sum().backward()
    for a, c in zip(t, cpu):
        assert a.grad.dtype == np.float32 and a.grad.device == device
        np.testing.assert_allclose(a.grad.numpy(), c.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_counts_flops():
    from minivit.autograd.flops import count_flops
    with count_flops() as c:
        depthwise_conv2d_nhwc(minivit.ones(2, 5, 5, 3), minivit.ones(3, 1, 3, 3), padding=1)
    assert c.total == 2 * (2 * 5 * 5 * 3) * 9


@pytest.mark.parametrize("x_shape, w_shape, kwargs, message", [
    ((2, 8, 8, 3), (4, 1, 3, 3), {}, "expected a depthwise weight of shape (3, 1, kh, kw)"),
    ((2, 8, 8, 3), (3, 2, 3, 3), {}, "expected a depthwise weight of shape (3, 1, kh, kw)"),
    ((2, 3, 3, 3), (3, 1, 5, 5), {}, "larger than the padded input 3x3"),
    ((2, 3, 3, 3), (3, 1, 3, 3), {"dilation": 2}, "larger than the padded input 3x3"),
    ((8, 8, 3), (3, 1, 3, 3), {}, "expected a 4-D channels-last input (N, H, W, C)"),
])
def test_bad_input_names_op_and_shapes(x_shape, w_shape, kwargs, message):
    with pytest.raises(ValueError, match="depthwise_conv2d_nhwc") as err:
        depthwise_conv2d_nhwc(minivit.zeros(*x_shape), minivit.zeros(*w_shape), **kwargs)
    assert message in str(err.value)
    assert f"input shapes {x_shape}, {w_shape}" in str(err.value)


def test_bad_arguments():
    x, w = minivit.zeros(1, 5, 5, 2), minivit.zeros(2, 1, 3, 3)
    with pytest.raises(ValueError, match=r"bias of shape \(3,\) does not match the 2 channels"):
        depthwise_conv2d_nhwc(x, w, minivit.zeros(3))
    with pytest.raises(ValueError, match="depthwise_conv2d_nhwc: stride must be >= 1"):
        depthwise_conv2d_nhwc(x, w, stride=0)
    with pytest.raises(ValueError, match="depthwise_conv2d_nhwc: padding must be an int or a"):
        depthwise_conv2d_nhwc(x, w, padding=(1, 1, 1))
    with pytest.raises(ValueError, match="depthwise_conv2d_nhwc: padding must be >= 0"):
        depthwise_conv2d_nhwc(x, w, padding=((0, -1), (0, 0)))


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_channels_last_is_the_channels_first_batchnorm(training):
    """Statistics, output, running buffers and gradients equal BatchNorm2d's on the NCHW map."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 5, 6))
    g = rng.standard_normal(x.shape)
    results = []
    for layout in ("first", "last"):
        bn = nn.BatchNorm2d(6).double()
        bn.weight.data[...] = rng.standard_normal(6) if layout == "first" else results[0][3]
        bn.train(training)
        if not training:
            bn.running_mean.data[...] = np.arange(6) * 0.1
            bn.running_var.data[...] = 1 + np.arange(6) * 0.2
        xt = minivit.tensor(x.transpose(0, 3, 1, 2) if layout == "first" else x,
                            requires_grad=True)
        y = bn(xt).permute(0, 2, 3, 1) if layout == "first" else bn.forward_channels_last(xt)
        (y * minivit.tensor(g)).sum().backward()
        gx = xt.grad.numpy().transpose(0, 2, 3, 1) if layout == "first" else xt.grad.numpy()
        results.append((y.numpy(), gx, bn.running_var.numpy().copy(), bn.weight.numpy().copy(),
                        bn.weight.grad.numpy(), bn.bias.grad.numpy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    check_grad(lambda t: nn.BatchNorm2d(6).double().forward_channels_last(t), x[:, :2])


def test_batchnorm_channels_last_bad_input():
    with pytest.raises(ValueError, match=r"expected a channels-last input \(\.\.\., 4\), got "
                                         r"\(2, 4, 3\)"):
        nn.BatchNorm2d(4).forward_channels_last(minivit.zeros(2, 4, 3))
