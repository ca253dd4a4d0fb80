"""Ops that move elements: gradients through the harness (their backward moves the gradient
back, scatter-adding where an index repeats), forwards against NumPy, the method forms."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minivit
from harness import arrays, check_grad, shapes

SMALL = dict(max_dims=3, max_side=4)


def _same(y, expected):
    assert y.shape == np.shape(expected), (y.shape, np.shape(expected))
    np.testing.assert_array_equal(y.numpy(), expected)


def _grad_and_forward(fn, ref, x, device):
    """Forward equals the NumPy reference exactly (in float32 too); gradient passes the harness."""
    for dtype in (np.float32, np.float64):
        y = fn(minivit.tensor(x.astype(dtype), device=device))
        assert y.dtype == dtype
        _same(y, ref(x.astype(dtype)))
    check_grad(fn, x, device=device)


# --- reshape family ---------------------------------------------------------------------------

@given(data=st.data())
def test_reshape(data, device):
    shape = data.draw(shapes(**SMALL))
    n = int(np.prod(shape))
    target = data.draw(st.sampled_from([(n,), (-1,), shape[::-1], (1, n, 1), (n, -1)]))
    x = data.draw(arrays(shape))
    _grad_and_forward(lambda t: t.reshape(target), lambda a: a.reshape(target), x, device)
    _grad_and_forward(lambda t: minivit.reshape(t, *target), lambda a: a.reshape(target), x,
                      device)


@given(data=st.data())
def test_permute_and_transpose(data, device):
    shape = data.draw(shapes(min_dims=1, **SMALL))
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    x = data.draw(arrays(shape))
    _grad_and_forward(lambda t: t.permute(*perm), lambda a: a.transpose(perm), x, device)
    _grad_and_forward(lambda t: minivit.permute(t, perm), lambda a: a.transpose(perm), x, device)
    i, j = data.draw(st.integers(-len(shape), len(shape) - 1)), data.draw(
        st.integers(-len(shape), len(shape) - 1))
    _grad_and_forward(lambda t: t.transpose(i, j), lambda a: np.swapaxes(a, i, j), x, device)
    _grad_and_forward(lambda t: minivit.swapaxes(t, i, j), lambda a: np.swapaxes(a, i, j), x,
                      device)
    _grad_and_forward(lambda t: t.T, lambda a: a.T, x, device)


def test_transpose_methods(device):
    x = np.arange(24.0).reshape(2, 3, 4)
    t = minivit.tensor(x, device=device)
    _same(t.transpose(0, 1), x.transpose(1, 0, 2))
    _same(minivit.transpose(t, -1, 0), np.swapaxes(x, -1, 0))
    _same(t.T, x.T)
    _same(t.mT, np.swapaxes(x, -1, -2))
    _same(t.swapaxes(1, 2), np.swapaxes(x, 1, 2))
    _same(t.view(6, 4), x.reshape(6, 4))
    check_grad(lambda t: t.mT, x, device=device)


@given(data=st.data())
def test_flatten_squeeze_unsqueeze(data, device):
    shape = data.draw(shapes(min_dims=1, max_dims=4, max_side=3))
    x = data.draw(arrays(shape))
    nd = len(shape)
    s = data.draw(st.integers(0, nd - 1))
    e = data.draw(st.integers(s, nd - 1))
    flat = shape[:s] + (int(np.prod(shape[s:e + 1])),) + shape[e + 1:]
    _grad_and_forward(lambda t: t.flatten(s, e), lambda a: a.reshape(flat), x, device)
    _grad_and_forward(lambda t: minivit.flatten(t), lambda a: a.reshape(-1), x, device)
    _grad_and_forward(lambda t: t.squeeze(), np.squeeze, x, device)
    ones = tuple(i for i, n in enumerate(shape) if n == 1)
    if ones:
        _grad_and_forward(lambda t: t.squeeze(dim=ones[0]), lambda a: np.squeeze(a, ones[0]),
                          x, device)
        _grad_and_forward(lambda t: minivit.squeeze(t, ones), lambda a: np.squeeze(a, ones),
                          x, device)
    a = data.draw(st.integers(-nd - 1, nd))
    _grad_and_forward(lambda t: t.unsqueeze(a), lambda v: np.expand_dims(v, a), x, device)


@given(data=st.data())
def test_broadcast_to_and_expand(data, device):
    shape = data.draw(shapes(**SMALL))
    target = data.draw(hnp.broadcastable_shapes(shape, max_dims=4, max_side=3).map(
        lambda s: np.broadcast_shapes(s, shape)))
    x = data.draw(arrays(shape))
    _grad_and_forward(lambda t: t.broadcast_to(target), lambda a: np.broadcast_to(a, target),
                      x, device)
    _grad_and_forward(lambda t: minivit.broadcast_to(t, target),
                      lambda a: np.broadcast_to(a, target), x, device)
    # PyTorch's expand: -1 keeps a dimension
    keep = tuple(-1 if i >= len(target) - len(shape) and shape[i - len(target) + len(shape)]
                 == target[i] else target[i] for i in range(len(target)))
    _grad_and_forward(lambda t: t.expand(*keep), lambda a: np.broadcast_to(a, target), x, device)
    _grad_and_forward(lambda t: t.expand(keep), lambda a: np.broadcast_to(a, target), x, device)
    _grad_and_forward(lambda t: minivit.expand(t, target), lambda a: np.broadcast_to(a, target),
                      x, device)


# --- indexing ---------------------------------------------------------------------------------

@given(data=st.data())
def test_getitem_basic(data, device):
    shape = data.draw(shapes(**SMALL))
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    x = data.draw(arrays(shape))
    _grad_and_forward(lambda t: t[index], lambda a: a[index], x, device)


@given(data=st.data())
def test_getitem_integer_arrays_with_repeats(data, device):
    shape = data.draw(shapes(min_dims=1, **SMALL))
    index = data.draw(hnp.integer_array_indices(shape, result_shape=hnp.array_shapes(
        min_dims=1, max_dims=2, max_side=5)))
    x = data.draw(arrays(shape))
    _grad_and_forward(lambda t: t[index], lambda a: a[index], x, device)


@given(data=st.data())
def test_getitem_boolean_mask(data, device):
    shape = data.draw(shapes(min_dims=1, **SMALL))
    k = data.draw(st.integers(1, len(shape)))
    mask = data.draw(hnp.arrays(bool, shape[:k]))
    x = data.draw(arrays(shape))
    _grad_and_forward(lambda t: t[mask], lambda a: a[mask], x, device)
    _grad_and_forward(lambda t: t[minivit.tensor(mask)], lambda a: a[mask], x, device)


def test_getitem_repeats_accumulate(device):
    """``x[[0, 0, 2]]``: the gradient of row 0 is the sum of both picks (scatter-add)."""
    x = minivit.tensor(np.arange(12.0).reshape(4, 3), device=device, requires_grad=True)
    up = minivit.tensor(np.arange(9.0).reshape(3, 3), device=device)
    (x[[0, 0, 2]] * up).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[3, 5, 7], [0, 0, 0], [6, 7, 8], [0, 0, 0]])
    x.grad = None
    idx = np.array([[1, 1], [1, 3]])
    x[idx, 1:].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy()[:, 1:], [[0, 0], [3, 3], [0, 0], [1, 1]])


def test_getitem_mixed_forms(device):
    x = np.arange(60.0).reshape(3, 4, 5)
    t = minivit.tensor(x, device=device)
    mask = x[0, :, 0] > 6
    cases = [(1,), (-1, 2), (slice(None), [0, 2]), (Ellipsis, 1), ([2, 0], slice(1, 3), [4, 4]),
             (slice(None), mask), (None, 1, slice(None, None, -2)), ([[0], [2]], [1, 3]),
             (np.array(1), 2)]
    for index in cases:
        _same(t[index], x[index])
        check_grad(lambda t: t[index], x, device=device)
    _same(t[minivit.tensor([0, 2])], x[[0, 2]])


# --- joining and splitting ----------------------------------------------------------------------

@given(data=st.data())
def test_concatenate_and_stack(data, device):
    shape = data.draw(shapes(min_dims=1, **SMALL))
    nd = len(shape)
    axis = data.draw(st.integers(-nd, nd - 1))
    n = data.draw(st.integers(1, 3))
    sizes = [data.draw(st.integers(1, 3)) for _ in range(n)]
    parts = [data.draw(arrays(shape[:axis % nd] + (s,) + shape[axis % nd + 1:])) for s in sizes]
    cat_ref = np.concatenate(parts, axis=axis)
    for fn in (minivit.concatenate, minivit.cat):
        _same(fn([minivit.tensor(p, device=device) for p in parts], axis=axis), cat_ref)
    check_grad(lambda *ts: minivit.cat(list(ts), axis=axis), *parts, device=device)
    same = [data.draw(arrays(shape)) for _ in range(n)]
    saxis = data.draw(st.integers(-nd - 1, nd))
    _same(minivit.stack([minivit.tensor(p, device=device) for p in same], axis=saxis),
          np.stack(same, axis=saxis))
    check_grad(lambda *ts: minivit.stack(list(ts), axis=saxis), *same, device=device)


@given(data=st.data())
def test_split_and_chunk(data, device):
    shape = data.draw(shapes(min_dims=1, max_dims=3, max_side=6))
    nd = len(shape)
    axis = data.draw(st.integers(-nd, nd - 1))
    n = shape[axis]
    x = data.draw(arrays(shape))
    t = minivit.tensor(x, device=device)
    sections = data.draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=3)))
    chunks = data.draw(st.integers(1, n + 1))
    for arg in (sections, cuts):
        got = minivit.split(t, arg, axis=axis)
        want = np.split(x, arg, axis=axis)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w)
        check_grad(lambda t: tuple(minivit.split(t, arg, axis=axis)), x, device=device)
    pieces = minivit.chunk(t, chunks, axis=axis)
    size = -(-n // chunks)
    assert [p.shape[axis] for p in pieces] == [min(size, n - i) for i in range(0, n, size)]
    _same(minivit.cat(pieces, axis=axis), x)
    check_grad(lambda t: tuple(minivit.chunk(t, chunks, axis=axis)), x, device=device)


def test_split_unused_pieces_get_zero_gradient(device):
    x = minivit.tensor(np.arange(6.0), device=device, requires_grad=True)
    a, b, c = minivit.split(x, 3)
    (b * 2).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 0, 2, 2, 0, 0])


def test_chunk_like_pytorch():
    t = minivit.tensor(np.arange(6.0))
    assert [p.shape[0] for p in minivit.chunk(t, 4)] == [2, 2, 2]  # as torch.chunk
    assert [p.shape[0] for p in minivit.chunk(minivit.tensor(np.arange(5.0)), 3)] == [2, 2, 1]


# --- pad and roll ------------------------------------------------------------------------------

@given(data=st.data())
def test_pad(data, device):
    shape = data.draw(shapes(min_dims=1, **SMALL))
    width = tuple((data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2))) for _ in shape)
    value = data.draw(st.sampled_from([0.0, -1.5]))
    x = data.draw(arrays(shape))
    _grad_and_forward(lambda t: minivit.pad(t, width, value=value),
                      lambda a: np.pad(a, width, constant_values=value), x, device)


@pytest.mark.parametrize("width", [1, (1, 2), ((1, 2),), [(0, 1), (2, 0)], ((1, 1), (0, 0))])
def test_pad_width_forms_as_numpy(width, device):
    """pad_width as NumPy reads it: an int, one (before, after) pair for every axis, or a pair
    per axis."""
    x = np.arange(6.0).reshape(2, 3)
    _same(minivit.pad(minivit.tensor(x, device=device), width), np.pad(x, width))
    v = np.arange(3.0)
    if np.ndim(width) < 2 or len(width) == 1:
        _same(minivit.pad(minivit.tensor(v, device=device), width), np.pad(v, width))


@given(data=st.data())
def test_roll(data, device):
    shape = data.draw(shapes(min_dims=1, **SMALL))
    nd = len(shape)
    axis = data.draw(st.one_of(st.none(), st.integers(-nd, nd - 1), st.lists(
        st.integers(0, nd - 1), min_size=1, max_size=nd, unique=True).map(tuple)))
    if isinstance(axis, tuple):
        shift = tuple(data.draw(st.integers(-5, 5)) for _ in axis)
    else:
        shift = data.draw(st.integers(-5, 5))
    x = data.draw(arrays(shape))
    _grad_and_forward(lambda t: minivit.roll(t, shift, axis=axis),
                      lambda a: np.roll(a, shift, axis=axis), x, device)


# --- bad arguments name the op -------------------------------------------------------------------

def test_shape_errors():
    t = minivit.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"cannot reshape a tensor of shape \(2, 3\) "
                                         r"\(6 elements\) into shape \(4, 2\)"):
        t.reshape(4, 2)
    with pytest.raises(ValueError, match=r"permute: \(0, 0\) is not a permutation"):
        t.permute(0, 0)
    with pytest.raises(ValueError, match=r"permute: .*out of range|not a permutation"):
        t.permute(0, 5)
    with pytest.raises(ValueError, match=r"out of range"):
        t.transpose(0, 3)
    with pytest.raises(ValueError, match=r"out of range"):
        t.unsqueeze(4)
    with pytest.raises(ValueError, match=r"cannot broadcast shape \(2, 3\) to \(4, 3\)"):
        t.broadcast_to((4, 3))
    with pytest.raises(ValueError, match=r"squeeze: axis 0 of shape \(2, 3\) has size 2"):
        t.squeeze(0)
    with pytest.raises(ValueError, match=r"split: cannot split axis 1 of size 3 into 2"):
        minivit.split(t, 2, axis=1)
    with pytest.raises(ValueError, match=r"pad: pad_width"):
        minivit.pad(t, ((1, 1), (1, 1), (1, 1)))
    with pytest.raises(IndexError, match=r"getitem: .*shape \(2, 3\)"):
        t[5]
    with pytest.raises(ValueError, match=r"concatenate: need at least one tensor"):
        minivit.cat([])
    with pytest.raises(ValueError, match=r"expand: -1 .* new leading dimension"):
        t.expand(-1, 2, 3)
    with pytest.raises(ValueError, match=r"chunk: chunks must be a positive integer, got 0"):
        minivit.chunk(t, 0)
