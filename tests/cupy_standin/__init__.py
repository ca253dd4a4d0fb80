"""A strict, NumPy-backed stand-in for CuPy, so the GPU code path runs in CI without a GPU.

``install()`` puts it in ``sys.modules`` as ``cupy`` (and ``cupyx``, ``cupyx.scipy.special``)
and points ``minivit.autograd.backend`` at it; ``uninstall()`` undoes both. What it enforces,
so that code passing here does what it should on a real GPU:

* GPU arrays (``cupy.ndarray``) are not ``numpy.ndarray`` and hold their data out of reach:
  ``numpy.asarray(gpu)`` raises ``TypeError`` as real CuPy does, and so does any NumPy function
  or ufunc given a GPU array (``__array_function__`` / ``__array_ufunc__`` refuse; real CuPy
  would either refuse or quietly run the host code this project must not have).
* Mixed operands are refused: a NumPy array in a CuPy function or operator raises ``TypeError``
  (``cupy.asarray``/``cupy.array`` are the explicit host-to-device copies).
* Only the names real CuPy 14 has (``cupy_names.json``, written by ``tools/cupy_names.py`` from
  an installed CuPy) exist, on the modules and on ``ndarray``.
* ``ElementwiseKernel`` and ``ReductionKernel`` bodies are interpreted (``_kernel.py``) with
  C's type rules: ``T`` is the arrays' dtype, an unsuffixed literal is double, ``(T)`` casts,
  an assignment converts to the output's type.
* ``COUNTS`` tallies kernel launches, host-to-device and device-to-host copies and
  synchronisations (a device-to-host read is one); ``counting()`` measures a block and
  ``no_sync()`` makes any synchronisation inside a block raise ``SyncError``. Host-to-device
  copies from page-locked memory (``cupyx.empty_pinned``) are counted apart (``h2d_pinned``),
  and those of them on a stream other than the default one (``h2d_async``).
* Streams are ordered as on a GPU, strictly: an array written by an asynchronous copy on a
  side stream may be read on another stream only after that stream waited for an event
  recorded after the copy (``Stream.wait_event``), and a side stream may overwrite an array
  only after it waited for the kernels of other streams that read it; otherwise
  ``StreamOrderError``. (On a GPU the default stream would wait for a *blocking* side stream by
  itself; the stand-in asks for the event in every case.) ``Event.done`` is True (everything
  has run), and asking it is not a synchronisation; ``Event.synchronize()`` is one.

A launch is one CuPy call or operator whose result is a new array (views, ``empty`` and
shape queries launch nothing), one kernel call, one random draw.
"""
from __future__ import annotations

import collections
import contextlib
import json
import math
import pathlib
import sys
import threading
import types
import weakref

import numpy as np

from . import _kernel, raw_twins  # noqa: F401 (registers the RawKernels' twins)

NAMES = json.loads((pathlib.Path(__file__).parent / "cupy_names.json").read_text())
VERSION = NAMES["version"]
_NDARRAY_NAMES = frozenset(NAMES["classes"]["ndarray"])

COUNTS = collections.Counter()   # launches, h2d, d2h, syncs
BY_OP = collections.Counter()    # launches per op name (to see where they come from)
_no_sync = [0]


class SyncError(RuntimeError):
    """A host synchronisation where none may happen (inside ``no_sync()``)."""


WHERE = collections.Counter()   # launches per minivit source line, when TRACE[0] is set
TRACE = [False]


def launch(name: str, n: int = 1) -> None:
    _current_stream()._seq += n
    COUNTS["launches"] += n
    BY_OP[name] += n
    if TRACE[0]:
        f = sys._getframe(1)
        while f is not None and "/minivit/" not in f.f_code.co_filename:
            f = f.f_back
        if f is not None:
            where = f.f_code.co_filename.split("/minivit/")[-1]
            WHERE[f"{where}:{f.f_lineno} {f.f_code.co_name} {name}"] += n


def sync(what: str) -> None:
    if _no_sync[0]:
        raise SyncError(f"host synchronisation inside a training step: {what}")
    COUNTS["syncs"] += 1


