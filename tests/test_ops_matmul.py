"""matmul (batched, broadcast batch dims, NumPy's 1-D rules) and einsum: gradients through the
harness, forwards against NumPy."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minivit
from harness import arrays, check_grad

# every 1-D case NumPy defines, plain and batched, and broadcasting batch dimensions
MATMUL_SHAPES = [
    ((3,), (3,)),             # vector . vector -> scalar
    ((3,), (3, 4)),           # row vector @ matrix
    ((2, 3), (3,)),           # matrix @ column vector
    ((2, 3), (3, 4)),
    ((3,), (5, 3, 4)),        # vector @ batch of matrices
    ((5, 2, 3), (3,)),        # batch of matrices @ vector
    ((5, 2, 3), (5, 3, 4)),   # batched
    ((1, 2, 3), (5, 3, 4)),   # broadcast batch dim
    ((2, 3), (5, 3, 4)),      # missing batch dim
    ((5, 1, 2, 3), (4, 3, 2)),  # batch dims (5, 1) and (4,) -> (5, 4)
    ((1, 1), (1, 1)),
]


@pytest.mark.parametrize("sa, sb", MATMUL_SHAPES)
def test_matmul_cases(sa, sb, device):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    for dtype in (np.float32, np.float64):
        ta = minivit.tensor(a.astype(dtype), device=device)
        tb = minivit.tensor(b.astype(dtype), device=device)
        for y in (minivit.matmul(ta, tb), ta @ tb, ta.matmul(tb)):
            assert y.dtype == dtype and y.shape == np.matmul(a, b).shape
            np.testing.assert_allclose(y.numpy(), np.matmul(a, b).astype(dtype),
                                       rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    check_grad(lambda x, y: x @ y, a, b, device=device)


def test_matmul_with_ndarray_operand():
    a = np.arange(6.0).reshape(2, 3)
    t = minivit.tensor(np.ones((3, 2)), dtype=np.float64, requires_grad=True)
    np.testing.assert_allclose((a @ t).numpy(), a @ np.ones((3, 2)))  # __rmatmul__
    (a @ t).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), a.sum(axis=0)[:, None] * np.ones((3, 2)))


@given(data=st.data())
def test_matmul_grad_property(data, device):
    """Shapes drawn by NumPy's own matmul signature: optional 1-D operands, broadcast batches."""
    shapes = data.draw(hnp.mutually_broadcastable_shapes(
        signature="(m?,n),(n,p?)->(m?,p?)", max_dims=2, max_side=3))
    sa, sb = shapes.input_shapes
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    check_grad(minivit.matmul, a, b, device=device)


def test_matmul_only_one_side_needs_grad():
    a = minivit.tensor(np.ones((2, 3)), dtype=np.float64, requires_grad=True)
    b = minivit.tensor(np.ones((3, 4)), dtype=np.float64)
    (a @ b).sum().backward()
    assert b.grad is None
    np.testing.assert_allclose(a.grad.numpy(), np.full((2, 3), 4.0))


# --- einsum -----------------------------------------------------------------------------------

EINSUM = [
    ("ij,jk->ik", [(2, 3), (3, 4)]),
    ("ij,jk", [(2, 3), (3, 4)]),                    # implicit: output "ik"
    ("ba", [(2, 3)]),                               # implicit: sorted letters -> transpose
    ("ij->ji", [(2, 3)]),
    ("ij->", [(2, 3)]),
    ("ij->j", [(2, 3)]),
    ("i,j->ij", [(3,), (4,)]),                       # outer product
    ("i,i->", [(4,), (4,)]),                         # dot
    ("i,i", [(4,), (4,)]),                           # implicit dot -> scalar
    ("bij,bjk->bik", [(2, 2, 3), (2, 3, 4)]),
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),  # attention scores
    ("ijk,kl->il", [(2, 3, 4), (4, 5)]),             # j is summed inside operand 0 only
    ("ij,k->i", [(2, 3), (4,)]),                     # j only in 0, k only in 1: both summed
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),     # three operands
    ("...ij,...jk->...ik", [(2, 2, 3), (3, 4)]),    # ellipses of different lengths
    ("...ij,...jk", [(1, 2, 3), (4, 3, 5)]),        # implicit, broadcasting a size-1 dim
    ("...i,...i->...", [(2, 3, 4), (3, 4)]),
    ("i...->...", [(3, 2, 2)]),
    ("Ab,bC->AC", [(2, 3), (3, 4)]),                  # upper-case letters
    ("ij,ij->ij", [(2, 3), (2, 3)]),                 # Hadamard
]


