"""Pooling: forwards against direct loops, gradients against finite differences (float64)."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minivit
from minivit.nn.functional.pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from harness import check_grad, distinct_arrays


def pool_loop(x, kernel, stride, padding, reduce, dilation=(1, 1), count_include_pad=True):
    """Direct definition of max / average pooling over every window (PyTorch's floor mode)."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, c, ho, wo))
    for y in range(ho):
        for xx in range(wo):
            vals, inside = [], 0
            for i in range(kh):
                for j in range(kw):
                    r, q = y * sh + i * dh - ph, xx * sw + j * dw - pw
                    if 0 <= r < h and 0 <= q < w:
                        vals.append(x[:, :, r, q])
                        inside += 1
                    elif reduce == "mean":
                        vals.append(np.zeros((n, c)))     # zero padding for the average
            stack = np.stack(vals, axis=-1)
            if reduce == "max":
                out[:, :, y, xx] = stack.max(axis=-1)     # -inf padding never wins
            else:
                out[:, :, y, xx] = stack.sum(axis=-1) / (kh * kw if count_include_pad else inside)
    return out


@st.composite
def pool_geometry(draw, dilation=False):
    """batch 1-2, channels 1-3, size 3-7, kernel 1-3, stride 1-2, padding 0..kernel/2."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilation else (1, 1)
    extent = [d * (k - 1) + 1 for k, d in zip(kernel, dil)]
    padding = tuple(draw(st.integers(0, e // 2)) for e in extent)
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    h, w = (draw(st.integers(max(3, e - 2 * p), 7)) for e, p in zip(extent, padding))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w)
    return shape, kernel, stride, padding, dil


@given(pool_geometry(dilation=True), st.data())
def test_max_pool2d_matches_loop_and_finite_differences(geometry, data):
    shape, kernel, stride, padding, dilation = geometry
    x = data.draw(distinct_arrays(shape))     # no ties: finite differences stay on one argmax
    y = max_pool2d(minivit.tensor(x), kernel, stride, padding, dilation)
    np.testing.assert_array_equal(y.numpy(), pool_loop(x, kernel, stride, padding, "max", dilation))
    check_grad(lambda t: max_pool2d(t, kernel, stride, padding, dilation), x)


@given(pool_geometry(), st.booleans(), st.integers(0, 2**16))
def test_avg_pool2d_matches_loop_and_finite_differences(geometry, include_pad, seed):
    shape, kernel, stride, padding, _ = geometry
    x = np.random.default_rng(seed).standard_normal(shape)
    y = avg_pool2d(minivit.tensor(x), kernel, stride, padding, count_include_pad=include_pad)
    np.testing.assert_allclose(y.numpy(), pool_loop(x, kernel, stride, padding, "mean",
                                                    count_include_pad=include_pad), rtol=1e-12)
    check_grad(lambda t: avg_pool2d(t, kernel, stride, padding,
                                    count_include_pad=include_pad), x)


def adaptive_loop(x, ho, wo):
    """PyTorch's formula: cell (i, j) averages rows floor(i*H/Ho) .. ceil((i+1)*H/Ho) - 1."""
    h, w = x.shape[2:]
    out = np.zeros(x.shape[:2] + (ho, wo))
    for i in range(ho):
        r0, r1 = (i * h) // ho, math.ceil((i + 1) * h / ho)
        for j in range(wo):
            q0, q1 = (j * w) // wo, math.ceil((j + 1) * w / wo)
            out[:, :, i, j] = x[:, :, r0:r1, q0:q1].mean(axis=(2, 3))
    return out


@given(st.integers(1, 7), st.integers(1, 7), st.integers(1, 4), st.integers(1, 4),
       st.integers(0, 2**16))
def test_adaptive_avg_pool2d_matches_loop_and_finite_differences(h, w, ho, wo, seed):
    x = np.random.default_rng(seed).standard_normal((2, 3, h, w))
    y = adaptive_avg_pool2d(minivit.tensor(x), (ho, wo))
    np.testing.assert_allclose(y.numpy(), adaptive_loop(x, ho, wo), rtol=1e-12, atol=1e-14)
    check_grad(lambda t: adaptive_avg_pool2d(t, (ho, wo)), x)


def test_adaptive_avg_pool2d_none_keeps_input_size():
    x = minivit.randn(2, 3, 6, 5)
    assert adaptive_avg_pool2d(x, (2, None)).shape == (2, 3, 2, 5)
    np.testing.assert_allclose(adaptive_avg_pool2d(x, 1).numpy()[..., 0, 0],
                               x.numpy().mean(axis=(2, 3)), rtol=1e-6)


def test_max_pool2d_tie_sends_gradient_to_the_first_maximum():
    x = minivit.tensor(np.ones((1, 1, 4, 4)), dtype="float64", requires_grad=True)
    max_pool2d(x, 2).sum().backward()
    expect = np.zeros((4, 4))
    expect[::2, ::2] = 1.0       # the top-left element of each 2x2 window
    np.testing.assert_array_equal(x.grad.numpy()[0, 0], expect)
    # overlapping windows: each window picks its own first maximum, and the gradients add up
    x = minivit.tensor(np.zeros((1, 1, 3, 3)), dtype="float64", requires_grad=True)
    max_pool2d(x, 2, stride=1).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy()[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_max_pool2d_pads_with_minus_infinity():
    x = minivit.tensor(-np.arange(1.0, 10.0).reshape(1, 1, 3, 3))
    y = max_pool2d(x, 3, stride=1, padding=1).numpy()[0, 0]
    assert y.max() < 0 and y[0, 0] == -1.0 and y[2, 2] == -5.0


def test_max_pool2d_propagates_nan():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 1, 0] = np.nan
    y = max_pool2d(minivit.tensor(x), 2).numpy()[0, 0]
    assert np.isnan(y[0, 0]) and np.isnan(y).sum() == 1


@pytest.mark.parametrize("op", ["max", "avg", "adaptive"])
def test_pooling_float32_on_each_device(device, op):
    x_np = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
    x = minivit.tensor(x_np, device=device, requires_grad=True)
    if op == "max":
        y, ref = max_pool2d(x, 3, 2, 1), pool_loop(x_np, (3, 3), (2, 2), (1, 1), "max")
    elif op == "avg":
        y, ref = avg_pool2d(x, 3, 2, 1), pool_loop(x_np, (3, 3), (2, 2), (1, 1), "mean")
    else:
        y, ref = adaptive_avg_pool2d(x, (3, 4)), adaptive_loop(x_np, 3, 4)
    assert y.dtype == np.float32 and y.device == device
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-6)
    (y * y).sum().backward()
    assert x.grad.dtype == np.float32 and x.grad.device == device and x.grad.shape == x.shape