def reset_counts() -> None:
    COUNTS.clear()
    BY_OP.clear()


@contextlib.contextmanager
def counting():
    """``with counting() as c:`` ... then ``c["launches"]``, ``c["h2d"]``, ``c["d2h"]``,
    ``c["syncs"]``, ``c["h2d_pinned"]``, ``c["h2d_async"]`` and ``c["by_op"]`` hold what the
    block did."""
    before, before_ops = COUNTS.copy(), BY_OP.copy()
    out = {}
    try:
        yield out
    finally:
        for k in ("launches", "h2d", "d2h", "syncs", "h2d_pinned", "h2d_async"):
            out[k] = COUNTS[k] - before[k]
        out["by_op"] = BY_OP - before_ops


@contextlib.contextmanager
def no_sync():
    """Any host synchronisation (``.item()``, ``bool()``, ``.get()``, ``asnumpy``, a device
    synchronize) inside the block raises ``SyncError``."""
    _no_sync[0] += 1
    try:
        yield
    finally:
        _no_sync[0] -= 1


# --- the array ---------------------------------------------------------------------------

def _refuse(x):
    raise TypeError(f"Unsupported type {type(x)} (a NumPy array where CuPy needs a cupy.ndarray; "
                    "move it with cupy.asarray first)")


def _un(x):
    """The NumPy data of a CuPy argument; a NumPy array is refused (mixed operands)."""
    if type(x) is ndarray:
        return x._a
    if isinstance(x, np.ndarray):
        _refuse(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_un(v) for v in x)
    return x


def _wrap(r):
    if isinstance(r, np.ndarray):
        out = object.__new__(ndarray)
        out._a = r
        return out
    if isinstance(r, (np.number, np.bool_)):  # CuPy gives 0-d arrays, never NumPy scalars
        return _wrap(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(v) for v in r)
    if isinstance(r, list):
        return [_wrap(v) for v in r]
    return r


def _arrays_in(args):
    for a in args:
        if type(a) is ndarray:
            yield a._a
        elif isinstance(a, (list, tuple)):
            yield from _arrays_in(a)


def _new_buffers(result, inputs) -> bool:
    res = [r for r in (result if isinstance(result, (tuple, list)) else (result,))
           if isinstance(r, (np.ndarray, np.generic))]
    if not res:
        return False
    return any(not isinstance(r, np.ndarray) or r.size and
               not any(np.may_share_memory(r, a) for a in inputs) for r in res)


def _call(name, fn, args, kwargs, this=None):
    """Run a NumPy function on the data of CuPy arguments, counting a launch for new data
    (``this``: the array whose method ``fn`` is)."""
    uargs = _un(args)
    out = kwargs.get("out")
    ukw = {k: _un(v) for k, v in kwargs.items()}
    r = fn(*uargs, **ukw)
    used = list(_arrays_in(args)) + ([] if this is None else [this])
    if out is not None or _new_buffers(r, used):   # a kernel ran (a view is no use of data)
        if _SIDE_WRITTEN:
            stream_reads(used + list(_arrays_in(list(kwargs.values()))))
        launch(name)
    return out if out is not None else _wrap(r)