@pytest.mark.parametrize("subscripts, shapes", EINSUM)
def test_einsum(subscripts, shapes, device):
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(s) for s in shapes]
    want = np.einsum(subscripts, *xs)
    for dtype in (np.float32, np.float64):
        got = minivit.einsum(subscripts, *[minivit.tensor(x.astype(dtype), device=device)
                                           for x in xs])
        assert got.dtype == dtype and got.shape == want.shape, (got.shape, want.shape)
        np.testing.assert_allclose(got.numpy(), want.astype(dtype),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    check_grad(lambda *ts: minivit.einsum(subscripts, *ts), *xs, device=device)


@pytest.mark.parametrize("subscripts", sorted({s for s, _ in EINSUM if "..." not in s}))
@given(data=st.data())
def test_einsum_grad_property(subscripts, data, device):
    """The table's subscripts with every letter's size drawn (1 included) and drawn values."""
    letters = sorted(set(subscripts) - set(",->"))
    size = {c: data.draw(st.integers(1, 3), label=c) for c in letters}
    terms = subscripts.split("->")[0].split(",")
    xs = [data.draw(arrays(tuple(size[c] for c in t))) for t in terms]
    np.testing.assert_allclose(minivit.einsum(subscripts, *map(minivit.tensor, xs)).numpy(),
                               np.einsum(subscripts, *xs), rtol=1e-12, atol=1e-12)
    check_grad(lambda *ts: minivit.einsum(subscripts, *ts), *xs, device=device)


def test_einsum_same_tensor_twice():
    """x used as both operands: the two gradients add up (d/dx sum x_i x_i = 2x)."""
    x = np.random.default_rng(2).standard_normal(4)
    t = minivit.tensor(x, dtype=np.float64, requires_grad=True)
    minivit.einsum("i,i->", t, t).backward()
    np.testing.assert_allclose(t.grad.numpy(), 2 * x)


@given(data=st.data())
def test_einsum_batched_matmul_property(data, device):
    b, m, n, p = (data.draw(st.integers(1, 3)) for _ in range(4))
    a = data.draw(arrays((b, m, n)))
    c = data.draw(arrays((n, p)))
    check_grad(lambda a, c: minivit.einsum("...mn,np->...pm", a, c), a, c, device=device)


def test_einsum_errors_name_the_problem():
    x = minivit.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"einsum: 2 operand subscripts for 1 tensors"):
        minivit.einsum("ij,jk->ik", x)
    with pytest.raises(ValueError, match=r"einsum: subscripts 'ijk' do not match an operand "
                                         r"of shape \(2, 3\)"):
        minivit.einsum("ijk->i", x)
    with pytest.raises(ValueError, match=r"repeated subscripts"):
        minivit.einsum("ii->i", minivit.tensor(np.ones((2, 2))))


def test_flop_counts():
    from minivit.autograd.flops import count_flops

    a = minivit.tensor(np.ones((4, 2, 3)))
    b = minivit.tensor(np.ones((1, 3, 5)))
    with count_flops() as c:
        a @ b
    assert c.total == 2 * 4 * 2 * 5 * 3
    # a broadcast '...' dim counts in full, whichever operand has the size-1 dim
    for x, y in ((a, b), (b.swapaxes(1, 2), a.swapaxes(1, 2))):
        with count_flops() as c:
            minivit.einsum("...ij,...jk", x, y)
        assert c.total == 2 * 4 * x.shape[1] * y.shape[2] * 3, c.total
