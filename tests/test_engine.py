"""The backward pass itself: graph shapes (diamonds, reuse, deep chains), no_grad, retain_graph,
accumulation, memory (no live graph after the loss is dropped), the dtype policy, and the
engine's checks on what an op's backward returns."""
import gc
import math
import weakref

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minivit
from minivit import Function, Tensor
from minivit.autograd import sum_to
from harness import arrays, check_grad, shapes


def leaf(values, dtype=np.float64, device="cpu"):
    return minivit.tensor(np.asarray(values, dtype=dtype), device=device, requires_grad=True)


# --- graph shapes -----------------------------------------------------------------------------

def test_diamond(device):
    """x feeds two branches that meet again: both contributions arrive before x's creator runs."""
    x = leaf([0.5, -1.0, 2.0], device=device)
    h = x * 3.0                       # used twice below
    out = (h.exp() + h * h).sum()     # d/dx = 3 exp(3x) + 18 x
    out.backward()
    xv = x.numpy()
    np.testing.assert_allclose(x.grad.numpy(), 3 * np.exp(3 * xv) + 18 * xv, rtol=1e-12)
    check_grad(lambda x: (x * 3.0).exp() + (x * 3.0) ** 2, xv, device=device)


def test_value_reused_three_times(device):
    x = leaf([1.5, -2.0], device=device)
    h = x.tanh()
    out = (h * h * h + h).sum()       # h used 4 times in total, x once
    out.backward()
    t = np.tanh(x.numpy())
    np.testing.assert_allclose(x.grad.numpy(), (3 * t ** 2 + 1) * (1 - t ** 2), rtol=1e-12)
    y = leaf([0.7, 1.1], device=device)
    (y * y * y).sum().backward()      # a leaf used three times
    np.testing.assert_allclose(y.grad.numpy(), 3 * y.numpy() ** 2, rtol=1e-12)


def test_paths_of_different_lengths_join():
    """A long path and a short path from x meet: x's gradient gets both, once each."""
    x = leaf([0.3, 0.9])
    y = x
    for _ in range(20):
        y = y * 1.1
    (y + x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.1 ** 20 + 1] * 2, rtol=1e-12)


def test_deep_chain_no_recursion_error():
    x = leaf([1.0, 2.0])
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0001 ** 10_000] * 2, rtol=1e-9)
    z = x
    for _ in range(10_000):
        z = z + 1.0
    del y, z  # dropping a 10,000-deep graph frees it without recursion trouble either
    gc.collect()


def test_backward_on_a_leaf_and_with_an_explicit_gradient(device):
    x = leaf([1.0, 2.0], device=device)
    x.backward(np.array([3.0, 4.0]))
    np.testing.assert_array_equal(x.grad.numpy(), [3, 4])
    y = leaf(2.0, device=device)
    y.backward()
    assert y.grad.item() == 1.0 and y.grad.shape == ()
    z = leaf([[1.0, 2.0]], device=device)
    (z * 2.0).backward(minivit.tensor(np.array([[1.0, -1.0]]), device=device))
    np.testing.assert_array_equal(z.grad.numpy(), [[2, -2]])


def test_zero_dim_float64_keeps_float64():
    x = minivit.tensor(np.array(2.0), requires_grad=True)
    y = x * x
    assert isinstance(y.data, np.ndarray) and y.dtype == np.float64 and y.shape == ()
    y.backward()
    y = x * x
    y.backward()
    assert x.grad.dtype == np.float64 and x.grad.shape == () and x.grad.item() == 8.0
    s = minivit.tensor(np.ones(3, np.float32)).sum()
    assert isinstance(s.data, np.ndarray) and s.dtype == np.float32


def test_part_of_the_graph_without_grad():
    x = leaf([1.0, 2.0])
    c = minivit.tensor(np.array([3.0, 4.0]))          # a constant
    out = (x * c + c.exp()).sum()
    out.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3, 4])
    assert c.grad is None and not c.requires_grad


def test_dropped_output_of_a_multi_output_op_gets_zeros():
    x = leaf(np.arange(6.0))
    a, b, c = minivit.split(x, 3)
    out = (b * 2.0).sum()
    del a, c  # the graph holds outputs weakly
    out.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 2, 2, 0, 0])


def test_retain_grad_on_an_intermediate():
    x = leaf([1.0, 2.0])
    h = x * 3.0
    h.retain_grad()
    (h * h).sum().backward()
    np.testing.assert_array_equal(h.grad.numpy(), 2 * h.numpy())
    assert x.grad is not None and h.creator is not None


