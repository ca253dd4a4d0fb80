"""Every fast body (``minivit/kernels``) against its op's reference body.

For each registered op, hypothesis draws shapes, values and options; the op runs once on its
fast body and once in ``minivit.reference_mode()`` on the same inputs, with the same upstream
gradient and the same random seed (dropout masks), in float32 and float64, and the outputs and
every input gradient must agree to the tolerance stated per op below. The ``blocked`` cases
shrink the blocking thresholds of ``kernels/parallel.py`` so that even these small arrays are
cut into several blocks on two threads: the blocked and threaded code runs, not its plain
fallback. The reference bodies themselves are checked against finite differences by the
gradchecks (``minivit.gradcheck`` runs on reference bodies).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minivit
import minivit.nn.functional as F
from harness import load_tool
from minivit import kernels
from minivit.kernels import cpu_conv, cpu_conv_nhwc, cpu_norm, normal_cdf, parallel

# (rtol, atol) per dtype. float64: the fast bodies reorder sums (blocked column sums, gemv
# row sums), a few ulps. float32: the same reordering over up to ~10^3 terms, plus for GELU
# the float32 Φ polynomial / erf approximation (error <= 1.2e-7 in Φ, see normal_cdf.py).
TIGHT = {"float32": (2e-5, 2e-6), "float64": (1e-10, 1e-12)}
SUMS = {"float32": (1e-4, 2e-5), "float64": (1e-9, 1e-11)}      # norms, attention, linear
GELU_TOL = {"float32": (2e-5, 3e-6), "float64": (1e-10, 1e-12)}

dtypes = st.sampled_from(["float32", "float64"])


@pytest.fixture(params=[False, True], ids=["plain", "blocked"])
def blocked(request, monkeypatch):
    if request.param:
        monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)
        monkeypatch.setattr(parallel, "BLOCK_ELEMENTS", 48)
        monkeypatch.setattr(parallel, "MATMUL_MIN_WORK", 0)
        monkeypatch.setattr(parallel, "NUM_THREADS", 2)
        monkeypatch.setattr(parallel, "_pool", None)
        monkeypatch.setattr(cpu_conv, "CACHE_BLOCK", 64)       # a few channels per block
        monkeypatch.setattr(cpu_conv_nhwc, "CACHE_BLOCK", 64)  # one image per block
    yield request.param
    if parallel._pool is not None and request.param:
        parallel._pool.shutdown()


def _run(fn, arrays, dtype, grads_for, seed):
    """Output and input gradients of fn(*tensors), for a fixed random upstream gradient."""
    minivit.manual_seed(seed)
    ts = [minivit.tensor(a.astype(dtype) if a.dtype.kind == "f" else a,
                         requires_grad=(i in grads_for)) for i, a in enumerate(arrays)]
    y = fn(*ts)
    up = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype)
    y.backward(minivit.tensor(up))
    return [y.numpy()] + [ts[i].grad.numpy() for i in grads_for]


def check_fast_matches_reference(op, fn, arrays, dtype, tol, grads_for=None, seed=0):
    """fn's output and gradients on the fast bodies == on the reference bodies, within tol."""
    grads_for = list(range(len(arrays))) if grads_for is None else grads_for
    with minivit.reference_mode(False):
        fast = _run(fn, arrays, dtype, grads_for, seed)
    with minivit.reference_mode():
        ref = _run(fn, arrays, dtype, grads_for, seed)
    rtol, atol = tol[dtype]
    for k, (f, r) in enumerate(zip(fast, ref)):
        assert f.dtype == r.dtype == np.dtype(dtype)
        what = "output" if k == 0 else f"gradient of input {grads_for[k - 1]}"
        np.testing.assert_allclose(f, r, rtol=rtol, atol=atol * max(1.0, np.abs(r).max()),
                                   err_msg=f"{op}: fast vs reference {what} ({dtype})")


def _rand(rng, *shape, scale=1.0, shift=0.0):
    return rng.standard_normal(shape) * scale + shift


COVERED: set[str] = set()


def covers(*names):
    COVERED.update(names)
    return lambda f: f


# --- elementwise ------------------------------------------------------------------------------

@covers("add", "mul")
@given(n=st.integers(1, 9), m=st.integers(1, 13), bcast=st.booleans(), dtype=dtypes,
       seed=st.integers(0, 2**16))
