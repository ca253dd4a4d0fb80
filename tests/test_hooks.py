"""Hooks (issue 25): module forward-pre, forward and full-backward hooks, Tensor.register_hook,
grad_fn and its name in the repr."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minivit
from minivit import nn
from minivit.autograd.gradcheck import gradient_pairs


def _mlp(dtype=np.float32):
    m = nn.Sequential(nn.Linear(3, 5), nn.GELU(), nn.Linear(5, 2))
    return m.to(dtype)


# --- forward hooks --------------------------------------------------------------------------

def test_forward_hooks_run_in_order_and_prepend_goes_first():
    m = _mlp()
    calls = []
    m.register_forward_pre_hook(lambda mod, args: calls.append("pre1"))
    m.register_forward_pre_hook(lambda mod, args: calls.append("pre0"), prepend=True)
    m.register_forward_hook(lambda mod, args, out: calls.append("post1"))
    m.register_forward_hook(lambda mod, args, out: calls.append("post0"), prepend=True)
    m[0].register_forward_hook(lambda mod, args, out: calls.append("inner"))
    m(minivit.ones(2, 3))
    assert calls == ["pre0", "pre1", "inner", "post0", "post1"]


def test_hooks_see_true_args_and_output_and_removal_stops_them():
    m = _mlp()
    seen = []
    h = m[1].register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
    x = minivit.tensor(np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32))
    y = m(x)
    (a, out), = seen
    np.testing.assert_allclose(a.numpy(), m[0](x).numpy())
    np.testing.assert_allclose(out.numpy(), nn.functional.gelu(a).numpy())
    np.testing.assert_allclose(y.numpy(), m[2](out).numpy())
    h.remove()
    h.remove()   # twice is harmless
    m(x)
    assert len(seen) == 1
    with m.register_forward_hook(lambda *a: seen.append(1)):   # a handle is a context manager
        m(x)
    m(x)
    assert len(seen) == 2


def test_pre_hook_replaces_args_and_forward_hook_replaces_output():
    m = _mlp()
    x = minivit.ones(2, 3)
    ref = m(x * 2).numpy()
    h1 = m.register_forward_pre_hook(lambda mod, args: args[0] * 2)   # a single value is wrapped
    np.testing.assert_allclose(m(x).numpy(), ref)
    h2 = m.register_forward_hook(lambda mod, args, out: out * 0 + 7)
    np.testing.assert_array_equal(m(x).numpy(), np.full((2, 2), 7, np.float32))
    h1.remove(), h2.remove()
    np.testing.assert_allclose(m(x).numpy(), m(x).numpy())


def test_with_kwargs_hooks_see_and_replace_kwargs():
    attn = nn.MultiheadSelfAttention(8, num_heads=2)
    x = minivit.randn(1, 4, 8)
    seen = []

    def pre(mod, args, kwargs):
        seen.append(sorted(kwargs))
        return args, {**kwargs, "residual": x}

    attn.register_forward_pre_hook(pre, with_kwargs=True)
    attn.register_forward_hook(lambda mod, args, kwargs, out: seen.append(kwargs["residual"]),
                               with_kwargs=True)
    out = attn(x, residual=None)
    assert seen[0] == ["residual"] and seen[1] is x
    attn2 = nn.MultiheadSelfAttention(8, num_heads=2)
    attn2.load_state_dict(attn.state_dict())
    np.testing.assert_allclose(out.numpy(), attn2(x, residual=x).numpy(), rtol=1e-5, atol=1e-6)


def test_a_model_without_hooks_keeps_no_hook_state():
    m = _mlp()
    m(minivit.ones(1, 3))
    for mod in m.modules():
        assert mod._forward_hooks is None and mod._backward_hooks is None
        assert "_forward_hooks" not in mod.__dict__


def test_hook_that_is_not_callable_is_refused():
    with pytest.raises(TypeError, match="callable"):
        _mlp().register_forward_hook(3)


# --- full backward hooks --------------------------------------------------------------------

def _loss_and_grads(m, x, v):
    x.grad = None
    y = m(x)
    (y * minivit.tensor(v)).sum().backward()
    return y


def test_backward_hook_gets_grad_input_and_grad_output_matching_finite_differences():
    m = _mlp(np.float64)
    rng = np.random.default_rng(1)
    x = minivit.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    v = rng.standard_normal((4, 2))
    got = []
    m.register_full_backward_hook(lambda mod, gin, gout: got.append((gin, gout)))
    _loss_and_grads(m, x, v)
    (gin, gout), = got
    np.testing.assert_allclose(gout[0].numpy(), v)        # d(sum y*v)/dy = v
    # grad_input is d(sum y*v)/dx: compare with central differences
    eps = 1e-6
    num = np.zeros_like(x.numpy())
    for idx in np.ndindex(*x.shape):
        for sign in (1, -1):
            xp = x.numpy().copy()
            xp[idx] += sign * eps
            with minivit.no_grad():
                num[idx] += sign * float((m(minivit.tensor(xp)).numpy() * v).sum()) / (2 * eps)
    np.testing.assert_allclose(gin[0].numpy(), num, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(x.grad.numpy(), num, rtol=1e-6, atol=1e-8)


def test_backward_hook_replacement_flows_upstream_and_inner_modules_fire_first():
    m = _mlp(np.float64)
    x = minivit.tensor(np.random.default_rng(2).standard_normal((2, 3)), requires_grad=True)
    v = np.ones((2, 2))
    _loss_and_grads(m, x, v)
    plain = x.grad.numpy().copy()
    order = []
    m[2].register_full_backward_hook(lambda mod, gin, gout: order.append("fc2"))
    h = m.register_full_backward_hook(lambda mod, gin, gout: (gin[0] * -3,))
    m.register_full_backward_hook(lambda mod, gin, gout: order.append(gin[0].numpy().copy()))
    _loss_and_grads(m, x, v)
    np.testing.assert_allclose(x.grad.numpy(), -3 * plain)
    assert order[0] == "fc2"
    np.testing.assert_allclose(order[1], -3 * plain)    # later hooks see the replacement
    h.remove()
    _loss_and_grads(m, x, v)
    np.testing.assert_allclose(x.grad.numpy(), plain)


def test_backward_hook_on_the_first_layer_runs_with_none_when_the_input_needs_no_grad():
    m = _mlp()
    got = []
    m[0].register_full_backward_hook(lambda mod, gin, gout: got.append((gin, gout)))
    m(minivit.ones(2, 3)).sum().backward()
    (gin, gout), = got
    assert gin == (None,) and gout[0].shape == (2, 5)
    assert m[0].weight.grad is not None


def test_backward_hook_returning_the_wrong_number_of_gradients_is_an_error():
    m = _mlp()
    m.register_full_backward_hook(lambda mod, gin, gout: (gin[0], gin[0]))
    x = minivit.ones(2, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="returned 2 gradients; expected 1"):
        m(x).sum().backward()


@given(st.integers(1, 4), st.integers(1, 5), st.floats(-2, 2))
def test_backward_hook_identity_ops_gradient_matches_finite_differences(rows, cols, scale):
    """The identity ops a backward hook adds, with a hook that scales grad_input by ``scale``:
    the input's gradient is ``scale`` times the central differences of the plain layer, and
    the parameters' gradients are untouched (float64)."""
    lin = nn.Linear(cols, 2).double()
    lin.register_full_backward_hook(lambda mod, gin, gout: (gin[0] * scale,))
    x = minivit.tensor(np.random.default_rng(rows * 7 + cols).standard_normal((rows, cols)),
                       requires_grad=True)
    (nx, ax), (nw, aw), (nb, ab) = gradient_pairs(lin, x, params=list(lin.parameters()))
    np.testing.assert_allclose(ax, scale * nx, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(aw, nw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ab, nb, rtol=1e-5, atol=1e-7)


# --- Tensor.register_hook ---------------------------------------------------------------------

def test_tensor_hook_on_a_non_leaf_replaces_the_gradient_downstream_and_in_retain_grad():
    x = minivit.tensor([1.0, 2.0], requires_grad=True)
    y = x * 3
    y.retain_grad()
    seen = []
    y.register_hook(lambda g: seen.append(g.numpy().copy()))
    h = y.register_hook(lambda g: g * 10)
    (y * y).sum().backward()
    np.testing.assert_allclose(seen[0], [6.0, 12.0])       # 2y, before the replacement
    np.testing.assert_allclose(y.grad.numpy(), [60.0, 120.0])
    np.testing.assert_allclose(x.grad.numpy(), [180.0, 360.0])
    h.remove()
    x.grad = None
    y = x * 3
    (y * y).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [18.0, 36.0])