class ndarray:
    """A GPU array: NumPy data behind a wall (not an ``np.ndarray``, no ``__array__``)."""

    __slots__ = ("_a",)
    __array_ufunc__ = None     # NumPy ufuncs and operators defer to us, and then we refuse
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        self._a = np.empty(shape, dtype=dtype, order=order)

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_function__(self, func, types_, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} called on a cupy.ndarray: a NumPy function "
                        "on a GPU array (use the cupy function)")

    # data leaving the device: a copy and a synchronisation each
    def get(self, stream=None, order="C", out=None, blocking=True):
        sync("ndarray.get()")
        COUNTS["d2h"] += 1
        return self._a.copy(order="C" if order == "C" else "K")

    def set(self, arr, stream=None):
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self._a.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self._a.dtype} array")
        if self._a.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self._a.shape}, new shape: "
                             f"{arr.shape}")
        if not self._a.flags.c_contiguous:
            raise RuntimeError("Cannot set to non-contiguous array")
        s = _current_stream() if stream is None else stream
        COUNTS["h2d"] += 1
        if _is_pinned(arr):
            COUNTS["h2d_pinned"] += 1
            COUNTS["h2d_async"] += s is not _Stream.null
        _stream_writes(self._a, s)
        self._a[...] = arr

    def _read(self, what, convert, *args):
        sync(what)
        COUNTS["d2h"] += 1
        return convert(*args)

    def item(self, *args):
        return self._read("ndarray.item()", self._a.item, *args)

    def tolist(self):
        return self._read("ndarray.tolist()", self._a.tolist)

    def __bool__(self):
        return self._read("bool(cupy.ndarray)", bool, self._a)

    def __float__(self):
        return self._read("float(cupy.ndarray)", float, self._a)

    def __int__(self):
        return self._read("int(cupy.ndarray)", int, self._a)

    def __complex__(self):
        return self._read("complex(cupy.ndarray)", complex, self._a)

    def __repr__(self):
        return "array(" + np.array2string(self._a, separator=", ") + ", device='cuda-standin')"

    __str__ = __repr__

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    def __getitem__(self, key):
        return _call("getitem", self._a.__getitem__, (_index(key),), {}, self._a)

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):  # CuPy copies a host value over (a transfer)
            COUNTS["h2d"] += 1
        else:
            value = _un(value)
        if _SIDE_WRITTEN:
            stream_reads([self._a] + ([value] if isinstance(value, np.ndarray) else []))
        self._a[_un(_index(key))] = value
        launch("setitem")

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):   # pickling fetches the data, as CuPy's does
        return (_from_host, (self.get(),))

    @property
    def device(self):
        return cuda.Device(0)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self._a.shape, "typestr": self._a.dtype.str, "version": 3}

    def __getattr__(self, name):
        if name not in _NDARRAY_NAMES:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        attr = getattr(self._a, name)
        if callable(attr):
            return lambda *a, **k: _call(f"ndarray.{name}", attr, a, k, self._a)
        return _wrap(attr) if isinstance(attr, np.ndarray) else attr


def _from_host(a):
    COUNTS["h2d"] += 1
    return _wrap(np.array(a))