def test_detach_cuts_the_graph():
    x = leaf([1.0, 2.0])
    d = (x * 2.0).detach()
    assert d.creator is None and not d.requires_grad
    (x * d).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2, 4])


# ops that take any shape to some shape, to chain at random
CHAIN = [
    lambda t: t.tanh(), lambda t: 2.0 - t * 1.5, lambda t: minivit.gelu(t),
    lambda t: t.exp() * 0.1, lambda t: t.softmax(dim=-1), lambda t: t.T,
    lambda t: t.reshape(-1), lambda t: minivit.roll(t, 1), lambda t: t.unsqueeze(0),
    lambda t: t.squeeze(), lambda t: minivit.stack([t, t.sigmoid()]),
    lambda t: minivit.maximum(t, t * 0.5 + 0.0713),  # kinks at odd values, not at 0
    lambda t: minivit.where(t.detach() > 0.3141, t, t * t),
    lambda t: (t @ t.mT) if t.ndim >= 2 else t * t,
    lambda t: t.sum(axis=-1, keepdims=True) * t if t.ndim else t,
    lambda t: minivit.cat([t, t[..., :1]], axis=-1) if t.ndim else t,
    lambda t: minivit.pad(t, 1, value=0.3)[..., 1:] if t.ndim else t,
]


@given(data=st.data())
def test_random_compositions(data):
    """Chains of ops where every value is reused: gradients against finite differences in
    float64, and float32 in, float32 out (values and gradients)."""
    x = data.draw(arrays(data.draw(shapes(max_dims=3, max_side=3)), -2, 2))
    seq = data.draw(st.lists(st.integers(0, len(CHAIN) - 1), min_size=2, max_size=5))

    def f(x):
        y = x
        for i in seq:
            y = CHAIN[i](y)
        return y.sum() + (y * y).mean() + x.sum()

    check_grad(f, x)
    x32 = minivit.tensor(x.astype(np.float32), requires_grad=True)
    y = f(x32)
    y.backward()
    assert y.dtype == np.float32 and x32.grad.dtype == np.float32


# --- accumulation, retain_graph ---------------------------------------------------------------

def test_gradients_accumulate_across_backward_calls(device):
    x = leaf([1.0, 2.0], device=device)
    (x * x).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2 + 3, 4 + 3])
    x.grad = None
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3, 3])


def test_retain_graph_allows_a_second_backward(device):
    x = leaf([1.0, -2.0], device=device)
    out = (x.exp() * x).sum()
    out.backward(retain_graph=True)
    first = x.grad.numpy().copy()
    out.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * first)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        out.backward()  # the second call did not retain it


def test_gradients_never_alias():
    """Two leaves get the same upstream array from add: each must own a separate copy."""
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    (a + b).backward(np.array([1.0, 1.0]))
    a.grad.data[0] = 100.0
    assert b.grad.numpy()[0] == 1.0
    h = a * 1.0
    (h + h).sum().backward()
    np.testing.assert_array_equal(b.grad.numpy(), [1, 1])


# --- no_grad ----------------------------------------------------------------------------------

def test_no_grad_context_manager_records_nothing():
    x = leaf([1.0, 2.0])
    with minivit.no_grad():
        assert not minivit.is_grad_enabled()
        y = (x * 2.0).exp().sum()
        with minivit.enable_grad():
            z = x * 2.0
    assert minivit.is_grad_enabled()
    assert y.creator is None and not y.requires_grad
    assert z.creator is not None and z.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_no_grad_decorator_and_exceptions_restore_the_mode():
    x = leaf([1.0, 2.0])

    @minivit.no_grad()
    def f(t):
        assert not minivit.is_grad_enabled()
        return t * t

    y = f(x)
    assert y.creator is None and not y.requires_grad and minivit.is_grad_enabled()
    assert f(x).creator is None  # the decorator works more than once
    with pytest.raises(ZeroDivisionError):
        with minivit.no_grad():
            1 / 0
    assert minivit.is_grad_enabled()


def test_no_grad_keeps_nothing_alive():
    x = leaf(np.ones(4))
    with minivit.no_grad():
        y = x.exp()
    assert y.creator is None
    ref = weakref.ref(y)
    del y
    assert ref() is None


