"""The one module that imports NumPy or CuPy by name.

Everything else asks for ``xp = get_array_module(*arrays)`` and writes ``xp.exp(x)``, so the
same code runs on the CPU (NumPy) and on an NVIDIA GPU (CuPy). CuPy is optional and imported
lazily: ``import minivit`` works without it. The few operations that differ between the two
libraries (scatter-add, strided windows, erf, random numbers) are wrapped here once.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys

import numpy as np

from . import parallel

DEVICES = ("cpu", "cuda")
GPU_INSTALL_HINT = (
    "install the GPU extra that matches your CUDA driver, in your minivit clone: "
    "pip install -e \".[gpu]\" (CUDA 12) or pip install -e \".[gpu-cuda13]\" (CUDA 13)"
)

_cupy = None
_cupy_error: str | None = None


def _import_cupy():
    """Import CuPy once; remember why it failed so errors can say so."""
    global _cupy, _cupy_error
    if _cupy is None and _cupy_error is None:
        try:
            import cupy  # noqa: PLC0415 (lazy on purpose: CuPy is optional)

            _cupy = cupy
        except Exception as exc:  # ImportError, or a broken CUDA install
            _cupy_error = f"{type(exc).__name__}: {exc}"
        if _cupy is not None and _seed is not None:  # manual_seed ran before CuPy was loaded
            try:
                _cupy.random.seed(_seed)
            except Exception:  # no usable GPU: there is no GPU generator to seed
                pass
    return _cupy


def is_cupy_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    cp = _import_cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def cuda_unavailable_reason() -> str:
    """A one-line explanation of why ``device="cuda"`` cannot be used here."""
    cp = _import_cupy()
    if cp is None:
        return f"CuPy is not installed ({_cupy_error}); {GPU_INSTALL_HINT}"
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy is installed but no NVIDIA GPU is usable ({type(exc).__name__}: {exc})"
    if n == 0:
        return "CuPy is installed but no NVIDIA GPU was found"
    return ""


def check_device(device: str) -> str:
    """Validate a device name; raise a clear error for an unknown or unusable one."""
    if not isinstance(device, str) or device.split(":")[0] not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")
    device = device.split(":")[0]
    if device == "cuda" and not is_cupy_available():
        raise RuntimeError(f"device 'cuda' is not available: {cuda_unavailable_reason()}")
    return device


def get_array_module(*arrays):
    """``numpy`` or ``cupy``, whichever owns the given arrays (numpy when none is CuPy)."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def device_of(array) -> str:
    return "cuda" if _cupy is not None and isinstance(array, _cupy.ndarray) else "cpu"


def to_device(array, device: str):
    """Move an array to ``"cpu"`` or ``"cuda"`` (a no-op when it is already there)."""
    device = check_device(device)
    if device == device_of(array):
        return array
    if device == "cuda":
        return _cupy.asarray(array)
    return _cupy.asnumpy(array)


def as_numpy(array) -> np.ndarray:
    """Always a NumPy array (copies from the GPU when needed)."""
    if device_of(array) == "cuda":
        return _cupy.asnumpy(array)
    return np.asarray(array)


def is_array(obj) -> bool:
    return isinstance(obj, np.ndarray) or (_cupy is not None and isinstance(obj, _cupy.ndarray))


def scatter_add(target, indices, values) -> None:
    """``target[indices] += values`` where repeated indices accumulate (unbuffered add)."""
    if device_of(target) == "cuda":
        import cupyx  # noqa: PLC0415

        cupyx.scatter_add(target, indices, values)
    else:
        np.add.at(target, indices, values)


def as_strided(x, shape, strides, writeable: bool = False):
    """A strided view of ``x`` (no copy). Used by im2col, pooling and ``rel_to_abs``; read-only
    on the CPU unless ``writeable`` (a view whose elements overlap must never be written)."""
    if device_of(x) == "cuda":
        return _cupy.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)
    return np.lib.stride_tricks.as_strided(x, shape=shape, strides=strides, writeable=writeable)


# --- allocator --------------------------------------------------------------------------
# Training allocates and frees the same large activations every step. glibc serves blocks
# above its mmap threshold (at most 32 MB) with fresh mmaps and unmaps them on free, so every
# step page-faults its activations in again: up to half of a step's time for conv models.
# Keeping all blocks on the heap and never trimming it makes the memory reused instead.
# Set MINIVIT_MALLOC_TUNING=0 to leave the allocator alone.