def test_add_mul(blocked, n, m, bcast, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = _rand(rng, n, m), _rand(rng, n, 1 if bcast else m)
    for op, fn in (("add", minivit.add), ("mul", minivit.mul)):
        check_fast_matches_reference(op, fn, [a, b], dtype, TIGHT)


@covers("relu", "erf")
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=3), dtype=dtypes,
       seed=st.integers(0, 2**16))
def test_relu_erf(blocked, shape, dtype, seed):
    x = _rand(np.random.default_rng(seed), *shape, scale=2.5)
    check_fast_matches_reference("relu", minivit.relu, [x], dtype, TIGHT)
    # erf: float32 rational approximation vs float64 erf rounded to float32
    check_fast_matches_reference("erf", minivit.erf, [x], dtype, TIGHT)


@covers("gelu")
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=3), dtype=dtypes,
       approximate=st.sampled_from(["none", "tanh"]), scale=st.sampled_from([1.0, 4.0]),
       seed=st.integers(0, 2**16))
def test_gelu(blocked, shape, dtype, approximate, scale, seed):
    x = _rand(np.random.default_rng(seed), *shape, scale=scale)
    check_fast_matches_reference("gelu", lambda t: F.gelu(t, approximate), [x], dtype, GELU_TOL)


def test_fast_float32_gelu_error_against_float64_erf():
    """The float32 fast GELU (Φ by normal_cdf.normal_cdf_block's polynomial) against the exact
    x Φ(x) with Φ from float64 erf: within 1e-6 absolute for |x| <= 8 and 2e-6 for |x| <= 16
    (where float32 itself rounds y to 1e-6); the derivative within 1e-6 everywhere."""
    x64 = np.linspace(-16, 16, 320001)
    x32 = x64.astype(np.float32)
    xe = x32.astype(np.float64)                          # the float32 inputs, exactly
    cdf = 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in xe[::40]]))
    want_y = xe[::40] * cdf
    want_d = cdf + xe[::40] * np.exp(-0.5 * xe[::40] ** 2) / math.sqrt(2 * math.pi)
    t = minivit.tensor(x32[::40], requires_grad=True)
    y = F.gelu(t)
    y.backward(minivit.ones(*y.shape))
    err_y = np.abs(y.numpy().astype(np.float64) - want_y)
    err_d = np.abs(t.grad.numpy().astype(np.float64) - want_d)
    inner = np.abs(xe[::40]) <= 8
    assert err_y[inner].max() < 1e-6, err_y[inner].max()
    assert err_y.max() < 2e-6, err_y.max()
    assert err_d.max() < 1e-6, err_d.max()


def test_fast_float32_normal_cdf_error():
    x = np.linspace(-12, 12, 24001).astype(np.float32)
    want = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    assert np.abs(normal_cdf.normal_cdf_block(x) - want).max() < 1.2e-7


def test_fit_normal_cdf_reproduces_the_shipped_coefficients():
    """tools/fit_normal_cdf.py, which normal_cdf.py names as the source of its polynomial,
    runs and gives the coefficients the fast GELU uses (to 1e-9 relative: the fit's own
    least-squares rounding), with Φ's float32 error as stated."""
    tool = load_tool("fit_normal_cdf")
    c = tool.fit(6, 5.5)
    shipped = np.array(normal_cdf._CDF32_TANH_P)
    assert np.abs(c - shipped).max() <= 1e-9 * np.abs(shipped).max() + 1e-15
    assert tool.float32_error(c) < 1.2e-7


# --- softmax, matmul, reshape -----------------------------------------------------------------

@covers("softmax")
@given(n=st.integers(1, 6), m=st.integers(1, 6), k=st.integers(1, 9),
       axis=st.sampled_from([-1, 0, 1]), masked=st.booleans(), dtype=dtypes,
       seed=st.integers(0, 2**16))
def test_softmax(blocked, n, m, k, axis, masked, dtype, seed):
    x = _rand(np.random.default_rng(seed), n, m, k, scale=3.0)
    if masked:
        x[0, 0, :] = -np.inf               # a fully masked row gives 0 on both bodies
    fn = (lambda t: F.softmax(t, dim=axis)) if not masked or axis == -1 else \
        (lambda t: F.softmax(t, dim=-1))
    check_fast_matches_reference("softmax", fn, [x], dtype, TIGHT)


@covers("matmul")
@given(b=st.integers(1, 6), m=st.integers(1, 7), k=st.integers(1, 7), n=st.integers(1, 7),
       dtype=dtypes, seed=st.integers(0, 2**16))