def _index(key):
    """Index arrays may be CuPy arrays; NumPy index arrays are copied over (as CuPy does)."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, np.ndarray):
        COUNTS["h2d"] += 1
        return _wrap(key)
    return key


def _binary(name):
    def op(self, other):
        if isinstance(other, np.ndarray):
            _refuse(other)
        if _TF32[0] and "matmul" in name and not name.startswith("__i"):
            a = to_tf32(self._a) if self._a.dtype == np.float32 else self._a
            b = _un(other)
            b = to_tf32(b) if isinstance(b, np.ndarray) and b.dtype == np.float32 else b
            launch(name)
            return _wrap(getattr(a, name)(b))
        if _SIDE_WRITTEN:
            stream_reads([self._a] + list(_arrays_in([other])))
        r = getattr(self._a, name)(_un(other))
        if r is NotImplemented:
            return NotImplemented
        launch(name)
        if name.startswith("__i"):
            return self
        return _wrap(r)
    op.__name__ = name
    return op


def _unary(name):
    def op(self):
        launch(name)
        return _wrap(getattr(self._a, name)())
    op.__name__ = name
    return op


for _n in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
           "xor", "lshift", "rshift"):
    for _f in (f"__{_n}__", f"__r{_n}__", f"__i{_n}__"):
        if _f in _NDARRAY_NAMES:
            setattr(ndarray, _f, _binary(_f))
for _f in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__divmod__"):
    setattr(ndarray, _f, _binary(_f))
for _f in ("__neg__", "__pos__", "__abs__", "__invert__"):
    setattr(ndarray, _f, _unary(_f))


# --- module functions --------------------------------------------------------------------

def asarray(a, dtype=None, order=None, *, blocking=False):
    if type(a) is ndarray:
        if dtype is None or np.dtype(dtype) == a._a.dtype:
            return a
        return a.astype(dtype)
    COUNTS["h2d"] += 1
    return _wrap(np.array(a, dtype=dtype, order=order or "K"))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if type(obj) is ndarray:
        launch("array")
        return _wrap(np.array(obj._a, dtype=dtype, copy=True, order=order, ndmin=ndmin))
    COUNTS["h2d"] += 1
    return _wrap(np.array(obj, dtype=dtype, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if type(a) is ndarray:
        return a.get()
    return np.asarray(a, order=order)


def get_array_module(*args):
    return _self if any(type(a) is ndarray for a in args) else np


def _empty(name):
    f = getattr(np, name)

    def make(*args, **kwargs):   # no kernel: the memory is only allocated
        return _wrap(f(*_un(args), **{k: _un(v) for k, v in kwargs.items()}))
    return make


class _MemoryPool:
    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self, stream=None):
        pass

    def set_limit(self, size=None, fraction=None):
        pass

    def get_limit(self):
        return 0


_pool = _MemoryPool()


def ElementwiseKernel(in_params, out_params, operation, name="kernel", **kwargs):  # noqa: N802
    return _kernel.ElementwiseKernel(in_params, out_params, operation, name, **kwargs)


def ReductionKernel(in_params, out_params, map_expr, reduce_expr, post_map_expr,  # noqa: N802
                    identity, name="reduce_kernel", **kwargs):
    return _kernel.ReductionKernel(in_params, out_params, map_expr, reduce_expr, post_map_expr,
                                   identity, name, **kwargs)


def RawKernel(code, name, options=(), backend="nvrtc", **kwargs):  # noqa: N802
    return _kernel.RawKernel(code, name, options, **kwargs)


# TF32: with float32 compute type TF32 (cupy._core._routines_linalg.set_compute_type), the
# stand-in rounds float32 matrix-product operands to TF32's 10-bit mantissa, as cuBLAS does.
_TF32 = [False]
_routines_linalg = types.SimpleNamespace(
    COMPUTE_TYPE_DEFAULT=0, COMPUTE_TYPE_PEDANTIC=1, COMPUTE_TYPE_FP16=2, COMPUTE_TYPE_FP32=3,
    COMPUTE_TYPE_FP64=4, COMPUTE_TYPE_BF16=5, COMPUTE_TYPE_TF32=6,
    set_compute_type=lambda dtype, ct: _TF32.__setitem__(
        0, np.dtype(dtype) == np.float32 and ct == 6 or (_TF32[0] and np.dtype(dtype) != np.float32)),
    get_compute_type=lambda dtype: 6 if _TF32[0] and np.dtype(dtype) == np.float32 else 0)
_core = types.SimpleNamespace(_routines_linalg=_routines_linalg)


def to_tf32(a):
    """float32 values rounded to TF32 (10 explicit mantissa bits, round to nearest even)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    u = a.view(np.uint32)
    r = (u + np.uint32(0xFFF) + ((u >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    return np.where(np.isfinite(a), r.view(np.float32), a)


def _product(name, fn):
    def f(*args, **kwargs):
        if _TF32[0]:
            args = tuple(_wrap(to_tf32(a._a)) if type(a) is ndarray and a._a.dtype == np.float32
                         else a for a in args)
        return _call(name, fn, args, kwargs)
    return f


_OVERRIDES = {
    "matmul": _product("cupy.matmul", np.matmul), "dot": _product("cupy.dot", np.dot),
    "einsum": _product("cupy.einsum", np.einsum), "tensordot": _product("cupy.tensordot",
                                                                       np.tensordot),
    "ndarray": ndarray, "asarray": asarray, "array": array, "asnumpy": asnumpy,
    "get_array_module": get_array_module, "empty": _empty("empty"),
    "empty_like": _empty("empty_like"), "get_default_memory_pool": lambda: _pool,
    "get_default_pinned_memory_pool": lambda: _pool,
    "ElementwiseKernel": ElementwiseKernel, "ReductionKernel": ReductionKernel,
    "RawKernel": RawKernel, "ascontiguousarray":
        lambda a, dtype=None: _call("ascontiguousarray", np.ascontiguousarray, (a,),
                                    {"dtype": dtype}),
}


class _Module(types.ModuleType):
    """A module that offers a name only when real CuPy has it; NumPy does the work."""

    def __init__(self, name, np_source=None, overrides=None):
        super().__init__(name)
        self._allowed = frozenset(NAMES["modules"].get(name, ()))
        self._np = np_source
        self._over = dict(overrides or {})
        self.__dict__["__file__"] = __file__

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name in self._over:
            return self._over[name]
        if name not in self._allowed:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r} "
                                 f"(not in CuPy {VERSION})")
        if self._np is None or not hasattr(self._np, name):
            raise AttributeError(f"{self.__name__}.{name} exists in CuPy but not in the stand-in")
        obj = getattr(self._np, name)
        if isinstance(obj, type) or not callable(obj):
            return obj   # dtypes, constants
        wrapped = _wrap_function(f"{self.__name__}.{name}", obj)
        self._over[name] = wrapped
        return wrapped


def _wrap_function(name, fn):
    def f(*args, **kwargs):
        return _call(name, fn, args, kwargs)
    f.__name__ = name.rsplit(".", 1)[-1]
    return f


# --- cupy.random ---------------------------------------------------------------------------

class RandomState:
    """CuPy's RandomState (cuRAND behind it), drawn here from NumPy's PCG64 for the seed."""

    def __init__(self, seed=None, method=None):
        self.method = method
        self.seed(seed)

    def seed(self, seed=None):
        self._gen = np.random.default_rng(seed)

    def _draw(self, name, make):
        launch(f"random.{name}")
        return _wrap(make())

    def _check_dtype(self, dtype):
        dtype = np.dtype(dtype)
        if dtype.char not in "fd":
            raise TypeError("cupy.random only supports float32 and float64")
        return dtype

    def random_sample(self, size=None, dtype=float):
        dt = self._check_dtype(dtype)
        return self._draw("random_sample", lambda: self._gen.random(size, dtype=dt))

    random = random_sample

    def rand(self, *size, dtype=float):
        return self.random_sample(size, dtype)

    def standard_normal(self, size=None, dtype=float):
        dt = self._check_dtype(dtype)
        return self._draw("standard_normal", lambda: self._gen.standard_normal(size, dtype=dt))

    def normal(self, loc=0.0, scale=1.0, size=None, dtype=float):
        dt = self._check_dtype(dtype)
        return self._draw("normal", lambda: (self._gen.standard_normal(size) * scale + loc)
                          .astype(dt))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=float):
        dt = self._check_dtype(dtype)
        return self._draw("uniform", lambda: self._gen.uniform(low, high, size).astype(dt))

    def randint(self, low, high=None, size=None, dtype=int):
        return self._draw("randint", lambda: self._gen.integers(low, high, size, dtype=dtype))

    def permutation(self, a):
        return self._draw("permutation", lambda: self._gen.permutation(a))

    def beta(self, a, b, size=None, dtype=float):
        return self._draw("beta", lambda: self._gen.beta(a, b, size).astype(dtype))