def test_tensor_hook_on_a_leaf_sees_the_summed_gradient_once():
    x = minivit.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    x.register_hook(lambda g: seen.append(g.numpy().copy()) or g + 1)
    (x * 2 + x * x).sum().backward()
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], [4.0, 6.0])        # 2 + 2x
    np.testing.assert_allclose(x.grad.numpy(), [5.0, 7.0])
    x.grad = None
    x.sum().backward()                                     # backward from the leaf itself
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 2.0])


def test_tensor_hook_fires_even_when_the_tensor_object_is_gone():
    x = minivit.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    y = x.exp()
    y.register_hook(lambda g: seen.append(1))
    loss = y.sum()
    del y
    loss.backward()
    assert seen == [1]


def test_tensor_hook_errors():
    with pytest.raises(RuntimeError, match="does not require grad"):
        minivit.ones(2).register_hook(lambda g: g)
    x = minivit.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    y.register_hook(lambda g: minivit.ones(3))
    with pytest.raises(RuntimeError, match=r"returned a gradient of \(3,\) float32; expected "
                                           r"\(2,\) float32"):
        y.sum().backward()


# --- grad_fn -----------------------------------------------------------------------------------

def test_grad_fn_and_repr_name_the_op():
    x = minivit.tensor([0.5], requires_grad=True)
    assert x.grad_fn is None and "requires_grad=True" in repr(x)
    y = nn.functional.gelu(x)
    assert repr(y.grad_fn).endswith("Backward>")
    assert f"grad_fn={y.grad_fn!r}" in repr(y) and "requires_grad" not in repr(y)
    assert y.grad_fn.next_functions == ((x, 0),)
    z = y * 2
    assert z.grad_fn.next_functions[0] == (y.grad_fn, 0)
    with minivit.no_grad():
        assert (x * 2).grad_fn is None