def test_matmul(blocked, b, m, k, n, dtype, seed):
    rng = np.random.default_rng(seed)
    check_fast_matches_reference("matmul", minivit.matmul,
                                 [_rand(rng, b, m, k), _rand(rng, b, k, n)], dtype, SUMS)


@covers("reshape")
@given(a=st.integers(1, 6), b=st.integers(1, 6), c=st.integers(1, 6), dtype=dtypes,
       seed=st.integers(0, 2**16))
def test_reshape_of_a_permuted_view(blocked, a, b, c, dtype, seed):
    x = _rand(np.random.default_rng(seed), a, b, c)
    check_fast_matches_reference("reshape", lambda t: t.permute(2, 0, 1).reshape(c, a * b),
                                 [x], dtype, TIGHT)


# --- linear -----------------------------------------------------------------------------------

@covers("linear", "linear_columns")
@given(n=st.integers(1, 9), n_in=st.integers(1, 8), n_out=st.integers(1, 8),
       act=st.sampled_from([None, "gelu", "gelu_tanh"]), bias=st.booleans(),
       residual=st.booleans(), columns=st.booleans(), dtype=dtypes,
       seed=st.integers(0, 2**16))
def test_linear(blocked, n, n_in, n_out, act, bias, residual, columns, dtype, seed):
    rng = np.random.default_rng(seed)
    residual = residual and act is None
    x = _rand(rng, n_in, n) if columns else _rand(rng, 2, n, n_in)
    w = _rand(rng, n_out, n_in, scale=0.5)
    out_shape = (n_out, n) if columns else (2, n, n_out)
    arrays = [x, w] + ([_rand(rng, n_out)] if bias else []) + \
        ([_rand(rng, *out_shape)] if residual else [])
    op = F.linear_columns if columns else F.linear

    def fn(x, w, *rest):
        b = rest[0] if bias else None
        r = rest[-1] if residual else None
        return op(x, w, b, act=act, residual=r)

    check_fast_matches_reference("linear", fn, arrays, dtype, GELU_TOL if act else SUMS)


# --- norms ------------------------------------------------------------------------------------

@covers("layernorm")
@given(n=st.integers(1, 9), d=st.integers(2, 12), k=st.sampled_from([1, 2]),
       affine=st.booleans(), dtype=dtypes, seed=st.integers(0, 2**16))