_random_state = [None]


def get_random_state():
    if _random_state[0] is None:
        _random_state[0] = RandomState()
    return _random_state[0]


def set_random_state(rs):
    if not isinstance(rs, RandomState):
        raise TypeError(f"Random state must be an instance of RandomState. Actual: {type(rs)}")
    _random_state[0] = rs


def _seed(seed=None):
    get_random_state().seed(seed)


def _global_draw(name):
    return lambda *a, **k: getattr(get_random_state(), name)(*a, **k)


random = _Module("cupy.random", None, {
    "RandomState": RandomState, "get_random_state": get_random_state,
    "set_random_state": set_random_state, "seed": _seed,
    **{n: _global_draw(n) for n in ("random_sample", "random", "rand", "standard_normal",
                                    "normal", "uniform", "randint", "permutation", "beta")}})


# --- cupy.cuda -----------------------------------------------------------------------------

class _Context:
    """What Device and Stream share: a synchronize() and use in a ``with``."""

    def synchronize(self):
        sync(f"{type(self).__name__.strip('_')}.synchronize()")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Device(_Context):
    def __init__(self, device=None):
        self.id = 0

    def use(self):   # make this the current device (there is one)
        return None

    @property
    def compute_capability(self):
        return "90"


class StreamOrderError(RuntimeError):
    """An array used on one stream while an asynchronous copy on another is not ordered
    against it by an event."""


