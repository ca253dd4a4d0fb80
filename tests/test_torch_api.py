"""PyTorch-shaped Tensor methods and functions: size(), dim(), clone(), t(), masked_fill,
repeat, norm, max/min over a dim with indices, both spellings of axis/dim, grad-mode switches."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minivit
from harness import arrays, check_grad, distinct_arrays, shapes

SMALL = {"max_dims": 3, "max_side": 4}


# --- gradients (float64 finite differences) ---------------------------------------------------

@given(data=st.data())
def test_clone_grad(data, device):
    x = data.draw(arrays(data.draw(shapes(**SMALL))))
    check_grad(lambda t: minivit.clone(t) * 2.0, x, device=device)


@given(data=st.data())
def test_repeat_grad(data, device):
    shape = data.draw(shapes(**SMALL))
    extra = data.draw(st.integers(0, 2))
    reps = tuple(data.draw(st.lists(st.integers(1, 3), min_size=len(shape) + extra,
                                    max_size=len(shape) + extra)))
    x = data.draw(arrays(shape))
    np.testing.assert_array_equal(minivit.tensor(x).repeat(*reps).numpy(), np.tile(x, reps))
    check_grad(lambda t: t.repeat(*reps), x, device=device)


@given(data=st.data())
def test_masked_fill_grad(data, device):
    shape = data.draw(shapes(min_dims=1, **SMALL))
    x = data.draw(arrays(shape))
    mask = data.draw(st.lists(st.booleans(), min_size=shape[-1], max_size=shape[-1]))
    mask = np.array(mask)                       # broadcast along the last dimension
    y = minivit.tensor(x).masked_fill(minivit.tensor(mask), -7.0)
    np.testing.assert_array_equal(y.numpy(), np.where(mask, -7.0, x))
    check_grad(lambda t: t.masked_fill(mask, float("-inf")).clip(-5.0, None), x, device=device)


@pytest.mark.parametrize("p", [1, 2, 3, float("inf"), float("-inf")])
@given(data=st.data())
def test_norm_grad(p, data, device):
    shape = data.draw(shapes(min_dims=1, **SMALL))
    dim = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    keepdim = data.draw(st.booleans())
    x = data.draw(distinct_arrays(shape, lo=0.2, hi=3.0, gap=0.05)) \
        * data.draw(st.sampled_from([1.0, -1.0]))    # no zeros (|x| kink), no |x| ties (inf)
    want = (np.linalg.norm(x.reshape(-1), ord=p) if dim is None
            else np.linalg.norm(x, ord=p, axis=dim, keepdims=keepdim))
    got = minivit.tensor(x, dtype=np.float64).norm(p, dim=dim, keepdim=keepdim)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    check_grad(lambda t: minivit.norm(t, p, dim, keepdim), x, device=device)


@pytest.mark.parametrize("op", ["max", "min"])
@given(data=st.data())
def test_max_min_dim_values_indices(op, data, device):
    shape = data.draw(shapes(min_dims=1, **SMALL))
    dim = data.draw(st.integers(-len(shape), len(shape) - 1))
    keepdim = data.draw(st.booleans())
    x = data.draw(distinct_arrays(shape))
    values, indices = getattr(minivit.tensor(x, dtype=np.float64), op)(dim, keepdim)
    np.testing.assert_array_equal(values.numpy(), getattr(x, op)(axis=dim, keepdims=keepdim))
    arg = getattr(x, "arg" + op)(axis=dim, keepdims=keepdim)
    np.testing.assert_array_equal(indices.numpy(), arg)
    assert indices.dtype.kind == "i" and not indices.requires_grad
    check_grad(lambda t: getattr(minivit, op)(t, dim=dim, keepdim=keepdim).values, x,
               device=device)


@given(data=st.data())
def test_t_grad(data, device):
    x = data.draw(arrays(data.draw(shapes(max_dims=2, max_side=4))))
    np.testing.assert_array_equal(minivit.tensor(x).t().numpy(), x.T)
    check_grad(lambda t: t.t(), x, device=device)


# --- forward facts and spellings ------------------------------------------------------------------

def test_size_dim_numel_and_clone_owns_memory():
    x = minivit.randn(2, 3, 4)
    assert x.size() == (2, 3, 4) and x.size(1) == 3 and x.size(-1) == 4
    assert x.dim() == 3 and x.ndim == 3 and x.numel() == 24
    with pytest.raises(IndexError, match=r"size: dimension 3 is out of range .* 3 dimensions"):
        x.size(3)
    c = x.clone()
    c.data[0, 0, 0] = 100.0
    assert x.numpy()[0, 0, 0] != 100.0


def test_max_min_spellings():
    x = minivit.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
    v, i = x.max(1)                              # positional dim, as torch.max(x, 1)
    assert v.tolist() == [5.0, 7.0] and i.tolist() == [1, 0]
    out = minivit.min(x, dim=0, keepdim=True)
    assert type(out).__name__ == "ValuesIndices" and out.indices.tolist() == [[0, 1, 0]]
    assert x.max().item() == 7.0                 # no dim: the value, as torch
    assert x.max(axis=1).tolist() == [5.0, 7.0]  # NumPy's axis: the values only
    assert x.argmax(dim=1).tolist() == [1, 0] and x.argmin(1, keepdim=True).shape == (2, 1)
    with pytest.raises(TypeError, match="max: got axis=0 and dim=1; give one of them"):
        minivit.max(x, dim=1, axis=0)
    with pytest.raises(TypeError, match=r"dim must be one integer .* got \(0, 1\)"):
        x.max(dim=(0, 1))


def test_functions_take_dim_and_keepdim():
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    t = minivit.tensor(x)
    np.testing.assert_allclose(minivit.sum(t, dim=1).numpy(), x.sum(1), rtol=1e-6)
    np.testing.assert_allclose(minivit.sum(t, dim=1, keepdim=True).numpy(),
                               x.sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(minivit.mean(t, dim=0).numpy(), x.mean(0), rtol=1e-6)
    e = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(minivit.softmax(t, dim=1).numpy(), e / e.sum(1, keepdims=True),
                               rtol=1e-6)
    np.testing.assert_allclose(minivit.log_softmax(t, dim=1).numpy(),
                               np.log(e / e.sum(1, keepdims=True)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(minivit.var(t, dim=1, correction=1).numpy(), x.var(1, ddof=1),
                               rtol=1e-5)
    assert minivit.cat([t, t], dim=1).shape == (2, 6)
    assert minivit.stack([t, t], dim=1).shape == (2, 2, 3)
    assert minivit.unsqueeze(t, dim=0).shape == (1, 2, 3) and t.unsqueeze(dim=2).shape == (2, 3, 1)
    assert [c.shape for c in minivit.chunk(t, 3, dim=1)] == [(2, 1)] * 3
    assert [c.shape for c in minivit.split(t, 3, dim=1)] == [(2, 1)] * 3
    assert minivit.roll(t, 1, dims=1).tolist() == np.roll(x, 1, axis=1).tolist()
    with pytest.raises(TypeError, match="sum: got axis=0 and dim=1; give one of them"):
        minivit.sum(t, 0, dim=1)


def test_t_repeat_masked_fill_bad_input():
    with pytest.raises(ValueError, match=r"t\(\) expects .* at most 2 dimensions, got shape \(2, 2, 2\)"):
        minivit.zeros(2, 2, 2).t()
    with pytest.raises(ValueError, match=r"repeat: expected at least 2 non-negative .* got \(2,\)"):
        minivit.zeros(2, 2).repeat(2)
    with pytest.raises(ValueError, match=r"mask of shape \(3,\) does not broadcast .* \(2, 2\)"):
        minivit.zeros(2, 2).masked_fill(np.array([True, False, True]), 0.0)
    with pytest.raises(TypeError, match="masked_fill: the mask must be boolean, got dtype int64"):
        minivit.zeros(2, 2).masked_fill(np.array([1, 0]), 0.0)
    with pytest.raises(ValueError, match="norm: p must be a positive number"):
        minivit.zeros(2).norm(0)


def test_set_grad_enabled_and_inference_mode():
    w = minivit.ones(2, requires_grad=True)
    with minivit.set_grad_enabled(False):
        assert not (w * 2).requires_grad
    assert (w * 2).requires_grad
    minivit.set_grad_enabled(False)                # a plain call switches until told otherwise
    try:
        assert not minivit.is_grad_enabled()
    finally:
        minivit.set_grad_enabled(True)
    assert minivit.is_grad_enabled()

    @minivit.set_grad_enabled(False)
    def infer(x):
        return x * 2

    assert minivit.is_grad_enabled() and not infer(w).requires_grad
    with minivit.inference_mode():
        assert not (w * 2).requires_grad
    with minivit.inference_mode(False):
        assert (w * 2).requires_grad