def test_layer_norm(blocked, n, d, k, affine, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = (n, 3, d) if k == 1 else (n, 3, d)
    norm = shape[-k:]
    arrays = [_rand(rng, *shape, scale=2.0, shift=1.0)]
    if affine:
        arrays += [_rand(rng, *norm), _rand(rng, *norm)]
    fn = (lambda x, w, b: F.layer_norm(x, norm, w, b)) if affine else \
        (lambda x: F.layer_norm(x, norm))
    check_fast_matches_reference("layernorm", fn, arrays, dtype, SUMS)


@covers("batchnorm")
@given(n=st.integers(2, 6), c=st.integers(1, 5), hw=st.sampled_from([None, (1, 1), (3, 4)]),
       training=st.booleans(), act=st.sampled_from([None, "relu", "gelu", "gelu_tanh"]),
       residual=st.booleans(), affine=st.booleans(), dtype=dtypes, seed=st.integers(0, 2**16))
def test_batch_norm(blocked, n, c, hw, training, act, residual, affine, dtype, seed):
    rng = np.random.default_rng(seed)
    residual = residual and act in (None, "relu")
    shape = (n, c) if hw is None else (n, c) + hw
    arrays = [_rand(rng, *shape, scale=2.0, shift=0.5)]
    if affine:
        arrays += [_rand(rng, c), _rand(rng, c)]
    if residual:
        arrays += [_rand(rng, *shape)]
    mean, var = _rand(rng, c), np.abs(_rand(rng, c)) + 0.5

    def fn(x, *rest):
        w, b = (rest[0], rest[1]) if affine else (None, None)
        r = rest[-1] if residual else None
        rm, rv = mean.astype(dtype), var.astype(dtype)     # fresh running stats each run
        return F.batch_norm(x, rm, rv, w, b, training=training, act=act, residual=r)

    check_fast_matches_reference("batchnorm", fn, arrays, dtype, GELU_TOL if act else SUMS)


@pytest.mark.parametrize("block_elements", [48, 1 << 17])
def test_batch_norm_one_pass_statistics_far_from_zero(monkeypatch, block_elements):
    """The channels-last BatchNorm's one-pass mean and variance (cpu_norm._mean_var): a
    float32 map with mean 1e4 and spread 1, in one block or many, matches float64's two passes
    (x² - mean² would lose every digit here)."""
    monkeypatch.setattr(parallel, "BLOCK_ELEMENTS", block_elements)
    x = (np.random.default_rng(3).standard_normal((4099, 5)) + 1e4).astype(np.float32)
    mean, var = cpu_norm._mean_var(x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(var, x64.var(axis=0), rtol=1e-3)


# --- attention --------------------------------------------------------------------------------

@covers("scaled_dot_product_attention")
@given(b=st.integers(1, 3), h=st.integers(1, 3), nq=st.integers(1, 7), nk=st.integers(1, 7),
       d=st.integers(1, 6), mask=st.sampled_from([None, "float", "bool"]),
       dropout=st.sampled_from([0.0, 0.3]), dtype=dtypes, seed=st.integers(0, 2**16))
def test_scaled_dot_product_attention(blocked, b, h, nq, nk, d, mask, dropout, dtype, seed):
    rng = np.random.default_rng(seed)
    arrays = [_rand(rng, b, h, nq, d), _rand(rng, b, h, nk, d), _rand(rng, b, h, nk, d)]
    if mask == "float":
        arrays.append(_rand(rng, h, nq, nk))
    keep = rng.random((nq, nk)) < 0.7
    keep[:, 0] = True                      # every query may attend somewhere

    def fn(q, k, v, *bias):
        m = bias[0] if bias else (minivit.tensor(keep) if mask == "bool" else None)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=dropout)

    check_fast_matches_reference("scaled_dot_product_attention", fn, arrays, dtype, SUMS)


@covers("self_attention")
@given(b=st.integers(1, 3), heads=st.integers(1, 3), n=st.integers(1, 7), d=st.integers(1, 5),
       bias=st.booleans(), dropout=st.sampled_from([0.0, 0.2]), dtype=dtypes,
       seed=st.integers(0, 2**16))
def test_self_attention(blocked, b, heads, n, d, bias, dropout, dtype, seed):
    rng = np.random.default_rng(seed)
    arrays = [_rand(rng, b, n, 3 * heads * d)] + ([_rand(rng, heads, n, n)] if bias else [])

    def fn(qkv, *bias_):
        return F.self_attention(qkv, heads, attn_mask=bias_[0] if bias_ else None,
                                dropout_p=dropout)

    check_fast_matches_reference("self_attention", fn, arrays, dtype, SUMS)


# --- loss -------------------------------------------------------------------------------------

@covers("cross_entropy")
@given(b=st.integers(1, 9), c=st.integers(2, 11), smoothing=st.sampled_from([0.0, 0.1]),
       reduction=st.sampled_from(["mean", "sum", "none"]), dtype=dtypes,
       seed=st.integers(0, 2**16))
def test_cross_entropy(blocked, b, c, smoothing, reduction, dtype, seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, c, b)
    check_fast_matches_reference(
        "cross_entropy",
        lambda z: F.cross_entropy(z, target, label_smoothing=smoothing, reduction=reduction),
        [_rand(rng, b, c, scale=3.0)], dtype, TIGHT)


# --- convolution and pooling ------------------------------------------------------------------

conv_geometry = st.fixed_dictionaries({
    "k": st.sampled_from([(1, 1), (3, 3), (2, 3)]), "stride": st.sampled_from([1, 2]),
    "pad": st.sampled_from([0, 1]), "dilation": st.sampled_from([1, 2])})


@covers("conv2d")
@given(n=st.integers(1, 3), c=st.integers(1, 4), size=st.integers(5, 9), geo=conv_geometry,
       kind=st.sampled_from(["dense", "depthwise", "grouped"]), mult=st.sampled_from([1, 2]),
       bias=st.booleans(), dtype=dtypes, seed=st.integers(0, 2**16))
def test_conv2d(blocked, n, c, size, geo, kind, mult, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    groups = {"dense": 1, "depthwise": c, "grouped": 2}[kind]
    c = 2 * c if kind == "grouped" else c
    o = groups * mult if kind != "dense" else 3
    k = geo["k"]
    arrays = [_rand(rng, n, c, size, size), _rand(rng, o, c // groups, *k, scale=0.5)]
    arrays += [_rand(rng, o)] if bias else []
    fn = lambda x, w, *b: F.conv2d(x, w, b[0] if b else None, geo["stride"], geo["pad"],  # noqa: E731
                                   geo["dilation"], groups)
    check_fast_matches_reference("conv2d", fn, arrays, dtype, SUMS)


@covers("conv2d_nhwc", "depthwise_conv2d_nhwc")
@given(n=st.integers(1, 3), c=st.integers(1, 5), size=st.integers(5, 9), geo=conv_geometry,
       depthwise=st.booleans(), bias=st.booleans(), dtype=dtypes, seed=st.integers(0, 2**16))
def test_channels_last_convs(blocked, n, c, size, geo, depthwise, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    o = c if depthwise else 4
    arrays = [_rand(rng, n, size, size + 1, c),
              _rand(rng, o, 1 if depthwise else c, *geo["k"], scale=0.5)]
    arrays += [_rand(rng, o)] if bias else []
    op = F.depthwise_conv2d_nhwc if depthwise else F.conv2d_nhwc
    fn = lambda x, w, *b: op(x, w, b[0] if b else None, geo["stride"], geo["pad"],  # noqa: E731
                             geo["dilation"])
    check_fast_matches_reference(op.__name__, fn, arrays, dtype, SUMS)


@covers("max_pool2d", "avg_pool2d")
@given(n=st.integers(1, 3), c=st.integers(1, 4), size=st.integers(4, 9),
       k=st.sampled_from([2, 3]), stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1]),
       count_include_pad=st.booleans(), dtype=dtypes, seed=st.integers(0, 2**16))
def test_pooling(blocked, n, c, size, k, stride, pad, count_include_pad, dtype, seed):
    x = _rand(np.random.default_rng(seed), n, c, size, size + 1)
    check_fast_matches_reference(
        "max_pool2d", lambda t: F.max_pool2d(t, k, stride, pad), [x], dtype, TIGHT)
    check_fast_matches_reference(
        "avg_pool2d", lambda t: F.avg_pool2d(t, k, stride, pad,
                                             count_include_pad=count_include_pad),
        [x], dtype, SUMS)


def test_every_fast_body_is_checked_here():
    """A new fast body must come with a case in this file."""
    names = {op.op_name() for op in kernels.registered()}
    missing = names - COVERED
    assert not missing, f"fast bodies without a fast-vs-reference test: {sorted(missing)}"


def test_reference_mode_switch_and_environment(monkeypatch):
    x = minivit.randn(3, requires_grad=True)
    assert not minivit.is_reference_mode()
    assert type(minivit.gelu(x).creator).__name__ == "GELUFast"
    with minivit.reference_mode():
        assert minivit.is_reference_mode()
        y = minivit.gelu(x)
        assert type(y.creator) is minivit.autograd.ops.GELU
        assert y.creator.op_name() == "gelu"
        with minivit.reference_mode(False):
            assert type(minivit.gelu(x).creator).__name__ == "GELUFast"
    assert not minivit.is_reference_mode()


def test_minivit_reference_environment_variable():
    import subprocess
    import sys
    code = ("import minivit; x = minivit.randn(3, requires_grad=True); "
            "print(minivit.is_reference_mode(), type(minivit.gelu(x).creator).__name__)")
    env = dict(__import__("os").environ, MINIVIT_REFERENCE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "GELU"], out.stderr


def test_register_insists_on_a_subclass():
    with pytest.raises(TypeError, match="must subclass the op"):
        kernels.register(minivit.autograd.ops.GELU)(type("NotAnOp", (), {}))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_fast_gelu_keeps_only_its_derivative(approximate):
    """The CPU fast GELU computes dy/dx in its forward pass and keeps that one array (not x
    and Φ(x)): it equals the reference derivative to float32 rounding; a fused Linear+GELU
    keeps x, W and it; without a gradient the forward gives the same y."""
    from minivit.autograd.ops.elementwise import gelu_derivative  # noqa: PLC0415
    x0 = np.random.default_rng(3).standard_normal((64, 48)).astype(np.float32) * 3
    x = minivit.tensor(x0, requires_grad=True)
    y = F.gelu(x, approximate=approximate)
    (d,) = y.grad_fn.saved_tensors
    want = gelu_derivative(x0.astype(np.float64), approximate)
    np.testing.assert_allclose(d.reshape(x0.shape), want, rtol=1e-5, atol=1e-6)
    with minivit.no_grad():
        np.testing.assert_array_equal(F.gelu(minivit.tensor(x0), approximate=approximate).numpy(),
                                      y.numpy())
    w = minivit.tensor(np.ones((5, 48), np.float32) * 0.01, requires_grad=True)
    h = F.linear(x, w, minivit.zeros(5), act="gelu" if approximate == "none" else "gelu_tanh")
    assert len(h.grad_fn.saved_tensors) == 3
