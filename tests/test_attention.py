"""scaled_dot_product_attention and MultiheadSelfAttention: forwards against the formula
written out, gradients (inputs, mask/bias, parameters) against finite differences."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minivit
import minivit.nn.functional as F
from minivit import nn
from harness import arrays, check_grad


def sdpa_ref(q, k, v, mask=None, scale=None):
    """softmax(q k^T * scale + mask) v, one (batch, head) at a time."""
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2])
    q, k, v = (np.broadcast_to(t, lead + t.shape[-2:]) for t in (q, k, v))
    out = np.zeros(lead + (q.shape[-2], v.shape[-1]))
    for idx in np.ndindex(*lead):
        s = q[idx] @ k[idx].T * scale
        if mask is not None:
            m = np.broadcast_to(mask, lead + s.shape)[idx]
            s = np.where(m, s, -np.inf) if m.dtype == bool else s + m
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        out[idx] = e / e.sum(axis=-1, keepdims=True) @ v[idx]
    return out


@settings(max_examples=20)
@given(st.data(), st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4),
       st.integers(1, 3), st.sampled_from(["none", "bias", "bias_heads", "bool"]))
def test_sdpa_grad_and_forward(data, batch, heads, nq, nk, d, mask_kind):
    q = data.draw(arrays((batch, heads, nq, d)))
    k = data.draw(arrays((batch, heads, nk, d)))
    v = data.draw(arrays((batch, heads, nk, d + 1)))
    if mask_kind == "none":
        got = F.scaled_dot_product_attention(*map(minivit.tensor, (q, k, v)))
        np.testing.assert_allclose(got.numpy(),
                                   sdpa_ref(q, k, v), rtol=1e-10, atol=1e-12)
        check_grad(F.scaled_dot_product_attention, q, k, v)
        return
    if mask_kind == "bool":
        mask = data.draw(st.lists(st.booleans(), min_size=nq * nk, max_size=nq * nk))
        mask = np.array(mask).reshape(nq, nk)
        mask[:, 0] = True  # every query attends to something
        got = F.scaled_dot_product_attention(*map(minivit.tensor, (q, k, v)), attn_mask=mask)
        np.testing.assert_allclose(got.numpy(), sdpa_ref(q, k, v, mask), rtol=1e-10, atol=1e-12)
        check_grad(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), q, k, v)
        return
    shape = (heads, nq, nk) if mask_kind == "bias_heads" else (batch, 1, nq, nk)
    bias = data.draw(arrays(shape))
    got = F.scaled_dot_product_attention(*map(minivit.tensor, (q, k, v, bias)))
    np.testing.assert_allclose(got.numpy(), sdpa_ref(q, k, v, bias), rtol=1e-10, atol=1e-12)
    # the additive bias is differentiable (relative position bias tables learn through it)
    check_grad(lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v, b), q, k, v, bias)


def test_sdpa_scale_and_broadcast_batch_dims():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 3, 4, 5))
    k = rng.standard_normal((2, 1, 6, 5))  # one key set shared by the heads
    v = rng.standard_normal((2, 1, 6, 2))
    got = F.scaled_dot_product_attention(*map(minivit.tensor, (q, k, v)), scale=0.3)
    np.testing.assert_allclose(got.numpy(), sdpa_ref(q, k, v, scale=0.3), rtol=1e-10)
    check_grad(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.3), q, k, v)


def test_sdpa_is_numerically_safe():
    q = minivit.tensor(np.full((1, 2, 3), 100.0, dtype=np.float32))
    k = minivit.tensor(np.full((1, 4, 3), 100.0, dtype=np.float32))
    v = minivit.randn(1, 4, 2)
    out = F.scaled_dot_product_attention(q, k, v)  # scores ~ 17000: exp would overflow
    np.testing.assert_allclose(out.numpy(), np.broadcast_to(v.numpy().mean(axis=1), (1, 2, 2)),
                               rtol=1e-5)
    # a query whose keys are all masked attends to nothing (zeros, not NaN)
    mask = np.array([[True, True, False, False], [False, False, False, False]])
    out = F.scaled_dot_product_attention(minivit.randn(1, 2, 3), minivit.randn(1, 4, 3), v,
                                         attn_mask=mask)
    assert np.all(np.isfinite(out.numpy())) and np.all(out.numpy()[0, 1] == 0)


def test_sdpa_mask_must_broadcast_to_the_scores():
    q, k, v = minivit.randn(2, 3, 4, 5), minivit.randn(2, 3, 6, 5), minivit.randn(2, 3, 6, 5)
    with pytest.raises(ValueError,
                       match=r"attn_mask of shape \(4, 4\).*scores of shape \(2, 3, 4, 6\)"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=minivit.zeros(4, 4))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(5, 1, 4, 6\)"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.zeros((5, 1, 4, 6), np.float32))
    with pytest.raises(ValueError, match=r"k.shape\[-2\] == v.shape\[-2\]"):
        F.scaled_dot_product_attention(q, k, minivit.randn(2, 3, 5, 5))


def test_sdpa_dropout():
    q, k, v = minivit.randn(2, 2, 8, 4), minivit.randn(2, 2, 8, 4), minivit.randn(2, 2, 8, 4)
    a = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5).numpy()
    b = F.scaled_dot_product_attention(q, k, v).numpy()
    assert not np.allclose(a, b)
    rng = np.random.default_rng(2)
    qa, ka, va = (rng.standard_normal((1, 2, 3, 2)) for _ in range(3))

    def fn(q, k, v):
        minivit.manual_seed(4)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.4)

    check_grad(fn, qa, ka, va)


# --- self_attention: packed qkv in, heads side by side out ----------------------------------

def self_attention_ref(qkv, heads, mask=None, scale=None):
    """Split timm's packed qkv (B, N, 3*heads*d) into heads, attend, merge the heads."""
    B, N, C3 = qkv.shape
    d = C3 // (3 * heads)
    t = qkv.reshape(B, N, 3, heads, d).transpose(2, 0, 3, 1, 4)
    out = sdpa_ref(t[0], t[1], t[2], mask, scale)                  # (B, H, N, d)
    return out.transpose(0, 2, 1, 3).reshape(B, N, heads * d)