@pytest.mark.parametrize("call, message", [
    (lambda x: max_pool2d(x, 9), "max_pool2d: kernel 9x9 (dilated extent 9x9) is larger"),
    (lambda x: max_pool2d(x, 2, padding=2), "max_pool2d: padding (2, 2) must be at most half"),
    (lambda x: avg_pool2d(x[0], 2), "avg_pool2d: expected a 4-D input"),
    (lambda x: avg_pool2d(x, 0), "avg_pool2d: kernel_size must be >= 1"),
    (lambda x: adaptive_avg_pool2d(x, 0), "adaptive_avg_pool2d: output_size must be"),
    (lambda x: adaptive_avg_pool2d(x[0], 2), "adaptive_avg_pool2d: expected a 4-D input"),
])
def test_pooling_bad_input_names_op_and_shapes(call, message):
    with pytest.raises(ValueError) as err:
        call(minivit.zeros(2, 3, 8, 8))
    assert message in str(err.value)


def test_pooling_unimplemented_options_say_so():
    x = minivit.zeros(1, 1, 4, 4)
    with pytest.raises(NotImplementedError, match="ceil_mode"):
        max_pool2d(x, 2, ceil_mode=True)
    with pytest.raises(NotImplementedError, match="return_indices"):
        max_pool2d(x, 2, return_indices=True)
