"""Run big elementwise/row-wise NumPy work in cache-sized blocks on every CPU core.

Entry points: ``blockwise(fn, *arrays)`` for a function of whole arrays (it does the
cutting), ``for_each(fn, items)`` for loops whose iterations write disjoint parts of an
output (the conv's layout copies, im2col and col2im, one block of channels per item),
``matmul(a, b)`` for stacks of small matrix products (attention), which NumPy runs on one core,
``sum_rows(fn, *arrays)`` for column sums (bias and norm-weight gradients), ``binary`` /
``add`` / ``add_rows_`` for the residual adds, gradient sums, gating products and bias adds,
and ``reshape`` / ``copyto`` for the copies that reshaping a permuted view makes.

A chain like ``g * (cdf + x * exp(-x*x/2))`` on a 3M-element array makes each ufunc stream
12 MB through memory and runs on one core, while BLAS uses all of them. ``blockwise`` cuts
the arrays along their first axis into blocks of about ``BLOCK_ELEMENTS`` elements, so the
whole chain runs on one block while it sits in cache, and shares the blocks among
``NUM_THREADS`` threads, each taking the next block left (NumPy's ufuncs release the GIL).

Every block computes exactly what the whole-array call would for its rows, so the results are
bit-identical to ``fn(*arrays)``, provided ``fn`` is row-wise (each output row depends only on
the same rows of the inputs; reductions only over the trailing axes). CuPy arrays, small
arrays and ``MINIVIT_NUM_THREADS=0`` take the plain path: ``fn(*arrays)``.

    y = blockwise(lambda x: x * (1 + x), x.reshape(-1)).reshape(x.shape)
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MIN_ELEMENTS = 1 << 18  # below this, the plain call


def _default_block_elements() -> int:
    """``MINIVIT_BLOCK_ELEMENTS``, else 2^18 (1 MB per float32 operand block). A block must be
    big enough that each NumPy call on it lasts long against the handoff of the GIL between
    the threads (tens of microseconds), and small enough that a few operand blocks stay in
    cache. 2^18 won whole training steps on both machines measured: with 2 MB of L2 per core
    2^17 ran 1-5% slower and 2^19 25% slower; with 512 KB of L2 (and a shared L3) 2^16, half
    the L2, ran 20-45% slower, 2^17 5-10% and 2^19 10-20% (docs/speed-history.md)."""
    env = os.environ.get("MINIVIT_BLOCK_ELEMENTS")
    if env is not None:
        if not env.strip().isdigit() or int(env) < 1:
            raise ValueError(f"MINIVIT_BLOCK_ELEMENTS must be a positive whole number of "
                             f"elements, got {env!r}")
        return int(env)
    return 1 << 18


BLOCK_ELEMENTS = _default_block_elements()   # elements per block of each operand


def _default_threads() -> int:
    env = os.environ.get("MINIVIT_NUM_THREADS")
    if env is not None:
        return max(0, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


NUM_THREADS = _default_threads()  # 0: no blocking at all (the plain path everywhere)
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(NUM_THREADS - 1, thread_name_prefix="minivit")
        return _pool


def _as_tuple(r):
    return r if isinstance(r, tuple) else (r,)


_DONE = object()


def _run_split(run, items: list) -> None:
    """``run((item,))`` for every item, on ``NUM_THREADS`` threads (this one included) that
    each take the next item left until none is: a thread that started late or met slower
    items takes fewer, so none waits at the end for another's fixed share."""
    k = min(NUM_THREADS, len(items))
    if k <= 1:
        run(items)
        return
    it, lock = iter(items), threading.Lock()

    def loop():
        while True:
            with lock:
                item = next(it, _DONE)
            if item is _DONE:
                return
            run((item,))

    futures = [_get_pool().submit(loop) for _ in range(k - 1)]
    loop()
    for f in futures:
        f.result()


def for_each(fn, items, *, threaded: bool = True) -> None:
    """``for item in items: fn(item)``, the items shared among ``NUM_THREADS`` threads.

    The iterations must be independent (each writes its own part of some output), so the
    result is the same however they are split. ``threaded=False`` (the GPU, or a small
    problem) runs the plain loop.

    ``for_each(lambda blk: out.__setitem__(blk, view[blk]), blocks)`` copies block by block.
    """
    items = list(items)
    if not threaded or NUM_THREADS <= 1 or len(items) < 2:
        for item in items:
            fn(item)
        return

    def run(part):
        for item in part:
            fn(item)

    _run_split(run, items)