@settings(max_examples=20)
@given(st.data(), st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 3),
       st.sampled_from(["none", "bias", "bias_heads", "bool"]))
def test_self_attention_grad_and_forward(data, batch, heads, tokens, d, mask_kind):
    qkv = data.draw(arrays((batch, tokens, 3 * heads * d)))
    if mask_kind == "none":
        got = F.self_attention(minivit.tensor(qkv), heads)
        assert got.shape == (batch, tokens, heads * d)
        np.testing.assert_allclose(got.numpy(), self_attention_ref(qkv, heads),
                                   rtol=1e-10, atol=1e-12)
        check_grad(lambda t: F.self_attention(t, heads), qkv)
        return
    if mask_kind == "bool":
        mask = np.array(data.draw(st.lists(st.booleans(), min_size=tokens * tokens,
                                           max_size=tokens * tokens))).reshape(tokens, tokens)
        mask[:, 0] = True
        got = F.self_attention(minivit.tensor(qkv), heads, attn_mask=mask)
        np.testing.assert_allclose(got.numpy(), self_attention_ref(qkv, heads, mask),
                                   rtol=1e-10, atol=1e-12)
        check_grad(lambda t: F.self_attention(t, heads, attn_mask=mask), qkv)
        return
    shape = (heads, tokens, tokens) if mask_kind == "bias_heads" else (batch, 1, tokens, tokens)
    bias = data.draw(arrays(shape))
    got = F.self_attention(minivit.tensor(qkv), heads, attn_mask=minivit.tensor(bias))
    np.testing.assert_allclose(got.numpy(), self_attention_ref(qkv, heads, bias),
                               rtol=1e-10, atol=1e-12)
    check_grad(lambda t, b: F.self_attention(t, heads, attn_mask=b), qkv, bias)


def test_self_attention_equals_sdpa_on_split_heads_in_float32():
    rng = np.random.default_rng(5)
    qkv = rng.standard_normal((3, 16, 3 * 4 * 8)).astype(np.float32)  # big enough to thread
    bias = rng.standard_normal((4, 16, 16)).astype(np.float32)
    got = F.self_attention(minivit.tensor(qkv), 4, attn_mask=bias, scale=0.3)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.numpy(), self_attention_ref(qkv.astype(np.float64), 4,
                                                               bias, 0.3),
                               rtol=1e-4, atol=1e-5)