def test_activations_that_no_backward_saved_are_freed_in_the_forward():
    # the graph links ops by Edges (op, output index, shape, dtype), not by the input Tensors:
    # an array that no op saved for its backward dies when the forward code drops it
    x = leaf(np.arange(6.0).reshape(2, 3))
    h = x * 2.0                                # h's array: needed by no backward below
    alive = weakref.ref(h.data)
    out = (h + 1.0).reshape(3, 2)              # add and reshape save no arrays
    edge = out.creator.inputs[0]
    assert edge.creator is not None and edge.shape == (2, 3) and edge.dtype == np.float64
    assert "output 0 of 'add'" in repr(edge)
    del h
    gc.collect()
    assert alive() is None, "the graph kept an unsaved activation alive"
    w = leaf(np.ones((3, 2)))
    ((out * w).sum() + (out * out).sum()).backward()   # out used twice: gradients add up
    want = 2.0 * (1.0 + 2.0 * (2.0 * np.arange(6.0) + 1.0))
    np.testing.assert_allclose(x.grad.numpy().ravel(), want)
    np.testing.assert_allclose(w.grad.numpy().ravel(), 2.0 * np.arange(6.0) + 1.0)


def test_leaves_that_require_grad_stay_in_the_graph_constants_do_not():
    x = leaf([1.0, 2.0])
    c = minivit.tensor([3.0, 4.0], dtype=np.float64)
    y = x * c
    fx, fc = y.creator.inputs
    assert fx is x                              # its .grad is filled in
    assert fc is not c and not fc.requires_grad and fc.creator is None
    assert "a constant" in repr(fc)


# --- memory: the graph dies with the loss -----------------------------------------------------

def _live(kind):
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


def _build(x, w):
    h = (x @ w).relu()
    h = minivit.cat([h, h * 2.0], axis=1)
    return minivit.log_softmax(h, axis=1)[:, :2].mean() + (w * w).sum()


@pytest.mark.parametrize("call_backward", [True, False])
def test_no_live_tensors_or_functions_after_the_loss_is_dropped(call_backward):
    x = minivit.tensor(np.random.default_rng(0).standard_normal((4, 3)), dtype=np.float32)
    w = leaf(np.random.default_rng(1).standard_normal((3, 5)), dtype=np.float32)
    gc.collect()
    tensors, functions = _live(Tensor), _live(Function)
    loss = _build(x, w)
    fns = []
    stack = [loss.creator]
    while stack:  # every Function of the graph, by weak reference
        fn = stack.pop()
        fns.append(weakref.ref(fn))
        stack.extend(t.creator for t in fn.inputs if t.creator is not None)
    assert len(fns) > 8 and _live(Function) > functions
    if call_backward:
        loss.backward()
    gc.disable()
    try:
        del loss, stack, fn
        assert all(f() is None for f in fns), "no reference cycles: refcounting frees the graph"
    finally:
        gc.enable()
    gc.collect()
    assert _live(Function) == functions
    assert _live(Tensor) == tensors + (1 if call_backward else 0)  # + w.grad


# --- the dtype policy -------------------------------------------------------------------------

def test_float32_stays_float32_with_python_scalars(device):
    x = minivit.tensor(np.array([0.5, 1.5, 2.0], np.float32), device=device, requires_grad=True)
    outs = {
        "x*2.0": x * 2.0, "2.0*x": 2.0 * x, "2.0-x": 2.0 - x, "x/3": x / 3, "3/x": 3 / x,
        "x+1": x + 1, "x**2": x ** 2, "x**0.5": x ** 0.5, "2.0**x": 2.0 ** x,
        "x**np.float64": x ** np.float64(2.0), "x*np.float64": x * np.float64(2.0),
        "gelu": minivit.gelu(x), "gelu_tanh": minivit.gelu(x, approximate="tanh"),
        "softmax": minivit.softmax(x), "log_softmax": minivit.log_softmax(x),
        "mean": x.mean(), "var": x.var(), "std": x.std(), "sigmoid": x.sigmoid(),
        "erf": minivit.erf(x), "clip": x.clip(0.7, 1.2), "where": minivit.where(x > 1, x, 0.0),
        "maximum": minivit.maximum(x, 1.0), "logsumexp": x.logsumexp(),
        "pad": minivit.pad(x, 1, value=0.5), "matmul": x @ x,
    }
    for name, y in outs.items():
        assert y.dtype == np.float32, f"{name} gave {y.dtype}"
        x.grad = None
        y.sum().backward()
        assert x.grad.dtype == np.float32, f"grad of {name} is {x.grad.dtype}"


def test_float_tensor_with_integer_or_bool_tensor_stays_float():
    x = minivit.tensor(np.array([0.5, 1.5], np.float32), requires_grad=True)
    i = minivit.tensor(np.array([2, 3]))                 # int64
    m = minivit.tensor(np.array([True, False]))
    for y in (x * i, i * x, x + i, x / i, x * m, minivit.where(m, x, i)):
        assert y.dtype == np.float32
    (x * i).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad.numpy(), [2, 3])