def tune_malloc() -> bool:
    """Keep freed memory for reuse (glibc only); returns True when the settings took."""
    if os.environ.get("MINIVIT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...)
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
    ok = libc.mallopt(M_MMAP_MAX, 0)  # no mmap for big blocks: they stay on the heap
    ok &= libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # never give the heap top back
    ok &= libc.mallopt(M_TOP_PAD, 64 << 20)  # grow the heap in 64 MB steps
    return bool(ok)


MALLOC_TUNED = tune_malloc()


def overflow_to_inf():
    """A context in which a float overflow gives inf without a warning (NumPy's ``errstate``;
    CuPy never warns): for formulas whose inf is the right limit, such as 1 / (1 + exp(z))."""
    return np.errstate(over="ignore")


# --- erf ---------------------------------------------------------------------------------
# NumPy has no erf. In float64 we follow CPython's math.erf (a power series near 0, a
# continued fraction for erfc further out), accurate to a few ulps; in float32 the rational
# approximation erf(x) = x P(x^2) / Q(x^2) on [-4, 4] that Eigen and XLA use: a few float32
# ulps, relative, all the way down to tiny x (beyond |x| = 4, erf(x) rounds to +-1).

def _erf_float64(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    out = np.empty_like(x)
    small = ax < 1.5
    if small.any():  # erf(x) = 2x/sqrt(pi) exp(-x^2) sum_k (2x^2)^k / (1*3*...*(2k+1))
        xs = ax[small]
        x2 = xs * xs
        acc = np.zeros_like(xs)
        fk = 25 + 0.5
        for _ in range(25):
            acc = 2.0 + x2 * acc / fk
            fk -= 1.0
        out[small] = acc * xs * np.exp(-x2) / math.sqrt(math.pi)
    big = ~small
    if big.any():  # erfc(x) by its continued fraction, evaluated forward (CPython's m_erfc_contfrac)
        xb = np.minimum(ax[big], 30.0)  # erfc(30) underflows to 0 anyway
        x2 = xb * xb
        a = 0.0
        da = 0.5
        p, p_last = np.ones_like(xb), np.zeros_like(xb)
        q, q_last = da + x2, np.ones_like(xb)
        for _ in range(50):
            a += da
            da += 2.0
            b = da + x2
            p, p_last = b * p - a * p_last, p
            q, q_last = b * q - a * q_last, q
        erfc = p / q * xb * np.exp(-x2) / math.sqrt(math.pi)
        out[big] = 1.0 - erfc
    return np.copysign(out, x)


_ERF32_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
            -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
            -1.60960333262415e-02)  # odd numerator, highest power first
_ERF32_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
            -7.37332916720468e-03, -1.42647390514189e-02)  # even denominator


def _polynomial(u, coeffs):
    """sum_k coeffs[k] u^(n-k) by Horner's rule, in place (new arrays are the cost here)."""
    p = u * coeffs[0]
    for c in coeffs[1:-1]:
        p += c
        p *= u
    p += coeffs[-1]
    return p


def _erf_float32(x, out=None):
    xp = get_array_module(x)
    z = xp.clip(x.reshape(-1), -4.0, 4.0)  # 1-d: arithmetic on 0-d arrays gives scalars
    z2 = z * z
    p, q = _polynomial(z2, _ERF32_P), _polynomial(z2, _ERF32_Q)
    p *= z
    if out is not None and out.dtype == np.float32 and out.flags.c_contiguous:
        xp.divide(p, q, out=out.reshape(-1))   # a view of out: the result lands in place
        return xp.clip(out, -1.0, 1.0, out=out)
    p /= q
    return xp.clip(p, -1.0, 1.0, out=p).astype(x.dtype, copy=False).reshape(x.shape)


