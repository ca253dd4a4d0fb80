"""The depthwise convolution's CUDA kernels (``minivit/kernels/cuda_conv.py``) against the op's
reference body, on the GPU or the CuPy stand-in (which runs each kernel's NumPy twin).

The channels-last op (``depthwise_conv2d_nhwc``) and the NCHW ``conv2d(..., groups=C)`` (with a
channel multiplier too) run once on the fast body, whose CUDA path is the kernels, and once in
``reference_mode()`` (im2col and a grouped product, array code), on the same GPU arrays:
outputs and the gradients of x, W and b must agree, for hypothesis-drawn shapes, strides,
asymmetric paddings and dilations, in float64 and float32.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minivit
import minivit.nn.functional as F
from minivit.autograd import backend
from minivit.kernels import cuda_conv

TOL = {"float64": dict(rtol=1e-11, atol=1e-12), "float32": dict(rtol=2e-5, atol=2e-5)}


def _pair(lo, hi):
    return st.tuples(st.integers(lo, hi), st.integers(lo, hi))


@st.composite
def cases(draw):
    """Batch 1-3, channels 1-40 (around the weight kernel's blocks of 32), size 1-8, kernel
    1-4, stride 1-3, padding 0-2 on each side, dilation 1-2, with or without bias."""
    kernel = draw(_pair(1, 4))
    geo = draw(st.fixed_dictionaries({"stride": _pair(1, 3), "dilation": _pair(1, 2),
                                      "padding": st.tuples(_pair(0, 2), _pair(0, 2))}))
    least = [max(1, d * (k - 1) + 1 - sum(p))          # the smallest input the kernel fits
             for k, d, p in zip(kernel, geo["dilation"], geo["padding"])]
    shape = (draw(st.integers(1, 3)), *(draw(st.integers(m, 8)) for m in least),
             draw(st.sampled_from([1, 2, 5, 31, 32, 33, 40])))
    return shape, kernel, draw(st.booleans()), geo


def _run(fn, arrays, need, seed):
    """fn(*tensors) on GPU copies of ``arrays`` and the gradients of sum(fn * r) for a fixed
    random r, as NumPy arrays (None for an input that needs no gradient)."""
    ts = [minivit.Tensor(backend.to_device(a, "cuda"), requires_grad=q)
          for a, q in zip(arrays, need)]
    y = fn(*ts)
    r = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    (y * minivit.Tensor(backend.to_device(r, "cuda"))).sum().backward()
    return [backend.as_numpy(y.data)] + [backend.as_numpy(t.grad.data) if q else None
                                         for t, q in zip(ts, need)]


def _fast_and_reference(fn, arrays, need=None, seed=0):
    need = need or [True] * len(arrays)
    with minivit.reference_mode(False):
        fast = _run(fn, arrays, need, seed)
    with minivit.reference_mode():
        ref = _run(fn, arrays, need, seed)
    return fast, ref


def _assert_agree(fast, ref, dtype):
    for k, (f, r) in enumerate(zip(fast, ref)):
        if r is None:
            assert f is None
            continue
        assert f.dtype == r.dtype == np.dtype(dtype) and f.shape == r.shape
        tol = dict(TOL[dtype])
        tol["atol"] *= max(1.0, float(np.abs(r).max()))   # a weight gradient sums many products
        np.testing.assert_allclose(f, r, err_msg=f"output/gradient {k}", **tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@given(case=cases(), seed=st.integers(0, 2**16))
def test_nhwc_kernels_match_the_reference_body(cuda, dtype, case, seed):
    shape, (kh, kw), bias, geo = case
    rng = np.random.default_rng(seed)
    c = shape[3]
    arrays = [rng.standard_normal(shape), rng.standard_normal((c, 1, kh, kw))]
    if bias:
        arrays.append(rng.standard_normal(c))
    arrays = [a.astype(dtype) for a in arrays]
    fast, ref = _fast_and_reference(lambda *t: F.depthwise_conv2d_nhwc(*t, **geo), arrays,
                                    seed=seed)
    _assert_agree(fast, ref, dtype)


@pytest.mark.parametrize("need", [(False, True, True), (True, False, False), (True, True, False),
                                  (False, False, True)])
def test_only_the_gradients_asked_for(cuda, need):
    """Each of dx, dW, db alone or together (the weight kernel's bias block on its own too)."""
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((2, 7, 6, 35)), rng.standard_normal((35, 1, 3, 3)),
              rng.standard_normal(35)]
    geo = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2))
    fast, ref = _fast_and_reference(lambda *t: F.depthwise_conv2d_nhwc(*t, **geo), arrays,
                                    need=list(need))
    _assert_agree(fast, ref, "float64")


@pytest.mark.parametrize("mult", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
def test_nchw_depthwise_conv_runs_on_the_kernels(cuda, mult, stride):
    """conv2d(groups=C), channel multiplier 1 or 2: the NCHW path's depthwise conv is the same
    kernels (on its channels-last copy)."""
    rng = np.random.default_rng(stride + 10 * mult)
    c = 5
    arrays = [rng.standard_normal((3, c, 9, 8)), rng.standard_normal((c * mult, 1, 3, 3)),
              rng.standard_normal(c * mult)]
    fast, ref = _fast_and_reference(
        lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=1, groups=c), arrays)
    _assert_agree(fast, ref, "float64")


def test_one_launch_forward_and_two_backward(standin):
    import cupy_standin  # noqa: PLC0415

    rng = np.random.default_rng(0)
    x, w, b = (minivit.Tensor(backend.to_device(a.astype(np.float32), "cuda"),
                              requires_grad=True)
               for a in (rng.standard_normal((4, 8, 8, 64)), rng.standard_normal((64, 1, 3, 3)),
                         rng.standard_normal(64)))
    with cupy_standin.counting() as fwd:
        y = F.depthwise_conv2d_nhwc(x, w, b, padding=1)
    g = backend.to_device(np.ones(y.shape, np.float32), "cuda")
    with cupy_standin.counting() as bwd:
        gx, gw, gb = y.creator.backward(g)
    assert fwd["by_op"] == {"raw.minivit_depthwise_fwd": 1}, fwd["by_op"]
    assert bwd["by_op"] == {"raw.minivit_depthwise_bwd_input": 1,
                            "raw.minivit_depthwise_bwd_weight": 1}, bwd["by_op"]
    assert not fwd["syncs"] + bwd["syncs"] + fwd["h2d"] + bwd["h2d"]


def test_a_changed_kernel_source_is_refused_on_the_stand_in(standin):
    """The stand-in runs a twin only for the source it was written against."""
    src = cuda_conv.source("minivit_depthwise_fwd", np.float32).replace("acc +=", "acc -=")
    with pytest.raises(RuntimeError, match="changed"):
        standin.RawKernel(src, "minivit_depthwise_fwd")
