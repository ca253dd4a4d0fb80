"""conv2d_nhwc (channels-last dense conv): forward against the direct loop of the NCHW
definition, the NCHW op with the axes moved, and gradients against finite differences."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minivit
from minivit.nn.functional import conv2d, conv2d_nhwc
from harness import check_grad
from test_conv import conv2d_loop


def nhwc_loop(x, w, b=None, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1)):
    """The NCHW loop on an explicitly padded input, axes moved to channels-last."""
    (pt, pb), (pl, pr) = padding
    xpad = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))).transpose(0, 3, 1, 2)
    return conv2d_loop(xpad, w, b, stride, (0, 0), dilation).transpose(0, 2, 3, 1)


@st.composite
def cases(draw):
    """Batch 1-2, channels 1-4 in and 1-5 out, size 1-6, kernel 1-3, stride 1-2, asymmetric
    padding 0-2, dilation 1-2, with or without bias; float64 data."""
    c, o, n = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    h = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - sum(padding[0])), 6))
    w = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - sum(padding[1])), 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arrays = [rng.standard_normal((n, h, w, c)), rng.standard_normal((o, c, kh, kw))]
    if draw(st.booleans()):
        arrays.append(rng.standard_normal(o))
    return arrays, dict(stride=stride, padding=padding, dilation=dilation)


@given(cases())
def test_matches_loop_and_finite_differences(case):
    arrays, geo = case
    y = conv2d_nhwc(*(minivit.tensor(a) for a in arrays), **geo)
    np.testing.assert_allclose(y.numpy(), nhwc_loop(*arrays, **geo), rtol=1e-10, atol=1e-10)
    check_grad(lambda *t: conv2d_nhwc(*t, **geo), *arrays)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0),
                                                     (7, 2, 3)])
def test_same_numbers_and_gradients_as_the_nchw_conv(kernel, stride, padding):
    rng = np.random.default_rng(kernel + stride)
    x = rng.standard_normal((3, 9, 8, 5))
    w, b = rng.standard_normal((6, 5, kernel, kernel)), rng.standard_normal(6)
    ho, wo = ((s + 2 * padding - kernel) // stride + 1 for s in (9, 8))
    g = rng.standard_normal((3, ho, wo, 6))
    results = []
    for layout in ("nhwc", "nchw"):
        t = [minivit.tensor(a, requires_grad=True) for a in (x, w, b)]
        if layout == "nhwc":
            y = conv2d_nhwc(*t, stride=stride, padding=padding)
        else:
            y = conv2d(t[0].permute(0, 3, 1, 2), t[1], t[2], stride=stride,
                       padding=padding).permute(0, 2, 3, 1)
        (y * minivit.tensor(g)).sum().backward()
        results.append([y.numpy()] + [a.grad.numpy() for a in t])
    for a, b_ in zip(*results):
        np.testing.assert_allclose(a, b_, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("block", [1, 1 << 30])
def test_image_blocks_give_the_same_result(monkeypatch, block):
    from minivit.kernels import cpu_conv_nhwc as dw_module
    monkeypatch.setattr(dw_module, "CACHE_BLOCK", block)
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((5, 6, 7, 3)), rng.standard_normal((4, 3, 3, 3))
    y = conv2d_nhwc(minivit.tensor(x), minivit.tensor(w), stride=(2, 1), padding=((1, 0), (1, 1)))
    np.testing.assert_allclose(y.numpy(), nhwc_loop(x, w, None, (2, 1), ((1, 0), (1, 1))),
                               rtol=1e-10, atol=1e-10)
    check_grad(lambda a, b: conv2d_nhwc(a, b, stride=(2, 1), padding=((1, 0), (1, 1))), x, w,
               directional=True)


@pytest.mark.parametrize("chunk", [1, 2600, 1 << 30])
@pytest.mark.parametrize("stride, padding, dilation", [((1, 1), ((1, 1), (1, 1)), (1, 1)),
                                                       ((2, 1), ((1, 0), (1, 1)), (1, 1)),
                                                       ((1, 1), ((2, 1), (0, 2)), (2, 1))])
def test_dx_columns_a_few_images_at_a_time_give_the_same_result(monkeypatch, chunk, stride,
                                                             padding, dilation):
    """dx of a stride-1 conv is the transposed conv, its columns built a few images at a time:
    COLS_CHUNK 1, one image (504 numbers of columns) per chunk; 2600, 5 images per chunk, the
    last 3; 2^30, all 23 at once. Each chunk's copy is split among 3 threads, unevenly. The other two
    geometries take col2im. All match the loop and finite differences."""
    from minivit.kernels import cpu_conv_nhwc, parallel
    monkeypatch.setattr(cpu_conv_nhwc, "COLS_CHUNK", chunk)   # the whole: 23 * 504 numbers
    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)   # each chunk's copy split among threads
    monkeypatch.setattr(parallel, "NUM_THREADS", 3)    # in uneven parts
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((23, 6, 7, 2)), rng.standard_normal((3, 2, 2, 2)), \
        rng.standard_normal(3)
    geo = dict(stride=stride, padding=padding, dilation=dilation)
    y = conv2d_nhwc(minivit.tensor(x), minivit.tensor(w), minivit.tensor(b), **geo)
    np.testing.assert_allclose(y.numpy(), nhwc_loop(x, w, b, **geo), rtol=1e-10, atol=1e-10)
    check_grad(lambda *t: conv2d_nhwc(*t, **geo), x, w, b, directional=True)


def test_float32_on_each_device(device):
    rng = np.random.default_rng(4)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(2, 6, 6, 4), (8, 4, 3, 3), (8,)]]
    t = [minivit.tensor(a, device=device, requires_grad=True) for a in arrays]
    y = conv2d_nhwc(*t, stride=2, padding=1)
    assert y.dtype == np.float32 and y.device == device and y.shape == (2, 3, 3, 8)
    np.testing.assert_allclose(y.numpy(), nhwc_loop(*arrays, (2, 2), ((1, 1), (1, 1))),
                               rtol=1e-4, atol=1e-4)
    (y * y).sum().backward()
    cpu = [minivit.tensor(a, requires_grad=True) for a in arrays]
    yc = conv2d_nhwc(*cpu, stride=2, padding=1)
    (yc * yc).sum().backward()
    for a, c in zip(t, cpu):
        assert a.grad.dtype == np.float32 and a.grad.device == device
        np.testing.assert_allclose(a.grad.numpy(), c.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_counts_flops():
    from minivit.autograd.flops import count_flops
    with count_flops() as c:
        conv2d_nhwc(minivit.ones(2, 5, 5, 3), minivit.ones(4, 3, 3, 3), padding=1)
    assert c.total == 2 * (2 * 5 * 5 * 4) * (3 * 3 * 3)


@pytest.mark.parametrize("x_shape, w_shape, kwargs, message", [
    ((2, 8, 8, 3), (4, 2, 3, 3), {}, "expected a weight of shape (out_channels, 3, kh, kw)"),
    ((2, 3, 3, 3), (4, 3, 5, 5), {}, "larger than the padded input 3x3"),
    ((8, 8, 3), (4, 3, 3, 3), {}, "expected a 4-D channels-last input (N, H, W, C)"),
])
def test_bad_input_names_op_and_shapes(x_shape, w_shape, kwargs, message):
    with pytest.raises(ValueError, match="conv2d_nhwc") as err:
        conv2d_nhwc(minivit.zeros(*x_shape), minivit.zeros(*w_shape), **kwargs)
    assert message in str(err.value)
    assert f"input shapes {x_shape}, {w_shape}" in str(err.value)


def test_bad_bias():
    with pytest.raises(ValueError, match=r"conv2d_nhwc: bias of shape \(3,\) does not match"):
        conv2d_nhwc(minivit.zeros(1, 5, 5, 2), minivit.zeros(4, 2, 3, 3), minivit.zeros(3))