# Φ(x) = (1 + erf(x/√2)) / 2 as Φ(x) = (1 + tanh(x P(x²))) / 2: P is a degree-6 polynomial fitted
# to atanh(2Φ(x) - 1) / x, a smooth function of u = x² that starts at √(2/π) (P's last
# coefficient; GELU's tanh approximation is the degree-1 version, √(2/π) (1 + 0.044715 u)). The
# fit (``tools/fit_normal_cdf.py``: weighted least squares with Lawson's reweighting towards
# minimax, on [0, 5.5]) weighs each point by dΦ/dP, so the error is spread evenly over Φ, not
# over P. It is evaluated as the same number written as a logistic sigmoid,
#     (1 + tanh(z)) / 2 = 1 / (1 + exp(-2z)),   z = x P(x²),
# with the -2 folded into P's coefficients: NumPy's float32 ``exp`` costs about half its
# ``tanh`` (measured on this project's 2-core AVX2 machine, per element in cache: tanh 4.3 ns,
# exp 2.4 ns, a multiplication 0.2 ns), so Φ costs 3.8 ns per element instead of 7.1. Its
# largest error in float32 is 1.16e-7 (two float32 ulps below 1; 9.5e-8 through tanh, 2e-7
# for the rational erf used before), in 17 passes over a block. The VM's CPU varies: on one
# with AVX-512 (2026-12-05) NumPy's float32 tanh took 0.17 ns and exp 0.34 ns per element, and
# a tanh form of Φ would be 1.11 ns against this one's 1.34; the sigmoid form stays, twice as
# fast where only AVX2 is there, and one formula for every CPU. There is no clip:
# P(u) >= √(2/π) > 0 for every u >= 0, and an infinite exp gives 1/inf = 0 (Φ = 0), an
# infinite z the other way exp = 0 (Φ = 1).
_CDF32_TANH_P = (1.7561730925271752e-09, -1.3226341718551647e-07, 3.964745306000315e-06,
                 -5.530619808104247e-05, -3.259496629021904e-05, 0.036333084566528215,
                 0.7978849414618344)  # highest power of u = x² first
_CDF32_SIGMOID_P = tuple(-2.0 * c for c in _CDF32_TANH_P)   # -2 P: Φ = 1 / (1 + exp(x (-2P)))


def normal_cdf_block(x, out=None):
    """Φ(x), the standard normal CDF, of a float32 block (into ``out`` if given), as
    1 / (1 + exp(-2 x P(x²))); float64 and the GPU go through ``erf``."""
    xp = get_array_module(x)
    if x.dtype != np.float32 or device_of(x) != "cpu":
        y = erf(x * (1 / math.sqrt(2)))
        y += 1
        y *= 0.5
        if out is None:
            return y
        out[...] = y
        return out
    with overflow_to_inf():   # P(x²) overflows for |x| > ~9e3, exp for z < ~ -44:
        p = _polynomial(x * x, _CDF32_SIGMOID_P)   # Φ is still 1 or 0
        p *= x
        xp.exp(p, out=p)
    p += 1
    y = out if out is not None else xp.empty_like(x)
    return xp.divide(1.0, p, out=y)


def erf(x, out=None):
    """Elementwise error function, to the precision of ``x``'s dtype (into ``out`` if given)."""
    if device_of(x) == "cuda":
        import cupyx.scipy.special  # noqa: PLC0415

        y = cupyx.scipy.special.erf(x)
    elif x.dtype == np.float32:
        if out is not None and x.size < parallel.MIN_ELEMENTS:  # a block: fill out directly
            y = _erf_float32(x, out=out)   # out itself, or a new array if out is strided
        else:
            y = parallel.blockwise(_erf_float32, x.reshape(-1)).reshape(x.shape)  # all cores
    else:
        y = parallel.blockwise(_erf_float64, x.reshape(-1)).reshape(x.shape)
    if out is None or y is out:
        return y
    out[...] = y
    return out


# --- random numbers ----------------------------------------------------------------------
# One generator per device, seeded by ``minivit.manual_seed``; its state goes in checkpoints.

_np_rng = np.random.default_rng(0)
_seed: int | None = None  # the last manual_seed, for a CuPy imported after it


def manual_seed(seed: int) -> None:
    """Seed minivit's random generators (CPU, and the GPU now or when CuPy is first loaded)."""
    global _np_rng, _seed
    _np_rng = np.random.default_rng(seed)
    _seed = seed
    if _cupy is not None:
        _cupy.random.seed(seed)


def rng(device: str = "cpu"):
    """The generator for ``device``: a NumPy ``Generator`` or ``cupy.random``."""
    if device == "cuda":
        return _cupy.random
    return _np_rng


def get_rng_state() -> dict:
    return {"numpy": _np_rng.bit_generator.state}


def set_rng_state(state: dict) -> None:
    _np_rng.bit_generator.state = state["numpy"]