def blockwise(fn, *arrays, out=None):
    """``fn(*arrays)``, computed block by block along axis 0, on all cores.

    ``arrays``: NumPy or CuPy arrays with the same length along axis 0 (C-contiguous ones make
    the blocks cheap views). ``fn`` returns an array or a tuple of arrays, each with the
    inputs' length along axis 0; whatever else it needs (weights, constants) it takes from
    its closure. Returns what ``fn(*arrays)`` would return.

    ``out``: a tuple of arrays of the results' shapes, which ``fn`` fills itself: it is called
    as ``fn(*blocks, out=out_blocks)`` (and ``fn(*arrays, out=out)`` on the plain path). That
    saves copying each block's result into place, a pass over every output.

    ``blockwise(lambda a, b: a * b + 1, x, y)`` == ``x * y + 1`` for same-shape x, y.
    """
    a0 = arrays[0]
    n = a0.shape[0] if a0.ndim else 0
    if (NUM_THREADS == 0 or max(a.size for a in arrays) < MIN_ELEMENTS or n < 2
            or not all(isinstance(a, np.ndarray) and a.shape[:1] == (n,) for a in arrays)):
        return fn(*arrays) if out is None else fn(*arrays, out=out)
    # one row of the results, for their dtypes and shapes
    probe = _as_tuple(fn(*[a[:1] for a in arrays])) if out is None else ()
    # a block holds about BLOCK_ELEMENTS of the widest operand or result (a broadcast's result,
    # such as (N, 8, 8, 1) + (N, 8, 1, 8), is wider than either input)
    per_row = [a.size // n for a in arrays + tuple(out or ())] + [p.size for p in probe]
    rows = max(1, BLOCK_ELEMENTS // max(max(per_row), 1))
    starts = list(range(0, n, rows))
    if out is not None:
        def run(block_starts):
            for s in block_starts:
                fn(*[a[s:s + rows] for a in arrays], out=tuple(o[s:s + rows] for o in out))

        _run_split(run, starts)
        return out if len(out) > 1 else out[0]
    outs = tuple(np.empty((n,) + p.shape[1:], p.dtype) for p in probe)

    def run(block_starts):
        for s in block_starts:
            for o, r in zip(outs, _as_tuple(fn(*[a[s:s + rows] for a in arrays]))):
                o[s:s + rows] = r

    _run_split(run, starts)
    return outs if len(outs) > 1 else outs[0]


def empty_like(a, count: int = 1):
    """``count`` new arrays of ``a``'s shape and dtype (the ``out`` of a ``blockwise``)."""
    xp = _xp(a)
    return tuple(xp.empty(a.shape, a.dtype) for _ in range(count))


def binary(op, a, b):
    """``op(a, b)`` for a NumPy ufunc such as ``np.add`` or ``np.multiply``; when both are
    large NumPy arrays of one dtype with the same length along axis 0 (same shape, or
    broadcasting along the other axes, such as x (B, H, W, C) * gate (B, 1, 1, C)), in blocks
    of rows on all cores. Elementwise, so bit-identical to ``op(a, b)``.

    The residual adds, the engine's gradient sums and gating products are whole-array passes
    that NumPy would run on one core.
    """
    if (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.ndim == b.ndim >= 1
            and a.shape[0] == b.shape[0] and a.dtype == b.dtype
            and max(a.size, b.size) >= MIN_ELEMENTS):
        return blockwise(op, a, b)
    return op(a, b)


def add(a, b):
    """``a + b``, on all cores for large arrays (see ``binary``); CuPy arrays add on the GPU."""
    return binary(_xp(a).add, a, b) if hasattr(a, "shape") else a + b


def reshape(a, shape):
    """``a.reshape(shape)``; when that has to copy a large strided NumPy array (a transposed
    or permuted view), the copy is made block by block along axis 0 on all cores."""
    if (not isinstance(a, np.ndarray) or a.flags.c_contiguous or a.size < MIN_ELEMENTS
            or NUM_THREADS <= 1 or a.shape[0] < 2):
        return a.reshape(shape)
    try:
        return np.reshape(a, shape, copy=False)   # a view after all (NumPy >= 2.1)
    except (ValueError, TypeError):
        pass
    out = np.empty(a.shape, dtype=a.dtype)
    copyto(out, a)
    return out.reshape(shape)


def copyto(dst, src, axis: int = 0) -> None:
    """``dst[...] = src`` (same shape; ``src`` typically a permuted view), copied in blocks
    along ``axis`` on all cores. Attention's head splits and merges use it: such a copy
    gathers short rows from far apart and runs at a fraction of a plain copy's speed on one
    core. CuPy arrays and small arrays take the plain assignment."""
    if dst.shape != src.shape:
        raise ValueError(f"copyto: destination {dst.shape} and source {src.shape} differ")
    if (not isinstance(dst, np.ndarray) or dst.size < MIN_ELEMENTS or NUM_THREADS <= 1
            or dst.shape[axis] < 2):
        dst[...] = src
        return
    n = dst.shape[axis]
    step = -(-n // (4 * NUM_THREADS))   # a few blocks per thread
    lead = (slice(None),) * axis
    for_each(lambda s: dst.__setitem__(lead + (slice(s, s + step),),
                                       src[lead + (slice(s, s + step),)]),
             range(0, n, step))


def add_rows_(a, row) -> None:
    """``a += row`` in place for a 2-D NumPy array (a bias added to every row), on all cores."""
    if not isinstance(a, np.ndarray) or a.size < MIN_ELEMENTS or NUM_THREADS <= 1:
        a += row
        return
    step = max(1, BLOCK_ELEMENTS // max(a.shape[1], 1))
    for_each(lambda s: a[s:s + step].__iadd__(row), range(0, a.shape[0], step))


def add_columns_(a, col) -> None:
    """``a += col[:, None]`` in place for a 2-D NumPy array (a bias per row), on all cores."""
    if not isinstance(a, np.ndarray) or a.size < MIN_ELEMENTS or NUM_THREADS <= 1:
        a += col[:, None]
        return
    step = max(1, BLOCK_ELEMENTS // max(a.shape[1], 1))
    for_each(lambda s: a[s:s + step].__iadd__(col[s:s + step, None]),
             range(0, a.shape[0], step))


# NumPy's reductions along the rows or down the columns of a (rows, D) float array run several
# times slower than BLAS's matrix-vector product with a vector of ones (docs/speed-history.md).
# These two are that product.

def row_sums(a):
    """``a.sum(axis=-1)`` of a 2-D float array, as the gemv ``a @ 1`` (on the GPU one
    reduction kernel: the vector of ones would be a kernel launch of its own)."""
    if not isinstance(a, np.ndarray):
        return a.sum(axis=-1)
    return a @ np.ones(a.shape[-1], a.dtype)


def row_max(a):
    """``a.max(axis=-1)`` of a 2-D array. NumPy's reduction along rows as short as
    attention's 16 keys (MaxViT's windows) runs about 10x slower per element than along long
    rows; a running ``maximum`` over the columns, each a strided pass over all rows, is about
    10x faster (docs/speed-history.md). Both give exactly the same maxima."""
    if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[-1] > 32 or a.shape[-1] < 2:
        return a.max(axis=-1)
    m = a[:, 0].copy()
    for j in range(1, a.shape[1]):
        np.maximum(m, a[:, j], out=m)
    return m


def column_sums(a):
    """``a.sum(axis=0)`` of a 2-D float array, as the gemv ``1 @ a`` (a reduction on the GPU)."""
    if not isinstance(a, np.ndarray):
        return a.sum(axis=0)
    return np.ones(a.shape[0], a.dtype) @ a


def sum_rows(fn, *arrays, summed: bool = False):
    """The column sums ``fn(*arrays).sum(axis=0)`` (``fn`` may return a tuple: one sum each),
    computed on fixed blocks of rows on all cores and added up in block order.

    ``fn`` must be row-wise (as for ``blockwise``). The blocks do not depend on the number of
    threads, so neither does the result (it may differ from one whole-array sum in the last
    bits: the rows are added in another order). CuPy arrays and small arrays take the plain
    call. ``sum_rows(lambda g, x: (g * x, g), g, x)`` gives a weight and a bias gradient.
    ``summed=True``: ``fn`` returns its block's column sums itself (an einsum that never
    writes the product array, say), which are then only added up.
    """
    colsums = (lambda r: r) if summed else column_sums
    a0 = arrays[0]
    if (NUM_THREADS == 0 or a0.ndim < 2 or a0.size < MIN_ELEMENTS
            or not all(isinstance(a, np.ndarray) for a in arrays)):
        return _tuple_or_one(tuple(colsums(r) for r in _as_tuple(fn(*arrays))))
    n = a0.shape[0]
    rows = max(1, BLOCK_ELEMENTS // (a0.size // n))
    starts = list(range(0, n, rows))
    parts: list = [None] * len(starts)

    def run(k):
        s = starts[k]
        parts[k] = tuple(colsums(r) for r in _as_tuple(fn(*[a[s:s + rows] for a in arrays])))

    for_each(run, range(len(starts)))
    return _tuple_or_one(tuple(np.sum(np.stack(col), axis=0) for col in zip(*parts)))


def _tuple_or_one(t: tuple):
    return t if len(t) > 1 else t[0]


# A stack of small products, (384, 65, 64) @ (384, 64, 65) in attention, is one BLAS call per
# matrix, each too small for OpenBLAS to thread: NumPy's batched matmul runs on one core.
# Splitting the stack over the threads runs 1.6-2x faster on 2 cores, for MaxViT's 16x16
# windows too (the measurements, and an older one that disagreed: docs/speed-history.md;
# re-measure if the NumPy/OpenBLAS build changes). What does not pay is handing a small stack
# to the threads at all (about 0.1 ms): below 2^23 multiply-adds in all, one call.
MATMUL_MIN_WORK = 1 << 23  # multiply-adds of the whole stack, length * m * k * n


def matmul(a, b, out=None):
    """``a @ b`` for stacks of matrices, the stack split along axis 0 over the CPU threads.

    Same result, bit for bit, as ``xp.matmul(a, b)`` (each product is computed alone either
    way). Takes the plain call for CuPy arrays, 2-D operands, broadcast stacks (different
    leading shapes) and small products.

    ``out``: an array of the result's shape to write into, which may be a strided view (the
    heads of a packed (B, N, heads, d) array); NumPy's BLAS path takes such views directly
    when each matrix's rows are contiguous. Returns ``out``.
    """
    if not isinstance(a, np.ndarray):  # CuPy: compute, then place (out may be strided)
        if out is None:
            return _xp(a).matmul(a, b)
        out[...] = _xp(a).matmul(a, b)
        return out
    if not isinstance(b, np.ndarray) or a.ndim < 3 \
            or a.shape[:-2] != b.shape[:-2] or NUM_THREADS <= 1 or a.shape[0] < 2:
        return np.matmul(a, b, out=out)
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    if math.prod(a.shape[:-2]) * m * k * n < MATMUL_MIN_WORK or b.shape[-2] != k:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty(a.shape[:-1] + (n,), dtype=np.result_type(a, b))
    length = a.shape[0]
    parts = [slice(length * i // NUM_THREADS, length * (i + 1) // NUM_THREADS)
             for i in range(min(NUM_THREADS, length))]
    for_each(lambda s: np.matmul(a[s], b[s], out=out[s]), parts)
    return out


def t_matmul(a, b):
    """``a.T @ b`` for 2-D NumPy or CuPy arrays a (K, M) and b (K, N) with a long K: a weight
    gradient summed over many rows (dW = dout^T @ x of a Linear or an im2col conv).

    Computed as ``(b.T @ a).T`` when N > M, so that the wider of the two is the product's
    rows: NumPy's OpenBLAS (0.3.x, 2 threads) runs (32768, 32)^T @ (32768, 64) 5-30x slower
    than the same numbers as (32768, 64)^T @ (32768, 32), bit for bit the same result
    (docs/speed-history.md). Returns a C-contiguous (M, N) array. On the GPU (cuBLAS) the
    product is taken as written: the swap would cost one more launch for the copy."""
    if b.shape[1] <= a.shape[1] or not isinstance(a, np.ndarray):
        return a.T @ b
    return _xp(a).ascontiguousarray((b.T @ a).T)


def _xp(a):
    from ..autograd.backend import get_array_module  # noqa: PLC0415 (import order)

    return get_array_module(a)