def test_integer_tensor_with_python_float_is_not_truncated():
    i = minivit.tensor(np.array([1, 2, 3]))
    y = i * 0.5
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.numpy(), [0.5, 1.0, 1.5])
    np.testing.assert_array_equal((i + 0.25).numpy(), [1.25, 2.25, 3.25])
    assert (i + 1).dtype == np.int64  # integers with integers stay integers


def test_python_floats_make_float32_and_arrays_keep_their_dtype():
    assert minivit.tensor([1.0, 2.0]).dtype == np.float32
    assert minivit.tensor(2.5).dtype == np.float32
    assert minivit.tensor([1, 2]).dtype == np.int64
    assert minivit.tensor(np.ones(2)).dtype == np.float64
    assert minivit.tensor(np.float64(1.0)).dtype == np.float64
    assert minivit.zeros(2, 3).dtype == np.float32 and minivit.randn(2).dtype == np.float32
    x = minivit.tensor(np.ones(2, np.float32), requires_grad=True)
    y = x.double()
    assert y.dtype == np.float64
    (y * 2.0).sum().backward()
    assert x.grad.dtype == np.float32  # the cast's gradient is cast back


# --- the engine checks what a backward returns ------------------------------------------------

class WrongShape(Function):
    def forward(ctx, x):
        return x * 2

    def backward(ctx, g):
        return g[..., :1]


class WrongDtype(Function):
    def forward(ctx, x):
        return x * 2

    def backward(ctx, g):
        return (g * 2).astype("float32")


class ScalarGrad(Function):
    name = "scalar_grad"

    def forward(ctx, x):
        return x * 2

    def backward(ctx, g):
        return g.sum()


class TooMany(Function):
    def forward(ctx, x):
        return x * 2

    def backward(ctx, g):
        return g, g


def test_engine_rejects_a_wrong_shaped_gradient():
    x = leaf(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match=r"op 'wrongshape' returned a gradient of shape "
                                           r"\(2, 1\) for an input of shape \(2, 3\)"):
        WrongShape.apply(x).sum().backward()
    for shape in [(1,), (3,), (2, 1)]:
        with pytest.raises(RuntimeError, match=r"op 'scalar_grad' returned a gradient of shape "
                                               r"\(\) for an input of shape"):
            ScalarGrad.apply(leaf(np.ones(shape))).sum().backward()


def test_engine_rejects_a_wrong_dtype_gradient():
    x = leaf(np.ones(3))
    with pytest.raises(RuntimeError, match=r"op 'wrongdtype' returned a float32 gradient for a "
                                           r"float64 input"):
        WrongDtype.apply(x).sum().backward()


def test_engine_rejects_a_wrong_number_of_gradients():
    with pytest.raises(RuntimeError, match=r"op 'toomany' returned 2 gradients for 1 inputs"):
        TooMany.apply(leaf(np.ones(3))).sum().backward()


def test_sum_to_reduces_broadcast_dimensions():
    g = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(sum_to(g, (3, 1)), g.sum(axis=(0, 2))[:, None])
    np.testing.assert_array_equal(sum_to(g, ()), g.sum())
    assert sum_to(g, (2, 3, 4)) is g
    with pytest.raises(ValueError):
        sum_to(np.ones(3), (1, 3))


def test_custom_function_with_needs_input_grad():
    class Scale(Function):
        def forward(ctx, x, y):
            ctx.save_for_backward(y)
            return x * y

        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            assert ctx.needs_input_grad == (True, False)
            return g * y, None

    x = leaf([1.0, 2.0])
    Scale.apply(x, minivit.tensor(np.array([5.0, 6.0]))).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [5, 6])
    assert math.isclose(Scale.apply(x, 2.0).sum().item(), 6.0)


def test_forward_sees_needs_input_grad():
    """As PyTorch's ctx.needs_input_grad: set before forward, so a body can skip work only
    backward needs; all False when nothing is recorded (no_grad, or no input needs grad)."""
    seen = []

    class Probe(Function):
        def forward(ctx, a, b):
            seen.append(ctx.needs_input_grad)
            return a * b

        def backward(ctx, g):
            return g, g

    a = minivit.tensor([1.0, 2.0], requires_grad=True)
    b = minivit.tensor([3.0, 4.0])
    Probe.apply(a, b)
    Probe.apply(b, b)
    with minivit.no_grad():
        Probe.apply(a, b)
    assert seen == [(True, False), (False, False), (False, False)]