def test_self_attention_dropout():
    qkv = minivit.randn(2, 6, 3 * 2 * 4)
    a = F.self_attention(qkv, 2, dropout_p=0.5).numpy()
    assert not np.allclose(a, F.self_attention(qkv, 2).numpy())
    qa = np.random.default_rng(3).standard_normal((1, 3, 3 * 2 * 2))

    def fn(t):
        minivit.manual_seed(4)
        return F.self_attention(t, 2, dropout_p=0.4)

    check_grad(fn, qa)
    # the same draw as scaled_dot_product_attention on the split heads
    minivit.manual_seed(4)
    t = qa.reshape(1, 3, 3, 2, 2).transpose(2, 0, 3, 1, 4)
    want = F.scaled_dot_product_attention(*map(minivit.tensor, t), dropout_p=0.4).numpy()
    np.testing.assert_allclose(fn(minivit.tensor(qa)).numpy(),
                               want.transpose(0, 2, 1, 3).reshape(1, 3, 4), rtol=1e-12)


def test_self_attention_errors_name_the_values():
    qkv = minivit.randn(2, 5, 24)
    with pytest.raises(ValueError, match=r"qkv must have shape \(B, N, 3 \* heads \* head_dim\)"
                                         r", got \(2, 5, 4, 6\)"):
        F.self_attention(minivit.randn(2, 5, 4, 6), 2)
    with pytest.raises(ValueError, match=r"last axis of qkv \(24\) must be 3 \* num_heads \(5\)"):
        F.self_attention(qkv, 5)
    with pytest.raises(ValueError, match=r"num_heads must be a positive int, got 0"):
        F.self_attention(qkv, 0)
    with pytest.raises(ValueError, match=r"num_heads must be a positive int, got 2.0"):
        F.self_attention(qkv, 2.0)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\), got 1.0"):
        F.self_attention(qkv, 2, dropout_p=1.0)
    with pytest.raises(ValueError, match=r"\(2, 2, 5, 5\)"):
        F.self_attention(qkv, 2, attn_mask=np.zeros((3, 5, 5)))


# --- the layer -------------------------------------------------------------------------------

def mhsa_ref(x, wqkv, bqkv, wproj, bproj, heads, bias=None):
    """timm's Attention written out: qkv columns ordered (3, heads, head_dim)."""
    B, N, C = x.shape
    d = C // heads
    qkv = (x @ wqkv.T + bqkv).reshape(B, N, 3, heads, d).transpose(2, 0, 3, 1, 4)
    out = sdpa_ref(qkv[0], qkv[1], qkv[2], bias)                   # (B, H, N, d)
    return out.transpose(0, 2, 1, 3).reshape(B, N, C) @ wproj.T + bproj


def test_mhsa_layout_and_forward():
    attn = nn.MultiheadSelfAttention(8, num_heads=2)
    names = [n for n, _ in attn.named_parameters()]
    assert names == ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]
    assert attn.qkv.weight.shape == (24, 8) and attn.proj.weight.shape == (8, 8)
    x = minivit.randn(2, 5, 8)
    p = {k: v.astype(np.float64) for k, v in attn.state_dict().items()}
    ref = mhsa_ref(x.numpy().astype(np.float64), p["qkv.weight"], p["qkv.bias"],
                   p["proj.weight"], p["proj.bias"], 2)
    np.testing.assert_allclose(attn(x).numpy(), ref, rtol=1e-4, atol=1e-5)
    assert nn.MultiheadSelfAttention(8, 2, qkv_bias=False).qkv.bias is None
    assert "MultiheadSelfAttention(\n  dim=8, num_heads=2\n  (qkv): Linear" in repr(attn)


@settings(max_examples=8)
@given(st.data(), st.integers(1, 2), st.sampled_from([1, 2]), st.integers(1, 4),
       st.sampled_from([1, 2]), st.booleans())
