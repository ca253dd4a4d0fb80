"""The NumPy/CuPy backend: dispatch, devices, the wrapped primitives (scatter-add, strided
windows, erf, random numbers), moving tensors between devices, and the rule that only
backend.py names numpy/cupy for array work (so every array is made by the right xp)."""
import os
import pathlib
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import minivit
from minivit.autograd import backend
from minivit.autograd import get_rng_state, set_rng_state
from minivit.kernels import normal_cdf
from harness import check_grad

ROOT = pathlib.Path(minivit.__file__).parent


def test_get_array_module_and_device_of_numpy():
    a = np.ones(3)
    assert backend.get_array_module(a) is np
    assert backend.get_array_module() is np
    assert backend.get_array_module(a, 2.0, None) is np
    assert backend.device_of(a) == "cpu"
    assert backend.is_array(a) and not backend.is_array([1.0]) and not backend.is_array(1.0)
    assert backend.to_device(a, "cpu") is a
    assert backend.as_numpy(a) is a


def test_check_device_names():
    assert backend.check_device("cpu") == "cpu"
    assert backend.check_device("cpu:0") == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        backend.check_device(0)


def test_minivit_imports_without_cupy():
    code = ("import sys; sys.modules['cupy'] = None; import minivit; "
            "assert not minivit.is_cupy_available(); "
            "print(minivit.tensor([1.0]).device)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT.parent, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "cpu"


def test_ops_name_no_array_library():
    """Ops and the engine get their array module from backend (xp), never numpy by name, so the
    same code runs on CuPy: an np.zeros(...) in an op would silently make a CPU array."""
    files = sorted((ROOT / "autograd" / "ops").glob("*.py")) + [ROOT / "autograd" / "engine.py"]
    for path in files:
        code = re.sub(r'""".*?"""', "", path.read_text(), flags=re.S)  # docstrings may say numpy
        assert not re.search(r"\bimport numpy\b|\bimport cupy\b|\bnp\.|\bcupy\.", code), path.name


# --- primitives, on every backend -------------------------------------------------------------

def _xp(device):
    return np if device == "cpu" else backend._import_cupy()


def test_scatter_add_accumulates_repeats(device):
    xp = _xp(device)
    target = xp.zeros((4, 2))
    idx = xp.asarray([0, 2, 0, 0])
    backend.scatter_add(target, (idx,), xp.ones((4, 2)))
    np.testing.assert_array_equal(backend.as_numpy(target), [[3, 3], [0, 0], [1, 1], [0, 0]])
    target = xp.zeros((3, 3))
    backend.scatter_add(target, (xp.asarray([1, 1]), xp.asarray([2, 2])), xp.asarray([1.5, 2.0]))
    assert float(target[1, 2]) == 3.5 and float(target.sum()) == 3.5


def test_as_strided_windows(device):
    xp = _xp(device)
    x = xp.arange(10.0)
    s = x.strides[0]
    w = backend.as_strided(x, (4, 3), (2 * s, s))  # windows of 3, stride 2
    want = np.array([np.arange(10.0)[i:i + 3] for i in range(0, 8, 2)])
    np.testing.assert_array_equal(backend.as_numpy(w), want)
    if device == "cpu":
        assert not w.flags.writeable  # a view of x: never write through it


def test_erf_dispatch_keeps_dtype(device):
    xp = _xp(device)
    for dtype in (np.float32, np.float64):
        x = xp.asarray([-1.0, 0.0, 0.5], dtype=dtype)
        y = backend.erf(x)
        assert y.dtype == dtype and backend.device_of(y) == device
        np.testing.assert_allclose(backend.as_numpy(y), [-0.8427007929497149, 0.0,
                                                         0.5204998778130465], rtol=1e-6)


def test_manual_seed_and_rng_state():
    minivit.manual_seed(123)
    a = minivit.randn(5).numpy()
    b = minivit.rand(5).numpy()
    minivit.manual_seed(123)
    np.testing.assert_array_equal(minivit.randn(5).numpy(), a)
    np.testing.assert_array_equal(minivit.rand(5).numpy(), b)
    state = get_rng_state()
    c = minivit.randn(3).numpy()
    set_rng_state(state)
    np.testing.assert_array_equal(minivit.randn(3).numpy(), c)
    assert not np.array_equal(minivit.randn(3).numpy(), c)
    assert minivit.randn(2, 3).dtype == np.float32 and minivit.rand(4).dtype == np.float32


# --- tensors on a device ----------------------------------------------------------------------

def test_creation_on_device(device):
    for t in (minivit.zeros(2, 3, device=device), minivit.ones((2, 3), device=device),
              minivit.full((2, 3), 1.5, device=device), minivit.randn(2, 3, device=device),
              minivit.rand(2, 3, device=device), minivit.tensor([[1.0] * 3] * 2, device=device)):
        assert t.device == device and t.shape == (2, 3) and t.dtype == np.float32
        assert backend.device_of(t.data) == device
    assert minivit.arange(4, device=device).device == device
    assert minivit.zeros_like(minivit.ones(2, device=device)).device == device


def test_to_device_and_back_is_differentiable(device):
    x = minivit.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    y = x.to(device)
    assert y.device == device
    z = (y * y).sum().to("cpu")
    assert z.device == "cpu"
    z.backward()
    assert x.grad.device == "cpu"
    np.testing.assert_array_equal(x.grad.numpy(), [2, 4, 6])
    assert x.to("cpu") is x


def test_scalars_and_constants_follow_the_tensor_to_its_device(device):
    x = minivit.tensor(np.array([1.0, -2.0], np.float32), device=device, requires_grad=True)
    outs = [x * 2.0, 1.0 - x, x + np.array([1.0, 1.0]), minivit.where(x > 0, x, 0.0),
            minivit.maximum(x, 0.5), x[np.array([1, 1, 0])], x[[True, False]],
            minivit.pad(x, 1), minivit.cat([x, x]), x @ x]
    for y in outs:
        assert y.device == device and y.dtype == np.float32
        x.grad = None
        y.sum().backward()
        assert x.grad.device == device and x.grad.dtype == np.float32


def test_gradcheck_on_device(device):
    check_grad(lambda a, b: (a @ b).tanh().sum(axis=0), np.random.default_rng(0).standard_normal(
        (2, 3)), np.random.default_rng(1).standard_normal((3, 2)), device=device)


def test_dtype_conversions():
    x = minivit.tensor([1.5, 2.5])
    assert x.to(np.float64).dtype == np.float64 and x.to("float64").dtype == np.float64
    assert x.double().float().dtype == np.float32
    assert x.long().dtype == np.int64 and x.long().tolist() == [1, 2]
    assert x.astype(np.float32) is x
    assert not x.long().requires_grad


def test_manual_seed_before_cupy_is_loaded_seeds_the_gpu(monkeypatch):
    """CuPy is imported lazily: a manual_seed that ran before must still reach its generator."""
    import types

    seeds = []
    fake = types.ModuleType("cupy")
    fake.ndarray = type("ndarray", (), {})
    fake.random = types.SimpleNamespace(seed=seeds.append)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", None)
    minivit.manual_seed(1234)
    assert seeds == []
    assert backend._import_cupy() is fake
    assert seeds == [1234]
    minivit.manual_seed(5)  # once loaded, it is seeded directly
    assert seeds == [1234, 5]


def test_normal_cdf_block_matches_the_erf_definition():
    """Φ(x) = 1 / (1 + exp(-2 x P(x²))) in float32: within 1.2e-7 of the erf definition (float32's
    own rounding near 1 is 6e-8), everywhere, saturating cleanly for huge |x|."""
    import math
    x64 = np.concatenate([np.linspace(-12, 12, 48001), np.geomspace(12, 1e30, 200),
                          -np.geomspace(12, 1e30, 200), [0.0, np.inf, -np.inf]])
    want = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x64])
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no overflow warning escapes for the huge inputs
        got32 = normal_cdf.normal_cdf_block(x64.astype(np.float32))
    assert got32.dtype == np.float32
    assert np.abs(got32 - want).max() < 1.2e-7
    assert np.all(np.diff(got32[:48001]) >= 0)       # monotone, as a CDF
    np.testing.assert_allclose(normal_cdf.normal_cdf_block(x64), want, rtol=1e-14, atol=1e-15)
    out = np.empty(x64.shape, np.float32)
    assert normal_cdf.normal_cdf_block(x64.astype(np.float32), out=out) is out
    np.testing.assert_array_equal(out, got32)
