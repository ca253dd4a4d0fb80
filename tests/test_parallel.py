"""parallel.blockwise: blocked, multi-threaded results are bit-identical to the plain call."""
import numpy as np
import pytest

import minivit
from minivit.kernels import cpu_elementwise, cpu_linear, normal_cdf, parallel
from minivit.nn import functional as F

BIG = (3 * parallel.MIN_ELEMENTS) // 2 + 7  # above the threshold, not a multiple of a block


@pytest.fixture(params=[1, 2, 3], ids=lambda k: f"threads{k}")
def threads(request, monkeypatch):
    monkeypatch.setattr(parallel, "NUM_THREADS", request.param)
    monkeypatch.setattr(parallel, "_pool", None)
    yield request.param
    if parallel._pool is not None:
        parallel._pool.shutdown()


def _plain(monkeypatch, fn, *args):
    with monkeypatch.context() as m:
        m.setattr(parallel, "NUM_THREADS", 0)
        return fn(*args)


def test_elementwise_chain_bit_identical(threads):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, BIG), dtype=np.float32)

    def fn(a, b):
        return np.exp(-a * a) * b + a, a > b

    got = parallel.blockwise(fn, x, y)
    want = fn(x, y)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def test_rowwise_reduction_bit_identical(threads):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((BIG // 100, 100)).astype(np.float32)
    w = rng.standard_normal(100).astype(np.float32)

    def fn(a):  # row-wise: statistics over the last axis, weight from the closure
        return (a - a.mean(axis=-1, keepdims=True)) * w

    np.testing.assert_array_equal(parallel.blockwise(fn, x), fn(x))


def test_huge_rows_are_blocks_of_one_row(threads):
    x = np.random.default_rng(2).standard_normal((3, 2 * parallel.BLOCK_ELEMENTS + 5))
    np.testing.assert_array_equal(parallel.blockwise(np.tanh, x), np.tanh(x))


def test_small_or_non_numpy_inputs_take_the_plain_call(threads):
    calls = []

    def fn(a):
        calls.append(a)
        return a + 1

    small = np.ones(10, np.float32)
    parallel.blockwise(fn, small)
    assert calls == [small]  # the very array, not a block of it
    scalar = np.float32(2.0).reshape(())
    assert parallel.blockwise(fn, scalar) == 3.0


def test_errors_in_a_block_propagate(threads):
    def fn(a):
        if a.shape[0] > 1 and a[0] > BIG // 2:  # only in the second half: another thread
            raise ValueError("boom")
        return a

    with pytest.raises(ValueError, match="boom"):
        parallel.blockwise(fn, np.arange(BIG, dtype=np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_erf_blocked_equals_plain(threads, monkeypatch, dtype):
    x = (np.random.default_rng(3).standard_normal(BIG) * 3).astype(dtype).reshape(-1, 1)
    np.testing.assert_array_equal(normal_cdf.erf(x), _plain(monkeypatch, normal_cdf.erf, x))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_forward_backward_blocked_equals_plain(threads, monkeypatch, approximate):
    x0 = np.random.default_rng(4).standard_normal((BIG // 64, 64)).astype(np.float32) * 3
    g0 = np.random.default_rng(5).standard_normal(x0.shape).astype(np.float32)

    def run():
        x = minivit.tensor(x0, requires_grad=True)
        y = F.gelu(x, approximate=approximate)
        y.backward(minivit.tensor(g0))
        return y.numpy(), x.grad.numpy()

    for got, want in zip(run(), _plain(monkeypatch, run)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


def _forward_backward(fn, x0, *params):
    """Output and every gradient of fn(x, *params) for a fixed random upstream gradient."""
    x = minivit.tensor(x0, requires_grad=True)
    ps = [minivit.tensor(p, requires_grad=True) for p in params]
    y = fn(x, *ps)
    y.backward(minivit.tensor(np.random.default_rng(9).standard_normal(y.shape).astype(x0.dtype)))
    return [y.numpy(), x.grad.numpy()] + [p.grad.numpy() for p in ps]


def _assert_blocked_matches_plain(monkeypatch, fn, x0, *params):
    got = _forward_backward(fn, x0, *params)
    want = _plain(monkeypatch, _forward_backward, fn, x0, *params)
    # parameter gradients add block partial sums in another order: float32 sums over ~10^5
    # rows differ in the last digits (the blocked ones are the closer: test_sum_rows_...)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5)


def test_layer_norm_blocked_matches_plain(threads, monkeypatch):
    rng = np.random.default_rng(6)
    x0 = rng.standard_normal((BIG // 96 // 4, 4, 96)).astype(np.float32) * 2 + 1
    w0, b0 = rng.standard_normal((2, 96)).astype(np.float32)
    _assert_blocked_matches_plain(monkeypatch, lambda x, w, b: F.layer_norm(x, (96,), w, b),
                                  x0, w0, b0)


@pytest.mark.parametrize("shape", [(64, 8, 24, 24), (64 * 24 * 24, 8)], ids=["NCHW", "rows"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_blocked_matches_plain(threads, monkeypatch, training, shape):
    rng = np.random.default_rng(7)
    x0 = rng.standard_normal(shape).astype(np.float32) * 2 + 1
    assert x0.size > parallel.MIN_ELEMENTS
    w0, b0 = rng.standard_normal((2, 8)).astype(np.float32)
    rm, rv = np.full(8, 0.5, np.float32), np.full(8, 2.0, np.float32)
    _assert_blocked_matches_plain(
        monkeypatch, lambda x, w, b: F.batch_norm(x, rm.copy(), rv.copy(), w, b, training=training),
        x0, w0, b0)


def test_attention_blocked_matches_plain(threads, monkeypatch):
    rng = np.random.default_rng(8)
    q0, k0, v0 = rng.standard_normal((3, 16, 4, 65, 32)).astype(np.float32)
    bias0 = rng.standard_normal((4, 65, 65)).astype(np.float32)
    assert 16 * 4 * 65 * 65 > parallel.MIN_ELEMENTS

    def attention(q, k, v, b):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=b)

    _assert_blocked_matches_plain(monkeypatch, attention, q0, k0, v0, bias0)


def test_for_each_runs_every_item_once(threads):
    out = np.zeros(37, np.int64)

    def fn(i):
        out[i] += i + 1

    parallel.for_each(fn, range(37))
    np.testing.assert_array_equal(out, np.arange(1, 38))


@pytest.mark.parametrize("geometry", [
    dict(c=8, o=16, k=3, stride=2, padding=1, groups=1),     # im2col, col2im
    dict(c=8, o=16, k=3, stride=1, padding=1, groups=1),
    dict(c=8, o=8, k=3, stride=1, padding=1, groups=8),      # depthwise
    dict(c=8, o=16, k=3, stride=2, padding=1, groups=8),     # depthwise, multiplier 2
    dict(c=8, o=16, k=1, stride=1, padding=0, groups=1),     # pointwise (to_cnl / from_cnl)
], ids=["s2", "s1", "dw", "dw-k2-s2", "1x1"])
def test_conv_split_over_threads_is_bit_identical(threads, monkeypatch, geometry):
    """The conv's copies and loops split over channel blocks and threads: the same bits with
    any number of threads, and the same numbers as one block."""
    g = geometry
    from minivit.kernels import cpu_conv as conv_mod
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((5, g["c"], 9, 9), dtype=np.float32)
    w0 = rng.standard_normal((g["o"], g["c"] // g["groups"], g["k"], g["k"]), dtype=np.float32)
    b0 = rng.standard_normal(g["o"], dtype=np.float32)

    def run():
        x, w, b = (minivit.tensor(a, requires_grad=True) for a in (x0, w0, b0))
        y = F.conv2d(x, w, b, stride=g["stride"], padding=g["padding"], groups=g["groups"])
        (y * y).sum().backward()
        return [y.numpy(), x.grad.numpy(), w.grad.numpy(), b.grad.numpy()]

    whole = _plain(monkeypatch, run)                      # one block, one thread
    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 0)     # split even these small arrays
    monkeypatch.setattr(conv_mod, "CACHE_BLOCK", 64)     # into many blocks
    got, one_thread = run(), _plain(monkeypatch, run)
    for a, b, c in zip(got, one_thread, whole):
        np.testing.assert_array_equal(a, b)              # threads change nothing
        # other block sizes may sum the depthwise weight gradient in another order
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shapes, split", [
    (((8, 4, 64, 65), (8, 4, 65, 66)), True),    # 2^23 multiply-adds and more: split
    (((2048, 16, 32), (2048, 32, 16)), True),    # MaxViT's 16-token windows: small, but many
    (((6, 3, 40, 33), (6, 3, 33, 41)), False),   # under 2^23 in all: one call
    (((1, 400, 330), (1, 330, 410)), False),     # a stack of one
    (((2, 3, 40, 33), (3, 33, 41)), False),      # broadcast stacks: one call
    (((40, 33), (33, 41)), False),               # 2-D
], ids=["4d", "windows", "small", "one", "broadcast", "2d"])
def test_matmul_split_over_threads_is_bit_identical(threads, shapes, split, monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shapes[0], dtype=np.float32)
    b = rng.standard_normal(shapes[1], dtype=np.float32)
    b_t = np.swapaxes(rng.standard_normal(shapes[1][:-2] + shapes[1][:-3:-1],
                                          dtype=np.float32), -1, -2)  # a transposed view
    calls = []
    for_each = parallel.for_each
    monkeypatch.setattr(parallel, "for_each", lambda *a, **k: calls.append(1) or for_each(*a, **k))
    for rhs in (b, b_t):
        got = parallel.matmul(a, rhs)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, np.matmul(a, rhs))
    assert bool(calls) == (split and threads > 1)


def test_add_is_bit_identical_and_falls_back(threads):
    rng = np.random.default_rng(9)
    a, b = rng.standard_normal((2, BIG // 7, 7), dtype=np.float32)
    np.testing.assert_array_equal(parallel.add(a, b), a + b)
    # broadcasting, mixed dtypes, views and small arrays: the plain a + b
    for x, y in [(a, b[:1]), (a, b.astype(np.float64)), (a.T, b.T), (a[:3], b[:3])]:
        got = parallel.add(x, y)
        assert got.dtype == (x + y).dtype
        np.testing.assert_array_equal(got, x + y)


def test_add_rows_in_place(threads):
    rng = np.random.default_rng(10)
    a = rng.standard_normal((BIG // 33, 33), dtype=np.float32)
    row = rng.standard_normal(33, dtype=np.float32)
    want = a + row
    same = a
    parallel.add_rows_(a, row)
    assert a is same
    np.testing.assert_array_equal(a, want)


def test_sum_rows_same_for_every_thread_count_and_closer_than_one_sum(threads, monkeypatch):
    rng = np.random.default_rng(11)
    g = (rng.standard_normal((BIG // 24, 24)) * 3 + 1).astype(np.float32)
    x = rng.standard_normal((BIG // 24, 24)).astype(np.float32)
    got = parallel.sum_rows(lambda a, b: (a * b, a), g, x)
    with monkeypatch.context() as m:   # one thread: the same blocks, so the same bits
        m.setattr(parallel, "NUM_THREADS", 1)
        one = parallel.sum_rows(lambda a, b: (a * b, a), g, x)
    for a, b in zip(got, one):
        np.testing.assert_array_equal(a, b)
    exact = (g.astype(np.float64) * x).sum(axis=0), g.astype(np.float64).sum(axis=0)
    for a, e, plain in zip(got, exact, ((g * x).sum(axis=0), g.sum(axis=0))):
        assert a.dtype == np.float32 and a.shape == (24,)
        assert np.abs(a - e).max() <= np.abs(plain - e).max() + 1e-6
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-3)
    small = parallel.sum_rows(lambda a: a, g[:10])       # small: one column-sum gemv
    np.testing.assert_array_equal(small, parallel.column_sums(g[:10]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_and_column_sums_are_the_sums(dtype):
    a = np.random.default_rng(16).standard_normal((300, 70)).astype(dtype)
    for got, want in [(parallel.row_sums(a), a.astype(np.float64).sum(axis=1)),
                      (parallel.column_sums(a), a.astype(np.float64).sum(axis=0))]:
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-4 if dtype == np.float32 else 1e-12)


def test_reshape_copies_permuted_views_on_all_cores_and_keeps_views(threads):
    rng = np.random.default_rng(12)
    a = rng.standard_normal((8, BIG // 64, 8)).astype(np.float32)
    v = a.transpose(1, 0, 2)                                  # needs a copy to reshape
    got = parallel.reshape(v, (-1, 8))
    np.testing.assert_array_equal(got, v.reshape(-1, 8))
    assert got.flags.c_contiguous
    view = parallel.reshape(a, (8, -1))                       # contiguous: a view, no copy
    assert np.shares_memory(view, a)
    sliced = a[:, :, :4]                                      # strided, still a view along axis 0
    np.testing.assert_array_equal(parallel.reshape(sliced, (8, -1)), sliced.reshape(8, -1))
    with pytest.raises(ValueError):
        parallel.reshape(v, (7, -1))


def test_binary_broadcasting_along_rows_is_bit_identical(threads):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((16, 8, 8, BIG // 1024 + 3)).astype(np.float32)
    gate = rng.standard_normal((16, 1, 1, x.shape[-1])).astype(np.float32)
    for a, b in [(x, gate), (gate, x), (x, x)]:
        got = parallel.binary(np.multiply, a, b)
        assert got.shape == x.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, a * b)
    np.testing.assert_array_equal(parallel.binary(np.subtract, gate, x), gate - x)


def test_blocks_are_sized_by_the_widest_result(threads, monkeypatch):
    """An outer-sum broadcast (BoTNet's relative logits, (N, 8, 8, 8, 1) + (N, 8, 8, 1, 8))
    has a result 8x wider than either input: its blocks hold about BLOCK_ELEMENTS of the
    result, so it is cut into several blocks (and threads), with the plain call's numbers."""
    monkeypatch.setattr(parallel, "MIN_ELEMENTS", 1 << 12)
    monkeypatch.setattr(parallel, "BLOCK_ELEMENTS", 1 << 12)
    rng = np.random.default_rng(5)
    h = rng.standard_normal((64, 8, 8, 8, 1)).astype(np.float32)
    w = rng.standard_normal((64, 8, 8, 1, 8)).astype(np.float32)
    seen = []
    real_add = np.add

    def add(a, b):
        seen.append(a.shape[0])
        return real_add(a, b)

    got = parallel.blockwise(add, h, w)
    np.testing.assert_array_equal(got, h + w)
    assert max(seen[1:]) == (1 << 12) // 4096 and sum(seen[1:]) == 64   # after the 1-row probe
    np.testing.assert_array_equal(parallel.add(w, h), w + h)


def test_sum_to_on_all_cores_matches_numpy(threads):
    from minivit.autograd.engine import sum_to
    rng = np.random.default_rng(14)
    g = rng.standard_normal((16, 8, 8, BIG // 1024 + 3)).astype(np.float32)
    # axis 0 kept: per row, bit-identical
    np.testing.assert_array_equal(sum_to(g, (16, 1, 1, g.shape[-1])),
                                  g.sum(axis=(1, 2), keepdims=True))
    # leading axes summed away (a bias, a position embedding): column sums, last bits may differ
    g64 = g.astype(np.float64)
    for shape, want in [(g.shape[-1:], g64.sum(axis=(0, 1, 2))),
                        ((1,) + g.shape[1:], g64.sum(axis=0, keepdims=True)),
                        (g.shape[2:], g64.sum(axis=(0, 1)))]:
        got = sum_to(g, shape)
        assert got.shape == tuple(shape) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_add_columns_in_place(threads):
    rng = np.random.default_rng(15)
    a = rng.standard_normal((37, BIG // 37), dtype=np.float32)
    col = rng.standard_normal(37, dtype=np.float32)
    want = a + col[:, None]
    parallel.add_columns_(a, col)
    np.testing.assert_array_equal(a, want)


def test_blockwise_into_out_is_bit_identical(threads):
    rng = np.random.default_rng(17)
    x, y = rng.standard_normal((2, BIG), dtype=np.float32)

    def fn(a, b, out=None):
        o1, o2 = out if out is not None else (np.empty_like(a), np.empty_like(a))
        np.multiply(a, b, out=o1)
        o1 += 1
        np.exp(-a * a, out=o2)
        return o1, o2

    out = parallel.empty_like(x, 2)
    got = parallel.blockwise(fn, x, y, out=out)
    assert got[0] is out[0] and got[1] is out[1]
    for g, w in zip(got, fn(x, y)):
        np.testing.assert_array_equal(g, w)
    one = parallel.blockwise(lambda a, out: np.negative(a, out=out[0]), x,
                             out=parallel.empty_like(x))
    np.testing.assert_array_equal(one, -x)


@pytest.mark.parametrize("layout", ["row", "column"])
def test_gelu_forward_adds_its_bias_in_the_blocked_pass(threads, layout):
    # The bias rides on the GELU's pass over each block of x: same result as adding it first.
    rng = np.random.default_rng(6)
    x0 = rng.standard_normal((BIG // 64, 64)).astype(np.float32)
    bias = rng.standard_normal(64 if layout == "row" else x0.shape[0]).astype(np.float32)
    shifted = x0 + (bias if layout == "row" else bias[:, None])
    want = cpu_elementwise.gelu_forward(shifted.copy())
    x = x0.copy()
    got = cpu_linear.gelu_forward_with_bias(x, "none", bias, layout)
    np.testing.assert_array_equal(x, shifted)          # x now holds the GELU's input
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("keys", [1, 2, 3, 16, 32, 33, 40])
def test_row_max_equals_numpy_max(keys):
    rng = np.random.default_rng(17)
    a = rng.standard_normal((257, keys)).astype(np.float32)
    a[3] = -np.inf                                  # a fully masked row
    a[5, keys // 2] = np.nan                        # NaN propagates, as in max
    a[7, -1] = np.inf
    got = parallel.row_max(a)
    assert got.dtype == a.dtype and got.shape == (257,)
    np.testing.assert_array_equal(got, a.max(axis=-1))
    strided = a[::2]                                # a view of every other row
    np.testing.assert_array_equal(parallel.row_max(strided), strided.max(axis=-1))


def test_copyto_copies_permuted_views_on_all_cores(threads):
    rng = np.random.default_rng(18)
    src = rng.standard_normal((4, BIG // 96, 3, 8)).astype(np.float32).transpose(2, 0, 1, 3)
    for axis in (0, 1, 2):
        dst = np.empty(src.shape, np.float32)
        parallel.copyto(dst, src, axis=axis)
        np.testing.assert_array_equal(dst, src)
    small = np.empty((3, 2), np.float32)
    parallel.copyto(small, src[0, 0, :3, :2])
    np.testing.assert_array_equal(small, src[0, 0, :3, :2])
    with pytest.raises(ValueError, match=r"destination \(3, 2\) and source \(2, 3\) differ"):
        parallel.copyto(small, np.zeros((2, 3)))


@pytest.mark.parametrize("shape", [(2048, 16, 32), (4, 3, 5)], ids=["threaded", "small"])
def test_matmul_into_a_strided_out(threads, shape):
    rng = np.random.default_rng(19)
    n, m, k = shape
    a = rng.standard_normal((n, m, k), dtype=np.float32)
    b = rng.standard_normal((n, k, m), dtype=np.float32)
    packed = np.zeros((n, m, 3, m), np.float32)     # heads side by side: out is a strided view
    out = packed[:, :, 1]
    got = parallel.matmul(a, b, out=out)
    assert got is out
    np.testing.assert_array_equal(packed[:, :, 1], np.matmul(a, b))
    assert not packed[:, :, 0].any() and not packed[:, :, 2].any()


@pytest.mark.parametrize("m, n", [(3, 17), (17, 3), (5, 5)])
def test_t_matmul_equals_transposed_product_either_way_round(m, n):
    """t_matmul(a, b) == a.T @ b whichever of a, b is wider (it puts the wider first)."""
    rng = np.random.default_rng(m * 31 + n)
    a = rng.standard_normal((301, m)).astype(np.float32)
    b = rng.standard_normal((301, n)).astype(np.float32)
    got = parallel.t_matmul(a, b)
    assert got.shape == (m, n) and got.flags.c_contiguous
    np.testing.assert_allclose(got, a.T.astype(np.float64) @ b, rtol=1e-4, atol=1e-4)


def test_block_size_default(monkeypatch):
    monkeypatch.delenv("MINIVIT_BLOCK_ELEMENTS", raising=False)
    assert parallel._default_block_elements() == 1 << 18


def test_block_size_from_the_environment(monkeypatch):
    monkeypatch.setenv("MINIVIT_BLOCK_ELEMENTS", "4096")
    assert parallel._default_block_elements() == 4096
    for bad in ("0", "-5", "lots", "1e5"):
        monkeypatch.setenv("MINIVIT_BLOCK_ELEMENTS", bad)
        with pytest.raises(ValueError, match=f"MINIVIT_BLOCK_ELEMENTS must be a positive whole "
                                             f"number of elements, got '{bad}'"):
            parallel._default_block_elements()