def test_mhsa_grad_wrt_input_bias_and_parameters(data, batch, heads, tokens, head_dim, with_bias):
    dim = heads * head_dim
    attn = nn.MultiheadSelfAttention(dim, heads).double()
    x = minivit.tensor(data.draw(arrays((batch, tokens, dim))), requires_grad=True)
    bias = minivit.tensor(data.draw(arrays((heads, tokens, tokens))), requires_grad=True)
    inputs = (x, bias) if with_bias else (x,)
    fn = (lambda x, b: attn(x, attn_bias=b)) if with_bias else attn
    assert minivit.gradcheck(fn, *inputs, params=list(attn.parameters()))
    p = {k: v for k, v in attn.state_dict().items()}
    ref = mhsa_ref(x.numpy(), p["qkv.weight"], p["qkv.bias"], p["proj.weight"], p["proj.bias"],
                   heads, bias.numpy() if with_bias else None)
    np.testing.assert_allclose(fn(*inputs).numpy(), ref, rtol=1e-10, atol=1e-12)


def test_mhsa_dropout_only_in_training_and_errors():
    attn = nn.MultiheadSelfAttention(8, 2, attn_drop=0.5, proj_drop=0.5)
    x = minivit.randn(2, 4, 8)
    attn.eval()
    np.testing.assert_array_equal(attn(x).numpy(), attn(x).numpy())
    attn.train()
    assert not np.allclose(attn(x).numpy(), attn(x).numpy())
    with pytest.raises(ValueError, match=r"expected input \(B, N, 8\), got \(2, 4, 6\)"):
        attn(minivit.randn(2, 4, 6))
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        nn.MultiheadSelfAttention(10, 3)


@pytest.mark.parametrize("proj_drop", [0.0, 0.5])
def test_mhsa_residual_is_added_after_the_projection(proj_drop):
    # residual= gives residual + attn(x): fused into the projection without a dropout after it
    # (and in eval), the plain add with one (same random draw: same seed).
    attn = nn.MultiheadSelfAttention(8, 2, proj_drop=proj_drop)
    x, r = minivit.randn(2, 4, 8), minivit.randn(2, 4, 8)
    for training in (True, False):
        attn.train(training)
        minivit.manual_seed(3)
        want = (r + attn(x)).numpy()
        minivit.manual_seed(3)
        np.testing.assert_allclose(attn(x, residual=r).numpy(), want, rtol=1e-6, atol=1e-6)


# --- rel_to_abs: relative-offset logits to absolute key positions ------------------------------

@settings(max_examples=20, deadline=None)
@given(st.data(), st.lists(st.integers(1, 3), max_size=2), st.integers(1, 5))
def test_rel_to_abs_forward_and_grad(data, lead, length):
    x = data.draw(arrays(tuple(lead) + (length, 2 * length - 1)))
    expect = np.zeros(tuple(lead) + (length, length))
    for i in range(length):
        for j in range(length):
            expect[..., i, j] = x[..., i, j - i + length - 1]
    np.testing.assert_array_equal(F.rel_to_abs(minivit.tensor(x)).numpy(), expect)
    check_grad(F.rel_to_abs, x)


def test_rel_to_abs_gradient_is_zero_on_offsets_no_query_meets():
    # query i meets offsets L-1-i .. 2L-2-i: row 0 never meets offset 0, row L-1 never 2L-2
    x = minivit.tensor(np.zeros((3, 5)), requires_grad=True)
    F.rel_to_abs(x).sum().backward()
    expect = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0], [1, 1, 1, 0, 0]], float)
    np.testing.assert_array_equal(x.grad.numpy(), expect)


def test_rel_to_abs_takes_strided_input_and_checks_its_shape():
    x = np.random.default_rng(0).standard_normal((4, 7, 2))
    t = minivit.tensor(x).permute(2, 0, 1)   # (2, 4, 7), not contiguous
    np.testing.assert_array_equal(F.rel_to_abs(t).numpy(),
                                  F.rel_to_abs(minivit.tensor(x.transpose(2, 0, 1).copy())).numpy())
    with pytest.raises(ValueError, match=r"expected \(\.\.\., L, 2L - 1\) logits, got shape "
                                         r"\(4, 6\)"):
        F.rel_to_abs(minivit.randn(4, 6))
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        F.rel_to_abs(minivit.randn(5))