class _Stream(_Context):
    """A CUDA stream: ``_seq`` counts the work queued on it, ``_waited`` how far into each other
    stream's work it waits (``wait_event``). The stand-in runs everything at once; these
    numbers only decide whether a use of an array is ordered after a copy on another stream."""

    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self._seq, self._waited = 0, {}
        self.ptr = 0 if null else id(self)

    def __enter__(self):
        _STREAMS.__dict__.setdefault("stack", []).append(self)
        return self

    def __exit__(self, *exc):
        _STREAMS.stack.pop()
        return False

    def use(self):
        _STREAMS.__dict__.setdefault("stack", [])[:] = [self]
        return self

    def wait_event(self, event):
        if event._stream is not None and event._stream is not self:
            self._waited[event._stream] = max(self._waited.get(event._stream, 0), event._seq)

    def record(self, event=None):
        event = _Event() if event is None else event
        event.record(self)
        return event

    @property
    def done(self):
        return True


class _Event:
    """A CUDA event: the point of its stream's work where it was recorded."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self._stream, self._seq = None, 0

    def record(self, stream=None):
        self._stream = _current_stream() if stream is None else stream
        self._seq = self._stream._seq

    def synchronize(self):
        sync("Event.synchronize()")

    @property
    def done(self):   # a query, not a wait: everything has run on the stand-in
        return True


_Stream.null = _Stream(null=True)
_STREAMS = threading.local()   # each host thread's stack of current streams (as CuPy's)


def _current_stream():
    stack = getattr(_STREAMS, "stack", None)
    return stack[-1] if stack else _Stream.null


# Arrays written by an asynchronous copy on a side stream: id of the underlying NumPy buffer ->
# [the writing stream and its seq, {stream: seq of its last use of the array}]
_SIDE_WRITTEN: dict = {}


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _stream_writes(a, s) -> None:
    """A copy into ``a`` queued on stream ``s``."""
    root = _root(a)
    entry = _SIDE_WRITTEN.get(id(root))
    if s is _Stream.null and entry is None:
        return
    if entry is None:
        entry = _SIDE_WRITTEN[id(root)] = [None, {}]
        weakref.finalize(root, _SIDE_WRITTEN.pop, id(root), None)
    for other, seq in entry[1].items():
        if other is not s and s._waited.get(other, 0) < seq:
            raise StreamOrderError("an asynchronous copy overwrites an array that a kernel on "
                                   "another stream may still be reading (record an Event "
                                   "after that kernel and wait_event it on the copy's stream)")
    s._seq += 1
    entry[0] = (s, s._seq)


def stream_reads(arrays) -> None:
    """Kernels on the current stream use ``arrays``: each copy into them on another stream
    must be ordered before (``StreamOrderError`` if not)."""
    here = _current_stream()
    for a in arrays:
        entry = _SIDE_WRITTEN.get(id(_root(a)))
        if entry is None:
            continue
        if entry[0] is not None:
            s, seq = entry[0]
            if s is not here and here._waited.get(s, 0) < seq:
                raise StreamOrderError("a kernel reads an array whose asynchronous copy on "
                                       "another stream is not ordered before it (record an "
                                       "Event after the copy and wait_event it)")
        entry[1][here] = here._seq + 1


def _get_device_properties(device):
    return {"name": b"CuPy stand-in (NumPy)", "totalGlobalMem": 16 << 30, "major": 9, "minor": 0}


runtime = _Module("cupy.cuda.runtime", None, {
    "getDeviceCount": lambda: 1, "getDeviceProperties": _get_device_properties,
    "deviceSynchronize": lambda: sync("runtime.deviceSynchronize()"),
    "runtimeGetVersion": lambda: 12090, "driverGetVersion": lambda: 12090})
cuda = _Module("cupy.cuda", None, {
    "Device": _Device, "Stream": _Stream, "Event": _Event, "runtime": runtime,
    "MemoryPool": _MemoryPool, "get_current_stream": _current_stream,
    "is_available": lambda: True})

stride_tricks = _Module("cupy.lib.stride_tricks", None, {
    "as_strided": lambda x, shape=None, strides=None: _wrap(
        np.lib.stride_tricks.as_strided(_un(x), shape=shape, strides=strides))})
lib = _Module("cupy.lib", None, {"stride_tricks": stride_tricks})
linalg = _Module("cupy.linalg", np.linalg)
fft = _Module("cupy.fft", np.fft)


# --- cupyx ---------------------------------------------------------------------------------

def _scatter_add(a, slices, value):
    np.add.at(_un(a), _un(_index(slices)), _un(value))
    launch("cupyx.scatter_add")


def _special(fn):
    def f(x, out=None):
        xa = _un(x)
        work = xa.astype(np.float64) if xa.dtype != np.float64 else xa
        r = np.asarray(np.frompyfunc(fn, 1, 1)(work)).astype(np.float64).astype(
            np.result_type(xa.dtype, np.float32))
        launch(f"special.{fn.__name__}")
        if out is not None:
            out._a[...] = r
            return out
        return _wrap(r)
    return f


special = _Module("cupyx.scipy.special", None, {"erf": _special(math.erf),
                                                 "erfc": _special(math.erfc)})
scipy = _Module("cupyx.scipy", None, {"special": special})
_PINNED = weakref.WeakValueDictionary()   # page-locked host buffers, by id


def _empty_pinned(shape, dtype=float, order="C"):
    """A NumPy array in page-locked host memory (here: remembered as such)."""
    a = np.empty(shape, dtype=dtype, order=order)
    _PINNED[id(a)] = a
    return a


def _is_pinned(a) -> bool:
    root = _root(a)
    return _PINNED.get(id(root)) is root


cupyx = _Module("cupyx", None, {"scatter_add": _scatter_add, "scipy": scipy,
                                 "empty_pinned": _empty_pinned})

_self = _Module("cupy", np, {**_OVERRIDES, "random": random, "cuda": cuda, "lib": lib,
                             "_core": _core,
                             "linalg": linalg, "fft": fft, "__version__": VERSION,
                             "STANDIN": True, "COUNTS": COUNTS, "counting": counting,
                             "no_sync": no_sync, "SyncError": SyncError,
                             "StreamOrderError": StreamOrderError})
_self.__version__ = VERSION
_self.STANDIN = True

_MODULES = {"cupy": _self, "cupy.random": random, "cupy.cuda": cuda, "cupy.cuda.runtime": runtime,
            "cupy.lib": lib, "cupy.lib.stride_tricks": stride_tricks, "cupy.linalg": linalg,
            "cupy.fft": fft, "cupyx": cupyx, "cupyx.scipy": scipy,
            "cupyx.scipy.special": special}
_saved: list = []


def install():
    """Make ``import cupy`` give the stand-in and point minivit's backend at it."""
    from minivit.autograd import backend  # noqa: PLC0415

    _saved.append(({k: sys.modules.get(k) for k in _MODULES},
                   backend._cupy, backend._cupy_error))
    sys.modules.update(_MODULES)
    backend._cupy, backend._cupy_error = None, None
    backend._import_cupy()
    return _self


def uninstall():
    from minivit.autograd import backend  # noqa: PLC0415

    mods, backend._cupy, backend._cupy_error = _saved.pop()
    for k, v in mods.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v
